"""Evaluation throughput: the project's Engine against transformers `generate`, same model, same prompts.

    python benchmarks/eval_throughput.py                       # tiny random model, 32 prompts
    python benchmarks/eval_throughput.py --hidden 256 --layers 4 --prompts 64 --new_tokens 32
    python benchmarks/eval_throughput.py --model_dir /path/to/hf_llama --dtype bfloat16   # a real model (GPU)

One process. Without --model_dir a random LlamaForCausalLM (and a small sentencepiece tokenizer
trained on the fly) is saved to a temporary directory; both sides load that directory. Prompts are
synthetic benchmark-like texts of mixed lengths (--min_words..--max_words words). Both sides run
greedy decoding with the same batch size, sorted by length and left-padded, stopping at EOS or
--new_tokens. The project's numbers are reported for the first pass (compiling its few bucket
shapes) and for a second pass (compiled); transformers runs eager. Also times the log-likelihood
path on HoC-shaped requests (10 labels x yes/no per prompt) with and without prefix sharing.
Prints examples/s and generated tokens/s per side, exact-match agreement of the generations, the
device and versions. Needs no TensorFlow or ml_collections.
"""
from __future__ import annotations

import argparse
import os
import platform
import random
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

WORDS = ("patient fever cough aspirin warfarin cancer cell death signaling growth pain chest test treatment "
         "problem drug effect mechanism abstract note diagnosis pneumonia infarction myocardial acute heart "
         "failure sepsis tumor angiogenesis metastasis immune therapy dose trial outcome risk").split()


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model_dir", default="", help="an HF LLaMA directory with tokenizer.model (default: random)")
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kv_heads", type=int, default=2)
    p.add_argument("--vocab", type=int, default=512)
    p.add_argument("--prompts", type=int, default=32)
    p.add_argument("--min_words", type=int, default=20)
    p.add_argument("--max_words", type=int, default=200)
    p.add_argument("--new_tokens", type=int, default=32)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--hoc_prompts", type=int, default=8, help="prompts for the log-likelihood timing (0 = skip)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args()


def build_random_model(directory: str, args) -> None:
    import sentencepiece as spm
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    rng = random.Random(args.seed)
    corpus = os.path.join(directory, "corpus.txt")
    with open(corpus, "w") as f:
        for _ in range(4000):
            f.write(" ".join(rng.choice(WORDS) for _ in range(16)) + " . , : ; yes no maybe\n")
    spm.SentencePieceTrainer.train(input=corpus, model_prefix=os.path.join(directory, "tokenizer"),
                                   vocab_size=args.vocab, model_type="bpe", byte_fallback=True,
                                   character_coverage=1.0, minloglevel=2)
    os.remove(corpus)
    vocab = spm.SentencePieceProcessor(model_file=os.path.join(directory, "tokenizer.model")).GetPieceSize()
    torch.manual_seed(args.seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=args.hidden, intermediate_size=4 * args.hidden,
                      num_hidden_layers=args.layers, num_attention_heads=args.heads,
                      num_key_value_heads=args.kv_heads, max_position_embeddings=2048, bos_token_id=1,
                      eos_token_id=2)
    LlamaForCausalLM(cfg).save_pretrained(directory)


def make_prompts(args) -> list[str]:
    rng = random.Random(args.seed + 1)
    out = []
    for _ in range(args.prompts):
        n = rng.randint(args.min_words, args.max_words)
        out.append("Input: " + " ".join(rng.choice(WORDS) for _ in range(n)) + "\nOutput:\n")
    return out


def run_project(engine, ids, new_tokens):
    t0 = time.perf_counter()
    _, out, _ = engine.generate(ids, new_tokens)
    return time.perf_counter() - t0, out


