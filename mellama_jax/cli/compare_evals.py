"""Paired comparison of two evaluation directories: per task and metric, run B minus run A with a
paired-bootstrap interval, a two-sided p-value and (0/1 metrics) McNemar's exact test.

    python -m mellama_jax.cli.compare_evals RUN_A RUN_B --out DIR [--tasks pubmedqa,medqa]
        [--iterations 1000] [--seed 0] [--confidence 0.95] [--overwrite]

RUN_A / RUN_B: --workdir directories of evaluation runs (results.json + predictions/). They must have
scored the same examples under the same protocol; otherwise nothing is written and the difference is
named. DIR receives comparison.json and comparison.md (written to a temporary sibling and renamed).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from mellama_jax.eval.compare import ComparisonError, compare_runs, markdown
from mellama_jax.output_dir import OutputDirError, StagedOutput

TOOL = "mellama_jax.cli.compare_evals"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {TOOL}", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_a")
    parser.add_argument("run_b")
    parser.add_argument("--out", required=True, help="output directory (new, empty, or an earlier comparison)")
    parser.add_argument("--tasks", default="", help="comma-separated subset of the tasks both runs evaluated")
    parser.add_argument("--iterations", type=int, default=1000, help="bootstrap resamples (default 1000)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    parser.add_argument("--confidence", type=float, default=0.95, help="interval level (default 0.95)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it is an earlier comparison")
    args = parser.parse_args(argv)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()] or None
    try:
        staged = StagedOutput(args.out, TOOL, overwrite=args.overwrite)
        staged.check()  # before the work: a bad --out fails at once
        comparison = compare_runs(args.run_a, args.run_b, tasks, iterations=args.iterations, seed=args.seed,
                                  confidence=args.confidence)
        text = markdown(comparison)
        with staged as d:
            with open(os.path.join(d, "comparison.json"), "w", encoding="utf-8") as f:
                f.write(json.dumps(comparison, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
            with open(os.path.join(d, "comparison.md"), "w", encoding="utf-8") as f:
                f.write(text)
    except (ComparisonError, OutputDirError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(text)
    print(f"wrote {os.path.join(staged.path, 'comparison.json')} and comparison.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
