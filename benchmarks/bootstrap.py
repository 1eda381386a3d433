"""Cost of the confidence intervals: bootstrap time per task for every metric kind.

    python benchmarks/bootstrap.py                          # 10,000 examples x 1,000 resamples
    python benchmarks/bootstrap.py --n 2000 --iterations 500 --naive 20

For each kind (choice tasks with 3 and with 40 labels, HoC's ten hallmarks, extractive QA, NER,
summarization with ROUGE and BERTScore per example, diagnosis) it times, on synthetic prediction
records: "stats" = building the per-example sufficient statistics from the records (stored ROUGE /
BERTScore scores are read, not recomputed), and "bootstrap" = drawing the resamples, the resampled
sums (one matrix product per row chunk) and every metric's percentile interval, as
mellama_jax.eval.stats.task_intervals runs it. --naive K also times K resamples of the per-resample
Python loop over metrics.py (what a non-vectorised bootstrap does) and extrapolates to --iterations.
"""
from __future__ import annotations

import argparse
import os
import random
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mellama_jax.eval import metrics as M  # noqa: E402
from mellama_jax.eval import stats  # noqa: E402

HOC = [f"hallmark {i}" for i in range(10)]
TAGS = ("O", "O", "O", "O", "B-problem", "I-problem", "B-test", "B-treatment")


def _records(kind: str, n: int, rng: random.Random) -> tuple[str, list[dict], list[str]]:
    out, choices = [], []
    for i in range(n):
        if kind in ("choice-3", "choice-40"):
            choices = ["yes", "no", "maybe"] if kind == "choice-3" else [f"specialty {j}" for j in range(40)]
            gold = rng.choice(choices)
            pred = gold if rng.random() < 0.6 else rng.choice(choices + ["missing"])
        elif kind == "multilabel":
            choices = HOC
            gold = [c for c in HOC if rng.random() < 0.2]
            pred = [c for c in HOC if rng.random() < 0.2]
        elif kind == "extractive_qa":
            gold = [f"aspirin {i} mg given for chest pain"]
            pred = gold[0] if rng.random() < 0.5 else f"aspirin {rng.randrange(n)} mg"
        elif kind == "ner":
            gold = [rng.choice(TAGS) for _ in range(25)]
            pred = list(gold) if rng.random() < 0.5 else [rng.choice(TAGS) for _ in range(25)]
        elif kind == "summarization":
            gold, pred = "reference", "prediction"
        elif kind == "diagnosis":
            gold = {"diagnosis": "sepsis", "synonyms": []}
            pred = rng.sample(["sepsis", "pneumonia", "heart failure", "stroke", "asthma", "gout"], 5)
        rec = {"id": i, "prediction": pred, "reference": gold}
        if kind == "summarization":
            rec["scores"] = {"rouge1": rng.random(), "rouge2": rng.random(), "rougeL": rng.random(),
                             "bertscore_f1": rng.random()}
        out.append(rec)
    family = "choice" if kind.startswith("choice") else kind
    return family, out, choices


def _naive(family: str, recs: list[dict], choices: list[str], k: int, seed: int) -> float:
    draws = np.random.default_rng(seed).integers(0, len(recs), size=(k, len(recs)))
    t0 = time.perf_counter()
    for row in draws:
        sub = [recs[i] for i in row]
        p, g = [r["prediction"] for r in sub], [r["reference"] for r in sub]
        if family == "choice":
            M.choice_metrics(p, g)
        elif family == "multilabel":
            M.multilabel_metrics(p, g, choices)
        elif family == "extractive_qa":
            M.squad_metrics(p, g)
        elif family == "ner":
            M.ner_metrics(p, g)
        elif family == "summarization":
            for key in ("rouge1", "rouge2", "rougeL", "bertscore_f1"):
                np.mean([r["scores"][key] for r in sub])
        elif family == "diagnosis":
            M.diagnosis_metrics(p, g)
    return (time.perf_counter() - t0) / k


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=10_000, help="examples per task")
    ap.add_argument("--iterations", type=int, default=1000)
    ap.add_argument("--naive", type=int, default=0, help="also time this many resamples of the Python loop")
    ap.add_argument("--kinds", default="choice-3,choice-40,multilabel,extractive_qa,ner,summarization,diagnosis")
    args = ap.parse_args(argv)
    print(f"n={args.n} examples, {args.iterations} resamples; numpy {np.__version__}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}")
    header = "| kind | metrics | stats (s) | bootstrap (s) |" + (" naive loop, extrapolated (s) |" if args.naive else "")
    print(header)
    print("|---|---:|---:|---:|" + ("---:|" if args.naive else ""))
    for kind in args.kinds.split(","):
        family, recs, choices = _records(kind, args.n, random.Random(0))
        stats.example_stats(family, recs[:2], choices)  # warm-up: imports (seqeval) are not timed
        t0 = time.perf_counter()
        st = stats.example_stats(family, recs, choices)
        t1 = time.perf_counter()
        (boot,) = stats.bootstrap([st], args.iterations, 0, kind)
        iv = {k: stats.percentile_interval(v, 0.95) for k, v in boot.items()}
        t2 = time.perf_counter()
        row = f"| {kind} | {len(iv)} | {t1 - t0:.2f} | {t2 - t1:.2f} |"
        if args.naive:
            row += f" {_naive(family, recs, choices, args.naive, 0) * args.iterations:.0f} |"
        print(row, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
