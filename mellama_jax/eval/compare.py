"""Paired comparison of two evaluation directories (``python -m mellama_jax.cli.compare_evals A B --out DIR``).

Both runs must have scored the same examples (ids, order and references of predictions/<task>.jsonl)
under the same protocol (every key of a task's results.json entry that decides its numbers: prompt
set and template, few-shot demonstrations, chat template, decoding, parse rule, choices); anything
else is refused with the difference named. For every task and metric: run B minus run A, a paired
bootstrap interval (the same resampled examples for both runs, drawn as stats.py draws them, so
run-level intervals and the comparison share resamples), a two-sided bootstrap p-value, and for
metrics that are a mean of per-example 0/1 outcomes (accuracy, exact match, top-k) McNemar's exact test.

p-value: the resampled differences, shifted to be centred on zero, stand for the null distribution
(Efron & Tibshirani 1993, section 16.4): p = (1 + #{b : |d_b - d| >= |d|}) / (iterations + 1), with d
the observed difference; a run against itself gives d = 0 and p = 1, and swapping the runs negates
every difference and keeps every p.
"""
from __future__ import annotations

import json
import math
import os
from typing import Any, Sequence

import numpy as np

from mellama_jax.eval import stats

__all__ = ["ComparisonError", "compare_runs", "markdown", "mcnemar_exact", "paired_p_value", "PROTOCOL_KEYS"]

# Per-task results.json keys that decide the numbers (and must agree); sub-keys that describe the model
# or the computation rather than the protocol are left out of the comparison.
PROTOCOL_KEYS = ("protocol", "prompt_set", "prompt_template_id", "prompt_template", "prompt_demo_format",
                 "answer_format", "parse_rule", "choices", "headline_metric", "few_shot", "decoding", "chat_template")
_NOT_PROTOCOL = {"decoding": ("max_context", "prefix_sharing", "answer_tokens"), "few_shot": ("train_path",)}
_TIE = 1e-12  # |d_b - d| >= |d| up to float rounding of discrete differences


class ComparisonError(ValueError):
    """The two directories cannot be compared; the message names why."""


