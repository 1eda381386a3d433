"""LoRA vs full fine-tuning step for the same shape: tokens/s, memory, trainable-parameter fraction.

    python benchmarks/sft_step.py --preset small --seq_len 256 --batch 8 --rank 8

Synthetic tokens, device-resident batch (the host input pipeline is not measured). Memory: the
device's peak_bytes_in_use when the backend reports it (GPU/TPU), else XLA's compiled-step estimate
(arguments + outputs + temporaries, minus donated aliasing) -- on CPU only the latter exists, so treat
it as an estimate. State bytes = trainable params + optimizer state (the LoRA base is extra, frozen).
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from types import SimpleNamespace as NS

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from mellama_jax import sharding as shd  # noqa: E402
from mellama_jax.model import lora as lora_lib  # noqa: E402
from mellama_jax.model.presets import get_preset  # noqa: E402
from mellama_jax.train.loop import Trainer  # noqa: E402
from mellama_jax.train.synthetic import SyntheticPipeline  # noqa: E402


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="small")
    p.add_argument("--seq_len", type=int, default=256)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--targets", default="q,k,v,o,gate,up,down")
    p.add_argument("--mesh", default="1,-1,1", help="data,fsdp,tensor")
    p.add_argument("--steps", type=int, default=5)
    return p.parse_args()


class Cfg(dict):
    """Attribute + .get access (what Trainer reads from a ConfigDict) without ml_collections."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def _bytes(tree) -> int:
    return int(sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree) if hasattr(x, "dtype")))


def measure(args, lora_on: bool, mesh) -> dict:
    model_config = get_preset(args.preset, dtype=args.dtype)
    config = Cfg(
        model=Cfg(init_from=""), seed=0,
        train=Cfg(steps=1000, micro_batches=1, loss_impl="vocab_parallel", z_loss=0.0),
        optim=Cfg(learning_rate=1e-4, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0, schedule="cosine",
                  warmup_fraction=0.03, warmup_steps=-1, min_lr_ratio=0.0, grad_clip_norm=1.0),
        sharding=Cfg(rules=shd.DEFAULT_RULES), data=Cfg(synthetic=True, packing="pack"),
        lora=Cfg(enabled=lora_on, rank=args.rank, alpha=2.0 * args.rank, dropout=0.0, targets=args.targets))
    trainer = Trainer(config, model_config, mesh)
    state = trainer.init_state(0)
    pipe = SyntheticPipeline(vocab_size=model_config.vocab_size, seq_len=args.seq_len, global_batch_size=args.batch,
                             process_index=0, process_count=1)
    batch = trainer.global_batch(pipe.batch(0))
    extra = (trainer.frozen_params(),) if lora_on else ()
    compiled = trainer.jitted_train_step.inner.lower(state, batch, *extra).compile() \
        if hasattr(trainer, "jitted_train_step") else None
    mem = compiled.memory_analysis() if compiled is not None else None
    t0 = time.perf_counter()
    state, m = trainer.train_step(state, batch)
    jax.block_until_ready(m)
    first = time.perf_counter() - t0
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        state, m = trainer.train_step(state, batch)
        jax.block_until_ready(m)
        times.append(time.perf_counter() - t0)
    stats = jax.devices()[0].memory_stats() or {}
    step_s = float(np.median(times))
    trainable = lora_lib.count_params(state.params)
    return {
        "tokens_per_s": args.batch * args.seq_len / step_s, "step_ms": step_s * 1e3, "first_s": first,
        "trainable": trainable, "total": model_config.num_params() + (trainable if lora_on else 0),
        "state_bytes": _bytes(state.params) + _bytes(state.opt_state),
        "peak_device": stats.get("peak_bytes_in_use"),
        "xla_estimate": None if mem is None else (mem.argument_size_in_bytes + mem.output_size_in_bytes
                                                  + mem.temp_size_in_bytes - mem.alias_size_in_bytes),
        "loss": float(m["loss"]),
    }


def main() -> None:
    args = parse()
    d, f, t = (int(x) for x in args.mesh.split(","))
    mesh = shd.make_mesh(NS(data=d, fsdp=f, tensor=t))
    dev = jax.devices()[0]
    print(f"command: python {' '.join(shlex.quote(a) for a in sys.argv)}")
    print(f"jax {jax.__version__} | backend {jax.default_backend()} | {jax.device_count()} x {dev.device_kind} "
          f"| mesh {dict(mesh.shape)} | preset {args.preset} | batch {args.batch} x seq {args.seq_len} | "
          f"dtype {args.dtype}")
    mib = lambda b: "n/a" if b is None else f"{b / 2**20:,.1f} MiB"  # noqa: E731
    for name, on in (("full fine-tuning", False), (f"LoRA r={args.rank} ({args.targets})", True)):
        r = measure(args, on, mesh)
        print(f"{name:>34}: {r['tokens_per_s']:>9,.0f} tokens/s | step {r['step_ms']:.1f} ms | trainable "
              f"{r['trainable']:,} of {r['total']:,} ({r['trainable'] / r['total']:.3%}) | params+optimizer state "
              f"{mib(r['state_bytes'])} | device peak {mib(r['peak_device'])} | XLA step estimate "
              f"{mib(r['xla_estimate'])}")


if __name__ == "__main__":
    main()
