"""Decontamination throughput: training words checked per second against a benchmark n-gram index.

    python benchmarks/decontaminate.py                  # 20 MB synthetic corpus, 20k benchmark examples
    python benchmarks/decontaminate.py --size_mb 200 --examples 100000

The corpus (JSONL of words drawn from the bundled samples' vocabulary) and the benchmark texts are
synthetic, written under --workdir (never part of the repository). Prints the index build time and
size, then documents/s, words/s and MB/s of `scan_documents` (normalise, hash, n-gram lookup), one process,
by wall clock and by process CPU time (the latter is what a shared machine can still measure).
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import random
import resource
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mellama_jax.data.config import SAMPLES_DIR  # noqa: E402
from mellama_jax.data.decontaminate import build_index, scan_documents  # noqa: E402


def _vocabulary() -> list[str]:
    words = set()
    for path in glob.glob(os.path.join(SAMPLES_DIR, "general", "*.jsonl")) + glob.glob(
            os.path.join(SAMPLES_DIR, "pmc", "*.jsonl")):
        with open(path, encoding="utf-8") as f:
            for line in f:
                words.update(json.loads(line).get("text", "").split())
    return sorted(words)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size_mb", type=float, default=20.0)
    ap.add_argument("--examples", type=int, default=20000)
    ap.add_argument("--n", type=int, default=13)
    ap.add_argument("--workdir", default="/tmp/mellama_decontam_bench")
    args = ap.parse_args()
    rng = random.Random(0)
    vocab = _vocabulary()
    os.makedirs(args.workdir, exist_ok=True)

    benchmarks = {"bench": [[" ".join(rng.choices(vocab, k=60)), " ".join(rng.choices(vocab, k=8))]
                            for _ in range(args.examples)]}
    t0 = time.perf_counter()
    index = build_index(benchmarks, args.n)
    t_index = time.perf_counter() - t0

    docs, size = [], 0
    while size < args.size_mb * 1e6:
        text = " ".join(rng.choices(vocab, k=rng.randint(200, 2000)))
        docs.append({"id": f"d{len(docs)}", "text": text})
        size += len(text)
    n_words = sum(len(d["text"].split()) for d in docs)
    t0, c0 = time.perf_counter(), time.process_time()
    scan = scan_documents("bench", docs, index)
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"index: {args.examples} examples, {len(index.hashes):,} {args.n}-grams in {t_index:.2f}s")
    print(f"scan: {len(docs):,} documents, {n_words:,} words, {size / 1e6:.1f} MB in {dt:.2f}s -> "
          f"{len(docs) / dt:,.0f} docs/s, {n_words / dt:,.0f} words/s, {size / 1e6 / dt:.2f} MB/s "
          f"(1 process, wall); CPU time {cpu:.2f}s -> {n_words / cpu:,.0f} words/s; "
          f"contaminated {len(scan['contaminated_ids'])}; peak RSS {rss:.0f} MiB")


if __name__ == "__main__":
    main()