def mcnemar_exact(a_only: int, b_only: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts (examples only run A / only run B
    got right): 2 * P(X <= min) for X ~ Binomial(a_only + b_only, 1/2), at most 1 (as statsmodels'
    mcnemar(exact=True))."""
    m, k = a_only + b_only, min(a_only, b_only)
    if m == 0:
        return 1.0
    tail = sum(math.comb(m, i) for i in range(k + 1))
    return min(1.0, 2 * tail / 2 ** m)


def paired_p_value(diffs: np.ndarray, observed: float) -> float:
    """Two-sided p-value of the observed difference from resampled differences (module docstring)."""
    extreme = np.abs(diffs - observed) >= abs(observed) - _TIE
    return float((1 + int(extreme.sum())) / (len(diffs) + 1))


def _load_run(run_dir: str) -> dict:
    path = os.path.join(run_dir, "results.json")
    if not os.path.isdir(run_dir):
        raise ComparisonError(f"{run_dir}: no such directory")
    if not os.path.isfile(path):
        raise ComparisonError(f"{run_dir}: not an evaluation directory (no results.json; expected the --workdir "
                              "of an evaluation run)")
    try:
        with open(path, encoding="utf-8") as f:
            results = json.load(f)
    except ValueError as e:
        raise ComparisonError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(results, dict) or not isinstance(results.get("tasks"), dict):
        raise ComparisonError(f"{path}: not an evaluation results file (no 'tasks' table)")
    return results


def _strip(key: str, value: Any) -> Any:
    if isinstance(value, dict) and key in _NOT_PROTOCOL:
        return {k: v for k, v in value.items() if k not in _NOT_PROTOCOL[key]}
    return value


def _differences(a: Any, b: Any, path: str) -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _differences(a.get(k, "<absent>"), b.get(k, "<absent>"), f"{path}.{k}")
        return out
    if a != b:
        show = lambda v: (repr(v)[:117] + "...") if len(repr(v)) > 120 else repr(v)
        return [f"{path}: {show(a)} (A) vs {show(b)} (B)"]
    return []


def _protocol_differences(task: str, ra: dict, rb: dict) -> list[str]:
    out = []
    for key in PROTOCOL_KEYS:
        out += _differences(_strip(key, ra.get(key, "<absent>")), _strip(key, rb.get(key, "<absent>")),
                            f"{task}.{key}")
    return out


def _check_examples(task: str, recs_a: list[dict], recs_b: list[dict]) -> None:
    ids_a, ids_b = [r.get("id") for r in recs_a], [r.get("id") for r in recs_b]
    if len(ids_a) != len(ids_b):
        raise ComparisonError(f"task {task}: run A scored {len(ids_a)} examples, run B {len(ids_b)}: not the same "
                              "examples (a different file, split or max_examples)")
    for i, (x, y) in enumerate(zip(ids_a, ids_b)):
        if x != y:
            raise ComparisonError(f"task {task}: example {i} is {x!r} in run A and {y!r} in run B: not the same "
                                  "examples in the same order")
    for x, y in zip(recs_a, recs_b):
        if x.get("reference") != y.get("reference"):
            raise ComparisonError(f"task {task}: example {x.get('id')!r} has different references in the two "
                                  "runs: not the same data")


def _predictions(run_dir: str, task: str) -> list[dict]:
    path = os.path.join(run_dir, "predictions", f"{task}.jsonl")
    if not os.path.isfile(path):
        raise ComparisonError(f"{run_dir}: task {task} is in results.json but {path} is missing")
    return stats.read_predictions(path)


def _select_tasks(a: dict, b: dict, tasks: Sequence[str] | None) -> list[str]:
    ta, tb = list(a["tasks"]), list(b["tasks"])
    if tasks:
        missing = [f"{t} (not in {side})" for t in tasks for side, have in (("A", ta), ("B", tb)) if t not in have]
        if missing:
            raise ComparisonError(f"--tasks: {', '.join(missing)}; run A has {sorted(ta)}, run B has {sorted(tb)}")
        return list(tasks)
    if set(ta) != set(tb):
        raise ComparisonError(f"the runs evaluated different tasks: only in A {sorted(set(ta) - set(tb))}, only in "
                              f"B {sorted(set(tb) - set(ta))} (pass tasks / --tasks to compare the common ones)")
    return ta


def _run_info(run_dir: str, results: dict) -> dict:
    ck = results.get("checkpoint") or {}
    return {"path": os.path.abspath(run_dir), "checkpoint": ck.get("path"), "checkpoint_sha256": ck.get("sha256"),
            "code": (results.get("code") or {}).get("commit")}


def _task_comparison(task: str, family: str, recs_a: list[dict], recs_b: list[dict], choices: Sequence[str],
                     iterations: int, seed: int, confidence: float) -> dict:
    sa, sb = (stats.example_stats(family, r, choices) for r in (recs_a, recs_b))
    pa, pb = sa.point(), sb.point()
    boot_a, boot_b = stats.bootstrap([sa, sb], iterations, seed, task)
    out = {}
    for metric in [m for m in pa if m in pb]:  # bertscore_f1 only where both runs computed it
        d = pb[metric] - pa[metric]
        diffs = boot_b[metric] - boot_a[metric]
        entry = {"run_a": pa[metric], "run_b": pb[metric], "difference": d,
                 "interval": stats.percentile_interval(diffs, confidence), "p_value": paired_p_value(diffs, d)}
        if metric in sa.binary:
            oa, ob = sa.outcomes(metric), sb.outcomes(metric)
            a_only, b_only = int((oa & ~ob).sum()), int((ob & ~oa).sum())
            entry["mcnemar"] = {"a_only": a_only, "b_only": b_only, "p_value": mcnemar_exact(a_only, b_only)}
        out[metric] = entry
    return out


def compare_runs(run_a: str, run_b: str, tasks: Sequence[str] | None = None, *, iterations: int = 1000,
                 seed: int = 0, confidence: float = 0.95, same_protocol: bool = True) -> dict:
    """The paired comparison of two evaluation directories (what comparison.json holds).

    same_protocol=False compares runs that differ on purpose (the protocol-sensitivity command): the
    differences are listed under "protocol_differences" instead of refused; the examples must still be
    the same."""
    if iterations < 1:
        raise ComparisonError(f"iterations={iterations}: a paired bootstrap needs at least 1 resample")
    if not 0.0 < confidence < 1.0:
        raise ComparisonError(f"confidence={confidence}: expected a fraction in (0, 1)")
    a, b = _load_run(run_a), _load_run(run_b)
    names = _select_tasks(a, b, tasks)
    problems = []
    for t in names:
        fa, fb = a["tasks"][t].get("family"), b["tasks"][t].get("family")
        if fa not in stats.FAMILIES or fb not in stats.FAMILIES:
            raise ComparisonError(f"task {t}: family {fa!r} (A) / {fb!r} (B): the paired comparison covers the "
                                  f"built-in harness's task families {stats.FAMILIES} (lm-eval runs carry "
                                  "lm-eval's own stderr)")
        problems += _protocol_differences(t, a["tasks"][t], b["tasks"][t])
    if problems and same_protocol:
        raise ComparisonError("the runs used different protocols, so their difference is not the models' alone:\n  "
                              + "\n  ".join(problems))
    out = {"run_a": _run_info(run_a, a), "run_b": _run_info(run_b, b), "difference": "run B minus run A",
           "bootstrap": {"method": "paired " + stats.METHOD, "iterations": int(iterations), "seed": int(seed),
                         "confidence": float(confidence),
                         "resampling": "numpy default_rng([seed, crc32(task)]).integers(0, n, size=(iterations, n)), "
                                       "the same resampled examples for both runs",
                         "p_value": "(1 + #{b: |d_b - d| >= |d|}) / (iterations + 1), d_b the resampled "
                                    "differences, d the observed one"},
           "mcnemar": "exact (binomial) two-sided test on the discordant examples, for per-example 0/1 metrics",
           "tasks": {}}
    if not same_protocol:
        out["protocol_differences"] = problems
    for t in names:
        recs_a, recs_b = _predictions(run_a, t), _predictions(run_b, t)
        _check_examples(t, recs_a, recs_b)
        r = a["tasks"][t]
        choices = r["choices"] if isinstance(r.get("choices"), list) else ()
        out["tasks"][t] = {"display_name": r.get("display_name", t), "family": r["family"],
                           "num_examples": len(recs_a),
                           "metrics": _task_comparison(t, r["family"], recs_a, recs_b, choices, iterations, seed,
                                                       confidence) if recs_a else {}}
    return out


def _pct(v: float) -> str:
    return f"{100 * v:.2f}"


def markdown(comparison: dict) -> str:
    """comparison.md: one row per task and metric."""
    bs = comparison["bootstrap"]
    lines = ["# Paired comparison", "",
             f"Run A: `{comparison['run_a']['path']}` (checkpoint `{comparison['run_a']['checkpoint']}`)  ",
             f"Run B: `{comparison['run_b']['path']}` (checkpoint `{comparison['run_b']['checkpoint']}`)", "",
             f"Differences are run B minus run A, in percentage points, with {100 * bs['confidence']:g}% intervals "
             f"and two-sided p-values from a {bs['method']} ({bs['iterations']} resamples, seed {bs['seed']}); "
             "McNemar: exact test on the examples only A / only B got right.", "",
             "| Task | N | Metric | A | B | B - A [interval] | p | McNemar (A only / B only, p) |",
             "|---|---:|---|---:|---:|---:|---:|---|"]
    for t in comparison["tasks"].values():
        for metric, m in t["metrics"].items():
            mc = m.get("mcnemar")
            mc_text = f"{mc['a_only']} / {mc['b_only']}, {mc['p_value']:.4f}" if mc else ""
            lines.append(f"| {t['display_name']} | {t['num_examples']} | {metric} | {_pct(m['run_a'])} | "
                         f"{_pct(m['run_b'])} | {100 * m['difference']:+.2f} [{100 * m['interval'][0]:+.2f}, "
                         f"{100 * m['interval'][1]:+.2f}] | {m['p_value']:.4f} | {mc_text} |")
    lines.append("")
    return "\n".join(lines)
