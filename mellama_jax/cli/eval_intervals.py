"""Recompute an evaluation directory's confidence intervals from predictions/<task>.jsonl alone, with
the bootstrap settings its results.json records, and (--check) confirm they equal results.json's.

    python -m mellama_jax.cli.eval_intervals RUN_DIR [--tasks pubmedqa,medqa] [--check]

Prints {task: intervals block} as JSON; with --check, exits 1 when any interval differs from the one
in results.json by more than 1e-9.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from mellama_jax.eval.stats import intervals_from_run

TOLERANCE = 1e-9


def _mismatches(recomputed: dict, results: dict) -> list[str]:
    out = []
    for task, block in recomputed.items():
        stored = results["tasks"][task]["intervals"].get("metrics", {})
        for metric in sorted(set(stored) | set(block["metrics"])):
            a, b = stored.get(metric), block["metrics"].get(metric)
            if a is None or b is None or any(abs(x - y) > TOLERANCE for x, y in zip(a, b)):
                out.append(f"{task}.{metric}: results.json {a}, recomputed {b}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mellama_jax.cli.eval_intervals", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir")
    parser.add_argument("--tasks", default="", help="comma-separated tasks (default: all in results.json)")
    parser.add_argument("--check", action="store_true", help="exit 1 unless equal to results.json's intervals")
    args = parser.parse_args(argv)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()] or None
    try:
        recomputed = intervals_from_run(args.run_dir, tasks)
    except (ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(recomputed, indent=2, sort_keys=True))
    if args.check:
        with open(os.path.join(args.run_dir, "results.json"), encoding="utf-8") as f:
            bad = _mismatches(recomputed, json.load(f))
        if bad:
            print("intervals differ from results.json:\n  " + "\n  ".join(bad), file=sys.stderr)
            return 1
        print(f"intervals of {len(recomputed)} task(s) equal results.json's", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