def run_transformers(model_dir, ids, new_tokens, batch, dtype, eos_id, pad_id):
    import torch
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(model_dir, torch_dtype=getattr(torch, dtype)).eval()
    order = sorted(range(len(ids)), key=lambda i: (len(ids[i]), i))
    out = [None] * len(ids)
    t0 = time.perf_counter()
    with torch.no_grad():
        for s in range(0, len(order), batch):
            chunk = order[s:s + batch]
            width = max(len(ids[i]) for i in chunk)
            tokens = torch.full((len(chunk), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for r, i in enumerate(chunk):
                tokens[r, width - len(ids[i]):] = torch.tensor(ids[i])
                mask[r, width - len(ids[i]):] = 1
            gen = model.generate(input_ids=tokens, attention_mask=mask, max_new_tokens=new_tokens, do_sample=False,
                                 eos_token_id=eos_id, pad_token_id=pad_id)[:, width:]
            for r, i in enumerate(chunk):
                row = [int(t) for t in gen[r]]
                out[i] = row[:row.index(eos_id)] if eos_id in row else row
    return time.perf_counter() - t0, out


def hoc_requests(tok, n, seed):
    rng = random.Random(seed + 2)
    labels = ["sustaining proliferative signaling", "evading growth suppressors", "resisting cell death",
              "enabling replicative immortality", "inducing angiogenesis", "activating invasion and metastasis",
              "genomic instability and mutation", "tumor promoting inflammation", "cellular energetics",
              "avoiding immune destruction"]
    reqs, groups = [], []
    for g in range(n):
        text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(150, 250)))
        for lab in labels:
            ctx = tok.encode(f"Input: {text}\nHallmark: {lab}\nOutput:\n")
            for ans in ("yes", "no"):
                reqs.append((ctx, tok.encode(ans, bos=False, eos=False)))
                groups.append(g)
    return reqs, groups


def main() -> None:
    args = parse()
    from mellama_jax.eval.engine import load_engine

    tmp = None
    model_dir = args.model_dir
    if not model_dir:
        tmp = tempfile.TemporaryDirectory()
        model_dir = tmp.name
        build_random_model(model_dir, args)
    engine = load_engine(model_dir, batch_size=args.batch, mesh_config=None, dtype=args.dtype, show_progress=False)
    tok = engine.tokenizer
    ids = [tok.encode(p) for p in make_prompts(args)]
    pad = 0 if engine.model_config.pad_token_id is None else int(engine.model_config.pad_token_id)

    t_first, ours = run_project(engine, ids, args.new_tokens)
    shapes = sorted(engine.take_task_shapes(), key=str)
    t_warm, ours2 = run_project(engine, ids, args.new_tokens)
    assert ours == ours2
    t_hf, theirs = run_transformers(model_dir, ids, args.new_tokens, args.batch, args.dtype, tok.eos_id, pad)

    n = len(ids)
    gen_ours, gen_hf = sum(map(len, ours)), sum(map(len, theirs))
    same = sum(a == b for a, b in zip(ours, theirs))
    print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs; jax {jax.__version__}")
    print(f"model: {engine.model_config.num_hidden_layers} layers, hidden {engine.model_config.hidden_size}, "
          f"vocab {engine.model_config.vocab_size}, {args.dtype}; {n} prompts of {min(map(len, ids))}-"
          f"{max(map(len, ids))} tokens, batch {args.batch}, up to {args.new_tokens} new tokens, greedy")
    print(f"project compiled shapes (kind, rows, prompt bucket, new tokens): {shapes}")
    print()
    print("| run | seconds | examples/s | generated tokens/s |")
    print("|---|---:|---:|---:|")
    for name, t, g in (("project, first pass (compiles)", t_first, gen_ours), ("project, compiled", t_warm, gen_ours),
                       ("transformers generate (eager)", t_hf, gen_hf)):
        print(f"| {name} | {t:.2f} | {n / t:.2f} | {g / t:.1f} |")
    print(f"\nidentical generations: {same}/{n}; project/transformers speed (compiled): {t_hf / t_warm:.2f}x")

    if args.hoc_prompts:
        reqs, groups = hoc_requests(tok, args.hoc_prompts, args.seed)
        timings = {}
        for share in (False, True):
            engine.loglik(reqs, groups=groups, share_prefix=share)  # compile
            t0 = time.perf_counter()
            sums, _ = engine.loglik(reqs, groups=groups, share_prefix=share)
            timings[share] = (time.perf_counter() - t0, sums)
        diff = float(np.max(np.abs(np.array(timings[True][1]) - np.array(timings[False][1]))))
        print(f"\nHoC-shaped log-likelihood, {args.hoc_prompts} prompts x 20 requests (compiled): plain "
              f"{timings[False][0]:.2f} s, prefix-shared {timings[True][0]:.2f} s "
              f"({timings[False][0] / timings[True][0]:.2f}x), max |difference| {diff:.2e}")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
