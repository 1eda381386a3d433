"""Throughput of the jitted train step: tokens/s, model TFLOP/s per device, and MFU.

    python benchmarks/train_step.py --preset small --seq_len 256 --batch 8 --attention_impl xla

Runs on CPU, GPU or TPU; needs no TensorFlow or ml_collections (synthetic tokens, device-resident
batch, so the host input pipeline is not measured). FLOPs per token follow
mellama_jax/train/metrics.py (6 x matmul params + 12 x layers x heads*head_dim x seq); MFU uses the
chip table there or --peak_tflops.
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
from mellama_jax.model.presets import get_preset  # noqa: E402
from mellama_jax.train import metrics as M  # noqa: E402
from mellama_jax.train.loop import Trainer  # noqa: E402
from mellama_jax.train.synthetic import SyntheticPipeline  # noqa: E402


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="tiny")
    p.add_argument("--seq_len", type=int, default=128)
    p.add_argument("--batch", type=int, default=8, help="global batch (sequences)")
    p.add_argument("--micro_batches", type=int, default=1)
    p.add_argument("--attention_impl", default="xla", choices=["xla", "dot_product", "cudnn", "splash", "auto"])
    p.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--remat_policy", default="none")
    p.add_argument("--loss_impl", default="vocab_parallel", choices=["vocab_parallel", "dense"])
    p.add_argument("--mesh", default="1,-1,1", help="data,fsdp,tensor (-1 fills the rest)")
    p.add_argument("--layers", type=int, default=0, help="override num_hidden_layers (0 = preset)")
    p.add_argument("--steps", type=int, default=10, help="timed steps")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps after compilation")
    p.add_argument("--peak_tflops", type=float, default=0.0, help="per-device peak; 0 = chip table")
    return p.parse_args()


def main() -> None:
    args = parse()
    overrides = dict(dtype=args.dtype, attention_impl=args.attention_impl,
                     remat_policy=args.remat_policy)
    if args.layers:
        overrides["num_hidden_layers"] = args.layers
    model_config = get_preset(args.preset, **overrides)
    d, f, t = (int(x) for x in args.mesh.split(","))
    mesh = shd.make_mesh(NS(data=d, fsdp=f, tensor=t))
    config = NS(
        model=NS(init_from=""),
        train=NS(steps=1000, micro_batches=args.micro_batches, loss_impl=args.loss_impl, z_loss=0.0),
        optim=NS(learning_rate=1e-4, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1,
                 schedule="cosine", warmup_fraction=0.05, warmup_steps=-1, min_lr_ratio=0.1,
                 grad_clip_norm=1.0),
        sharding=NS(rules=shd.DEFAULT_RULES),
        # Synthetic rows are plain causal windows, so cuDNN attention can run on them.
        data={"synthetic": True})
    trainer = Trainer(config, model_config, mesh)
    state = trainer.init_state(0)
    pipe = SyntheticPipeline(vocab_size=model_config.vocab_size, seq_len=args.seq_len,
                             global_batch_size=args.batch, process_index=jax.process_index(),
                             process_count=jax.process_count())
    batch = trainer.global_batch(pipe.batch(0))

    t0 = time.perf_counter()
    state, m = trainer.train_step(state, batch)
    jax.block_until_ready(m)
    compile_s = time.perf_counter() - t0
    for _ in range(args.warmup):
        state, m = trainer.train_step(state, batch)
    jax.block_until_ready(m)
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        state, m = trainer.train_step(state, batch)
        jax.block_until_ready(m)
        times.append(time.perf_counter() - t0)
    step_s = float(np.median(times))
    tokens = args.batch * args.seq_len
    tps = tokens / step_s
    n_dev = jax.device_count()
    tflops = tps * M.flops_per_token(model_config, args.seq_len) / n_dev / 1e12
    peak = M.resolve_peak_tflops(args.peak_tflops)
    mfu = M.mfu(tps, model_config, args.seq_len, n_dev, peak)
    dev = jax.devices()[0]
    print(f"command: python {' '.join(shlex.quote(a) for a in sys.argv)}")
    print(f"jax {jax.__version__} | backend {jax.default_backend()} | {n_dev} x {dev.device_kind} "
          f"| mesh {dict(mesh.shape)}")
    print(f"model: preset {args.preset}, {model_config.num_params() / 1e6:.2f}M params, "
          f"{model_config.num_hidden_layers} layers, dtype {model_config.dtype}, attention "
          f"{model_config.attention_impl}, remat {model_config.remat_policy}, loss {args.loss_impl}")
    print(f"batch {args.batch} x seq {args.seq_len} = {tokens} tokens/step, "
          f"micro_batches {args.micro_batches}; compile+first step {compile_s:.1f}s")
    print(f"step time {step_s * 1e3:.1f} ms (median of {args.steps}, min {min(times) * 1e3:.1f}) | "
          f"{tps:,.0f} tokens/s | {tflops:.3f} TFLOP/s per device | "
          f"MFU {'n/a (unknown peak; pass --peak_tflops)' if mfu is None else f'{mfu:.1%}'}"
          f"{'' if peak is None else f' of {peak:.0f} TFLOP/s peak'} | loss {float(m['loss']):.4f}")


if __name__ == "__main__":
    main()
