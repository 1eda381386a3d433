"""Decode cost of sampled protocols: the eval Engine greedy (samples=1) against seeded sampling with
1 and 5 samples per example (self-consistency), same random model and prompts, compiled pass timed.

    python benchmarks/eval_sampling.py                                  # hidden 64, 2 layers, 16 prompts
    python benchmarks/eval_sampling.py --hidden 256 --layers 4 --heads 8 --kv_heads 4

Samples run as extra batch rows (example-major, one key per row, see mellama_jax/eval/sampling.py),
so 5 samples cost about 5x the rows of greedy; reported as examples/s and sampled sequences/s.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

from eval_throughput import build_random_model, make_prompts  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kv_heads", type=int, default=2)
    p.add_argument("--vocab", type=int, default=512)
    p.add_argument("--prompts", type=int, default=16)
    p.add_argument("--min_words", type=int, default=20)
    p.add_argument("--max_words", type=int, default=120)
    p.add_argument("--new_tokens", type=int, default=32)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    from mellama_jax.eval import sampling
    from mellama_jax.eval.engine import load_engine

    with tempfile.TemporaryDirectory() as d:
        build_random_model(d, args)
        engine = load_engine(d, batch_size=args.batch, show_progress=False)
        tok = engine.tokenizer
        ids = [tok.encode(t) for t in make_prompts(args)]
        n = len(ids)
        print(f"device {jax.devices()[0].platform}, jax {jax.__version__}, {n} prompts, batch {args.batch}, "
              f"{args.new_tokens} new tokens, hidden {args.hidden}, layers {args.layers}")
        print("| run | rows | seconds (compiled) | examples/s | sequences/s | decode steps |")
        print("|---|---:|---:|---:|---:|---:|")
        for name, temperature, samples in (("greedy, samples=1", 0.0, 1), ("sampled, samples=1", 0.7, 1),
                                           ("self-consistency, samples=5", 0.7, 5)):
            flat = [x for x in ids for _ in range(samples)]
            keys = sampling.sample_keys(args.seed, "bench", n, samples) if temperature > 0 else None
            kw = dict(temperature=temperature, keys=keys)
            engine.generate(flat, args.new_tokens, **kw)  # compile
            engine.stats["decode_steps"] = 0
            t0 = time.perf_counter()
            engine.generate(flat, args.new_tokens, **kw)
            dt = time.perf_counter() - t0
            print(f"| {name} | {len(flat)} | {dt:.2f} | {n / dt:.2f} | {len(flat) / dt:.2f} | "
                  f"{engine.stats['decode_steps']} |")


if __name__ == "__main__":
    main()
