"""XLA's FLOPs for the compiled train step, per remat policy, against the model FLOPs (6N + attention).

    python benchmarks/train_flops.py --preset small --batch 8 --seq_len 128 [--time 3]

XLA's cost analysis counts a while loop's body once, whatever its trip count, and the layers run as a
scan (a while loop). So this script compiles the step with the layer scan fully unrolled (same maths,
numerically the same step) to count every layer; the timed column (--time N, medians of N steps)
uses the ordinary scanned step. Model FLOPs per token = 6 x matmul parameters + 12 x layers x
heads*head_dim x seq_len (mellama_jax/train/metrics.py; attention not halved for causality, as the
step computes the full score matrix). Needs no TensorFlow or ml_collections.
"""
from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import time
from types import SimpleNamespace as NS

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from mellama_jax import sharding as shd  # noqa: E402
from mellama_jax.model.config import REMAT_POLICIES  # noqa: E402
from mellama_jax.model.presets import get_preset  # noqa: E402
from mellama_jax.train import metrics as M  # noqa: E402
from mellama_jax.train import step as step_lib  # noqa: E402


class _Cfg(NS):
    """Attribute access plus the .get() the Trainer uses on ConfigDicts."""

    def get(self, key, default=None):
        return getattr(self, key, default)


def run_config(loss_impl: str) -> _Cfg:
    return _Cfg(model=_Cfg(init_from=""),
                train=_Cfg(steps=1000, micro_batches=1, loss_impl=loss_impl, z_loss=0.0),
                optim=_Cfg(learning_rate=1e-4, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1, schedule="cosine",
                           warmup_fraction=0.05, warmup_steps=-1, min_lr_ratio=0.1, grad_clip_norm=1.0),
                sharding=_Cfg(rules=shd.DEFAULT_RULES), data={"synthetic": True})


def trainer_for(model_config, loss_impl: str):
    from mellama_jax.train.loop import Trainer

    mesh = shd.make_mesh(NS(data=1, fsdp=1, tensor=1), jax.devices()[:1])
    return Trainer(run_config(loss_impl), model_config, mesh)


def xla_flops(model_config, batch: int, seq_len: int, loss_impl: str) -> float:
    """FLOPs of the compiled train step with every layer counted (scan unrolled while tracing)."""
    scan = nn.scan

    def unrolled_scan(*args, **kwargs):
        return scan(*args, unroll=kwargs["length"], **kwargs)

    nn.scan = unrolled_scan
    try:
        trainer = trainer_for(model_config, loss_impl)
        shapes = {k: jax.ShapeDtypeStruct((batch, seq_len), jnp.float32 if k == "loss_mask" else jnp.int32)
                  for k in step_lib.BATCH_KEYS}
        with shd.mesh_context(trainer.mesh, trainer.rules):
            compiled = trainer.jitted_train_step.inner.lower(trainer.abstract_state(), shapes).compile()
    finally:
        nn.scan = scan
    cost = compiled.cost_analysis()
    return float((cost[0] if isinstance(cost, list) else cost)["flops"])


def step_seconds(model_config, batch: int, seq_len: int, loss_impl: str, steps: int) -> float:
    from mellama_jax.train.synthetic import SyntheticPipeline

    trainer = trainer_for(model_config, loss_impl)
    state = trainer.init_state(0)
    pipe = SyntheticPipeline(vocab_size=model_config.vocab_size, seq_len=seq_len, global_batch_size=batch,
                             process_index=0, process_count=1)
    arrays = trainer.global_batch(pipe.batch(0))
    state, m = trainer.train_step(state, arrays)
    jax.block_until_ready(m)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        state, m = trainer.train_step(state, arrays)
        jax.block_until_ready(m)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="small")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq_len", type=int, default=128)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--attention_impl", default="xla", choices=["xla", "dot_product", "cudnn", "splash", "auto"])
    p.add_argument("--loss_impl", default="vocab_parallel", choices=["vocab_parallel", "dense"])
    p.add_argument("--policies", default=",".join(REMAT_POLICIES))
    p.add_argument("--time", type=int, default=0, help="also time N steps per policy (0 = FLOPs only)")
    args = p.parse_args()
    print(f"command: python {' '.join(shlex.quote(a) for a in sys.argv)}")
    print(f"jax {jax.__version__} | {jax.devices()[0].device_kind} | preset {args.preset}, batch {args.batch} x "
          f"seq {args.seq_len}, dtype {args.dtype}, attention {args.attention_impl}, loss {args.loss_impl}\n")
    header = "| remat policy | XLA GFLOP/step | model GFLOP/step | XLA / model |"
    print(header + (" step time (ms) | tokens/s |" if args.time else ""))
    print("|---|---|---|---|" + ("---|---|" if args.time else ""))
    for policy in args.policies.split(","):
        config = get_preset(args.preset, dtype=args.dtype, attention_impl=args.attention_impl,
                            remat_policy=policy)
        model = M.flops_per_token(config, args.seq_len) * args.batch * args.seq_len
        flops = xla_flops(config, args.batch, args.seq_len, args.loss_impl)
        row = f"| {policy} | {flops / 1e9:,.2f} | {model / 1e9:,.2f} | {flops / model:.3f} |"
        if args.time:
            seconds = step_seconds(config, args.batch, args.seq_len, args.loss_impl, args.time)
            row += f" {seconds * 1e3:,.1f} | {args.batch * args.seq_len / seconds:,.0f} |"
        print(row, flush=True)


if __name__ == "__main__":
    main()
