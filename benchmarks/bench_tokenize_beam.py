"""Tokens/s of building a token store: today's in-process path, the serial builder, and Apache Beam's
DirectRunner with 1 and 2 worker processes, on one generated corpus (ratios in one run).

    python benchmarks/bench_tokenize_beam.py                        # 64 jsonl files, ~50 MB of text
    python benchmarks/bench_tokenize_beam.py --files 80 --mb 50 --json /tmp/bench_tokenize_beam.json
    python benchmarks/project_tokenize.py --from_json /tmp/bench_tokenize_beam.json

The corpus is jsonl documents of 100-600 words drawn from the bundled sample corpus's words, in a
temporary directory; the tokenizer is the bundled demo one (mellama_jax/data/samples/tokenizer.model).
Every mode uses one sentencepiece thread per process, so "per core" is tokens/s over the processes
that tokenize: the in-process path and the serial builder use one core, Beam N workers use N. The
Beam rates are end to end (workers start, read, tokenize, write shards; the driver writes the
manifest), so a small corpus understates scaling by the fixed start-up cost (Beam's worker
processes start in ~2 s each), which is measured on a 2-file corpus and printed apart.
The target (issue 23): 2 workers >= 1.7x 1 worker on 2 cores. Nothing else should be running.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mellama_jax.data.config import SAMPLES_DIR, demo_data_config, source_config  # noqa: E402
from mellama_jax.data.store import build  # noqa: E402
from mellama_jax.data.token_cache import load_source_tokens  # noqa: E402
from mellama_jax.tokenizer import load_tokenizer  # noqa: E402

TOKENIZER = os.path.join(SAMPLES_DIR, "tokenizer.model")


def write_corpus(directory: str, files: int, megabytes: float, seed: int = 0) -> int:
    """`files` jsonl files holding ~`megabytes` MB of text in total; returns the bytes written."""
    with open(os.path.join(SAMPLES_DIR, "general", "general_sample.jsonl"), encoding="utf-8") as f:
        words = " ".join(json.loads(line)["text"] for line in f if line.strip()).split()
    rng = random.Random(seed)
    per_file = int(megabytes * 1e6 / files)
    total = 0
    for i in range(files):
        lines, size, n = [], 0, 0
        while size < per_file:
            text = " ".join(rng.choices(words, k=rng.randint(100, 600)))
            line = json.dumps({"id": f"f{i}-{n}", "text": text})
            lines.append(line)
            size += len(line) + 1
            n += 1
        with open(os.path.join(directory, f"part-{i:05d}.jsonl"), "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
        total += size
    return total


def data_config(corpus: str, scratch: str):
    c = demo_data_config()
    c.sources = {"bench": source_config([os.path.join(corpus, "*.jsonl")], "jsonl", eval_fraction=0.01)}
    c.mixture = {"bench": 1.0}
    c.reader, c.cache_tokenized, c.tokenize_threads = "direct", False, 1
    c.data_dir = scratch
    return c


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--files", type=int, default=64)
    p.add_argument("--mb", type=float, default=50.0, help="MB of jsonl in total")
    p.add_argument("--workers", type=int, default=2, help="the larger Beam worker count")
    p.add_argument("--json", default="", help="write the results here (benchmarks/project_tokenize.py reads it)")
    p.add_argument("--skip", default="", help="comma-separated modes to skip: in_process,serial,beam1,beamN")
    args = p.parse_args(argv)
    skip = set(filter(None, args.skip.split(",")))

    # Imported before any timing: the first Beam run would otherwise pay the driver's import of Beam.
    from mellama_jax.cli import beam_store  # noqa: F401
    from mellama_jax.cli.beam_store import run_beam

    root = tempfile.mkdtemp(prefix="bench-tokenize-beam-")
    try:
        corpus = os.path.join(root, "corpus")
        os.makedirs(corpus)
        nbytes = write_corpus(corpus, args.files, args.mb)
        cfg = data_config(corpus, os.path.join(root, "data"))
        tok = load_tokenizer(TOKENIZER)
        print(f"corpus: {args.files} jsonl files, {nbytes / 1e6:.1f} MB; tokenizer {TOKENIZER} "
              f"({tok.vocab_size} pieces); load average {os.getloadavg()[0]:.2f} at start; "
              f"{os.cpu_count()} CPUs", flush=True)
        rows, results = [], {}

        def report(name: str, seconds: float, tokens: int, cores: int) -> dict:
            rate = tokens / seconds
            results[name] = {"seconds": seconds, "tokens": tokens, "tokens_per_s": rate, "cores": cores,
                             "tokens_per_core_s": rate / cores}
            rows.append(f"| {name} | {cores} | {seconds:.1f} | {tokens:,} | {rate:,.0f} | {rate / cores:,.0f} |")
            print(rows[-1], flush=True)
            return results[name]

        print("| mode | cores | seconds | tokens | tokens/s | tokens/s per core |\n|---|---|---|---|---|---|")
        if "in_process" not in skip:
            dt, (docs, _) = timed(lambda: load_source_tokens("bench", cfg, tok, 0, 1))
            report("in-process (token_cache, 1 thread)", dt, sum(d.num_tokens for d in docs.values()), 1)
            del docs
        if "serial" not in skip:
            dt, m = timed(lambda: build.build_store_serial(cfg, tok, os.path.join(root, "serial"), threads=1))
            report("serial builder", dt, _tokens(m), 1)
        beam, fixed = {}, {}
        tiny = os.path.join(root, "tiny")
        os.makedirs(tiny)
        write_corpus(tiny, 2, 0.02, seed=1)
        tiny_cfg = data_config(tiny, os.path.join(root, "data"))
        for w in ([1] if "beam1" not in skip else []) + ([args.workers] if "beamN" not in skip else []):
            opts = ["--runner", "DirectRunner", "--direct_num_workers", str(w), "--direct_running_mode",
                    "multi_processing"]
            dt, m = timed(lambda: run_beam(cfg, tok, os.path.join(root, f"beam{w}"), opts, threads=1, command="bench"))
            beam[w] = report(f"Beam DirectRunner, {w} worker(s)", dt, _tokens(m), w)
            # The fixed cost (worker processes start, stages run) measured on a 2-file corpus.
            fixed[w], _ = timed(lambda: run_beam(tiny_cfg, tok, os.path.join(root, f"tiny{w}"), opts, threads=1,
                                                 command="bench"))
        if 1 in beam and args.workers in beam and args.workers != 1:
            n = args.workers
            ratio = beam[n]["tokens_per_s"] / beam[1]["tokens_per_s"]
            steady = {w: beam[w]["tokens"] / max(1e-9, beam[w]["seconds"] - fixed[w]) for w in (1, n)}
            results.update({"ratio": ratio, "scaling_efficiency": ratio / n,
                            "beam_tokens_per_core_s": beam[n]["tokens_per_core_s"],
                            "fixed_cost_s": {str(w): fixed[w] for w in (1, n)},
                            "steady_ratio": steady[n] / steady[1],
                            "steady_tokens_per_core_s": steady[n] / n})
            print(f"\nBeam {n} workers / 1 worker, end to end: {ratio:.2f}x (target >= 1.7x on 2 cores); "
                  f"parallel efficiency {ratio / n:.2f}; per core {beam[n]['tokens_per_core_s']:,.0f} tokens/s")
            print(f"fixed cost (2-file corpus): {fixed[1]:.1f} s with 1 worker, {fixed[n]:.1f} s with {n}; "
                  f"without it: {steady[n] / steady[1]:.2f}x, per core {steady[n] / n:,.0f} tokens/s")
        if "in-process (token_cache, 1 thread)" in results and 1 in beam:
            print(f"Beam 1 worker / in-process: "
                  f"{beam[1]['tokens_per_s'] / results['in-process (token_cache, 1 thread)']['tokens_per_s']:.2f}x")
        results["load_average_end"] = os.getloadavg()
        print(f"load average at end: {results['load_average_end']}")
        if args.json:
            with open(args.json, "w", encoding="utf-8") as f:
                json.dump({"files": args.files, "bytes": nbytes, **results}, f, indent=1)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _tokens(manifest: dict) -> int:
    return sum(s["splits"][sp]["tokens"] for s in manifest["sources"].values() for sp in s["splits"])


if __name__ == "__main__":
    main()
