"""results.json (everything, sorted keys) and results.md (one row per benchmark, like the paper's table)."""
from __future__ import annotations

import json
import os

__all__ = ["write_results", "markdown", "published_table"]

# Which metrics the Markdown table shows per family, in order (Me-LLaMA reports these).
_COLUMNS = {
    "choice": ("accuracy", "macro_f1", "weighted_f1", "missing_rate"),
    "multilabel": ("macro_f1",),
    "extractive_qa": ("exact_match", "f1"),
    "ner": ("f1", "precision", "recall"),
    "summarization": ("rouge1", "rouge2", "rougeL", "bertscore_f1"),
    "diagnosis": ("top1", "top3", "top5"),
}


def _fmt(v) -> str:
    if v is None:
        return "not computed"
    return f"{100 * v:.2f}"


def _interval(r: dict, metric: str) -> list[float] | None:
    return ((r.get("intervals") or {}).get("metrics") or {}).get(metric)


def _with_interval(r: dict, metric: str) -> str:
    """"71.00 [66.00, 76.00]": the score and its bootstrap interval, where there is one."""
    iv = _interval(r, metric)
    text = _fmt(r["metrics"].get(metric))
    return f"{text} [{_fmt(iv[0])}, {_fmt(iv[1])}]" if iv and r["metrics"].get(metric) is not None else text


def _interval_note(results: dict) -> list[str]:
    iv = next((r["intervals"] for r in results["tasks"].values()
               if (r.get("intervals") or {}).get("iterations")), None)
    if iv is None:
        return []
    return [f"Brackets: {100 * iv['confidence']:g}% intervals, {iv['method']} ({iv['iterations']} resamples, "
            f"seed {iv['seed']}; results.json \"intervals\", recomputable from predictions/ with "
            "`python -m mellama_jax.cli.eval_intervals DIR`).", ""]


def published_table(results: dict) -> list[str]:
    """Published figures beside the measured ones (tasks whose results.json entry has "published")."""
    rows, notes, model, source = [], [], None, None
    for r in results["tasks"].values():
        pub = r.get("published")
        if not pub:
            continue
        model, source = pub["model"], pub["source"]
        if pub.get("note"):
            notes.append(pub["note"])
        if pub["metrics"] and r["few_shot"].get("k"):
            notes.append(f"{r['display_name']}: measured {r['few_shot']['k']}-shot; the published figures are "
                         "zero-shot")
        for metric, value in pub["metrics"].items():
            measured, iv = r["metrics"].get(metric), _interval(r, metric)
            inside = ("no interval" if measured is None or not iv else
                      "yes" if iv[0] <= value <= iv[1] else "no")
            rows.append(f"| {r['display_name']} | {metric} | {_with_interval(r, metric)} | {_fmt(value)} "
                        f"| {inside} |")
    if model is None:
        return []
    lines = [f"## Published figures: `{model}`", "", f"Source: {source}. Percentages.", "",
             "| Task | Metric | Measured | Published | Published inside the interval |",
             "|---|---|---:|---:|---|", *rows, ""]
    return lines + [f"- {n}" for n in notes] + ([""] if notes else [])


def markdown(results: dict) -> str:
    lines = ["# Evaluation results", "",
             f"Checkpoint: `{results['checkpoint']['path']}` (sha256 `{results['checkpoint']['sha256'][:16]}`), "
             f"code `{(results['code'].get('commit') or 'unknown')[:12]}`"
             f"{' (dirty)' if results['code'].get('dirty') else ''}, seed {results['seed']}. "
             "Scores are percentages.", "",
             *_interval_note(results),
             "| Task | Protocol | N | Metric | Score | Other metrics |",
             "|---|---|---:|---|---:|---|"]
    for name, r in results["tasks"].items():
        cols = [c for c in _COLUMNS[r["family"]] if c in r["metrics"]]
        head = r.get("headline_metric") or cols[0]
        rest = [c for c in cols if c != head]
        other = ", ".join(f"{c} {_with_interval(r, c)}" for c in rest)
        if r.get("truncated_prompts"):
            other += f"; {r['truncated_prompts']} prompts truncated"
        lines.append(task_row(r, head, _with_interval(r, head), other))
    lines.append("")
    lines += published_table(results)
    return "\n".join(lines)


def task_row(r: dict, head: str, score: str, other: str) -> str:
    """One results.md row (task, protocol with few-shot k, N, headline metric, score, other metrics);
    shared with the lm-eval harness so both reports read alike."""
    proto = r["protocol"] + (f" ({r['few_shot']['k']}-shot)" if r["few_shot"].get("k") else "")
    return f"| {r['display_name']} | {proto} | {r['num_examples']} | {head} | {score} | {other} |"


def write_files(workdir: str, files: dict[str, str]) -> None:
    """Write each {name: text} into workdir atomically (temporary file + rename)."""
    for name, text in files.items():
        tmp = os.path.join(workdir, f".{name}.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, os.path.join(workdir, name))


def write_results(workdir: str, results: dict) -> None:
    """Atomically (write + rename) update results.json and results.md."""
    write_files(workdir, {"results.json": json.dumps(results, indent=2, sort_keys=True, ensure_ascii=False) + "\n",
                          "results.md": markdown(results)})
