"""Requests/s of lm-eval's `mellama_jax` adapter vs lm-eval's `hf` backend on the same random LLaMA.

    python benchmarks/lm_eval_throughput.py [--hidden 256 --layers 4 --requests 64 --batch_size 16]

One run builds a random LlamaForCausalLM + tokenizer in a temporary HF directory, loads it with both
backends and times their lm-eval entry points on the same requests: loglikelihood (multiple-choice
shaped: 4 continuations of 1-4 words per context, and 4 letter answers " A".." D" per context,
which both backends score from one row per context), loglikelihood_rolling (documents of ~1.5 context windows) and
generate_until (greedy, stop sequences that never fire, so both generate max_gen_toks). The adapter
is timed twice: "cold" includes XLA compilation of each (rows, length) bucket, "warm" repeats the
same requests. float32 on both sides; CPU unless JAX / torch see an accelerator.
"""
from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _requests(kind, args):
    from lm_eval.api.instance import Instance

    return [Instance(request_type=kind, doc={}, arguments=a, idx=0) for a in args]


def _time(fn, reqs):
    t0 = time.perf_counter()
    fn(reqs, disable_tqdm=True)
    return len(reqs) / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--max_positions", type=int, default=512)
    p.add_argument("--requests", type=int, default=64)
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--max_gen_toks", type=int, default=32)
    args = p.parse_args()

    import jax
    import torch
    from lm_eval.models.huggingface import HFLM

    from lm_eval_fixtures import WORDS, write_hf_llama_with_tokenizer
    from mellama_jax.eval.lm_eval_adapter import MellamaJaxLM

    rng = random.Random(0)
    sent = lambda k: " ".join(rng.choice(WORDS) for _ in range(k))  # noqa: E731
    with tempfile.TemporaryDirectory() as tmp:
        write_hf_llama_with_tokenizer(tmp, max_positions=args.max_positions, vocab_size=512,
                                      layers=args.layers, hidden=args.hidden)
        hf = HFLM(pretrained=tmp, device="cuda" if torch.cuda.is_available() else "cpu", dtype="float32",
                  batch_size=args.batch_size)
        ours = MellamaJaxLM(checkpoint=tmp, batch_size=args.batch_size)
        n_ctx = max(1, args.requests // 4)
        contexts = [f"Question: {sent(rng.randint(20, 120))}?\nAnswer:" for _ in range(n_ctx)]
        loglik = _requests("loglikelihood", [(c, " " + sent(rng.randint(1, 4))) for c in contexts for _ in range(4)])
        letters = _requests("loglikelihood", [(c, f" {x}") for c in contexts for x in "ABCD"])
        docs = [sent(int(0.75 * 1.5 * args.max_positions)) for _ in range(max(1, args.requests // 8))]
        rolling = _requests("loglikelihood_rolling", [(d,) for d in docs])
        gen_kwargs = {"until": ["@@never@@"], "max_gen_toks": args.max_gen_toks, "do_sample": False}
        gen = _requests("generate_until", [(f"Note: {sent(rng.randint(10, 60))}\nSummary:", dict(gen_kwargs))
                                           for _ in range(max(1, args.requests // 4))])
        print(f"model: hidden={args.hidden} layers={args.layers} vocab=512 max_positions={args.max_positions}; "
              f"batch_size={args.batch_size}; jax devices: {len(jax.devices())} x {jax.devices()[0].platform}; "
              f"torch threads: {torch.get_num_threads()}")
        print("| request type | requests | hf req/s | mellama_jax cold req/s | mellama_jax warm req/s | warm speed-up |")
        print("|---|---:|---:|---:|---:|---:|")
        for name, reqs, method in (("loglikelihood", loglik, "loglikelihood"),
                                   ("loglikelihood, answers A/B/C/D", letters, "loglikelihood"),
                                   ("loglikelihood_rolling", rolling, "loglikelihood_rolling"),
                                   ("generate_until", gen, "generate_until")):
            ref = _time(getattr(hf, method), reqs)
            cold = _time(getattr(ours, method), reqs)
            warm = _time(getattr(ours, method), reqs)
            print(f"| {name} | {len(reqs)} | {ref:.2f} | {cold:.2f} | {warm:.2f} | {warm / ref:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
