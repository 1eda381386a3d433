"""Cost of benchmarks inside training: one in-training benchmark call (eval/in_training.py) against
the train step of the same model on the same mesh.

    python benchmarks/in_training_bench.py                          # small preset, PubMedQA + MedQA, loglik
    python benchmarks/in_training_bench.py --preset tiny --examples 50 --protocol generate --max_new_tokens 16

Builds the Trainer that launch.py runs (synthetic batches of --batch x --seq_len, mesh from
--mesh), times --steps compiled train steps, then scores --tasks on the live parameters with the
hook the loop calls every config.train.bench_every steps: the first call (compiling its bucket
shapes) and the mean of --calls compiled calls. Task files are synthetic PubMedQA (TSV, contexts of
~--context_words words) and MedQA (JSONL, 5 options) with --examples examples each; the tokenizer is
the bundled 2,000-piece demo tokenizer. Prints seconds per call, per task, and the share of
training time a call costs at several bench_every values: call / (call + bench_every x step).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import jax  # noqa: E402

WORDS = ("patient fever cough aspirin warfarin cancer cell death signaling growth pain chest test treatment "
         "problem drug effect mechanism abstract note diagnosis pneumonia infarction myocardial acute heart "
         "failure sepsis tumor angiogenesis metastasis immune therapy dose trial outcome risk").split()


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="small", choices=["tiny", "small"])
    p.add_argument("--tasks", default="pubmedqa,medqa")
    p.add_argument("--protocol", default="loglik", choices=["loglik", "generate"])
    p.add_argument("--max_new_tokens", type=int, default=16)
    p.add_argument("--examples", type=int, default=100, help="examples per task")
    p.add_argument("--context_words", type=int, default=120)
    p.add_argument("--bench_batch", type=int, default=8, help="config.bench.batch_size")
    p.add_argument("--batch", type=int, default=16, help="config.train.global_batch_size")
    p.add_argument("--seq_len", type=int, default=128)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--calls", type=int, default=2)
    p.add_argument("--mesh", default="1,-1,1", help="data,fsdp,tensor")
    return p.parse_args()


def _words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def write_tasks(directory: str, n: int, context_words: int) -> None:
    """PubMedQA (pqal TSV) and MedQA (JSONL) files of n synthetic examples, in the public formats."""
    rng = random.Random(0)
    header = ["QUESTION", "CONTEXTS", "LABELS", "MESHES", "YEAR", "reasoning_required_pred",
              "reasoning_free_pred", "final_decision", "LONG_ANSWER", "pmid"]
    with open(os.path.join(directory, "pubmedqa.tsv"), "w") as f:
        f.write("\t".join(header) + "\n")
        for i in range(n):
            contexts = [_words(rng, context_words // 2) + ".", _words(rng, context_words // 2) + "."]
            f.write("\t".join([f"Does {_words(rng, 6)} help?", repr(contexts), "['BACKGROUND', 'RESULTS']",
                               "['Humans']", "2008", "yes", "yes", ("yes", "no", "maybe")[i % 3], "Long.",
                               str(1000 + i)]) + "\n")
    with open(os.path.join(directory, "medqa.jsonl"), "w") as f:
        for i in range(n):
            opts = {k: _words(rng, 3) for k in "ABCDE"}
            idx = "ABCDE"[i % 5]
            f.write(json.dumps({"question": f"A {40 + i % 40}-year-old {_words(rng, 40)}. Which drug?",
                                "answer": opts[idx], "options": opts, "meta_info": "step1", "answer_idx": idx}) + "\n")


def main() -> None:
    args = parse()
    from configs.pretrain import get_config
    from mellama_jax import sharding as shd
    from mellama_jax.eval import in_training, runner
    from mellama_jax.eval.tasks import get_task
    from mellama_jax.tokenizer import load_tokenizer
    from mellama_jax.train.loop import Trainer, resolve_model_config

    tok_file = os.path.join(REPO, "mellama_jax", "data", "samples", "tokenizer.model")
    tokenizer = load_tokenizer(tok_file)
    tmp = tempfile.mkdtemp(prefix="inbench_")
    write_tasks(tmp, args.examples, args.context_words)

    c = get_config("tiny")
    c.model.preset, c.model.vocab_size = args.preset, tokenizer.vocab_size
    c.data.seq_len, c.train.global_batch_size = args.seq_len, args.batch
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = (int(x) for x in args.mesh.split(","))
    c.train.bench_every = 1
    c.bench.tasks, c.bench.data_dir, c.bench.protocol = args.tasks, tmp, args.protocol
    c.bench.batch_size, c.bench.max_new_tokens = args.bench_batch, args.max_new_tokens
    model_config = resolve_model_config(c)
    mesh = shd.make_mesh(c.mesh)
    trainer = Trainer(c, model_config, mesh)
    state = trainer.init_state(0)

    from mellama_jax.train.synthetic import SyntheticPipeline

    pipe = SyntheticPipeline(vocab_size=model_config.vocab_size, seq_len=args.seq_len, global_batch_size=args.batch)
    t0 = time.perf_counter()
    state, m = trainer.train_step(state, trainer.global_batch(pipe.batch(0)))
    jax.block_until_ready(m)
    first_step = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i in range(1, args.steps + 1):
        state, m = trainer.train_step(state, trainer.global_batch(pipe.batch(i)))
    jax.block_until_ready(m)
    step = (time.perf_counter() - t0) / args.steps

    view = in_training.eval_view(c, tmp)
    tasks = {n: runner.prepare_task(get_task(n), view) for n in args.tasks.split(",")}
    hook = in_training.BenchHooks(tasks, view, tokenizer, 1)(trainer, lambda s, v: None)[0][0]
    t0 = time.perf_counter()
    hook.score(state.params)
    first_call = time.perf_counter() - t0
    per_task = {n: 0.0 for n in tasks}
    t0 = time.perf_counter()
    for _ in range(args.calls):
        hook.score(state.params)
        for n in tasks:
            per_task[n] += hook.last[n][0]["seconds"] / args.calls
    call = (time.perf_counter() - t0) / args.calls

    print(f"device: {jax.device_count()} x {jax.devices()[0].device_kind}, mesh {dict(mesh.shape)}, "
          f"{platform.processor() or platform.machine()}, jax {jax.__version__}")
    print(f"model: preset {args.preset}, {model_config.num_params() / 1e6:.2f}M params, vocab {model_config.vocab_size}; "
          f"train batch {args.batch} x {args.seq_len} tokens")
    print(f"benchmarks: {args.tasks}, {args.examples} examples each, protocol {args.protocol}, "
          f"bench batch {args.bench_batch}")
    print(f"train step: {step * 1e3:.1f} ms (first, compiling: {first_step:.1f} s)")
    print(f"benchmark call: {call:.2f} s compiled (first, compiling: {first_call:.1f} s); per task: "
          + ", ".join(f"{n} {s:.2f} s" for n, s in per_task.items()))
    print(f"one call = {call / step:.0f} train steps")
    for every in (100, 500, 1000, 5000):
        print(f"  bench_every={every:>5}: {100 * call / (call + every * step):5.1f}% of training time")


if __name__ == "__main__":
    main()
