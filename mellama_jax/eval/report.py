"""results.json (everything, sorted keys) and results.md (one row per benchmark, like the paper's table)."""
from __future__ import annotations

import json
import os

__all__ = ["write_results", "markdown"]

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


def markdown(results: dict) -> str:
    lines = ["# Evaluation results", "",
             f"Checkpoint: `{results['checkpoint']['path']}` (sha256 `{results['checkpoint']['sha256'][:16]}`), "
             f"code `{(results['code'].get('commit') or 'unknown')[:12]}`"
             f"{' (dirty)' if results['code'].get('dirty') else ''}, seed {results['seed']}. "
             "Scores are percentages.", "",
             "| Task | Protocol | N | Metric | Score | Other metrics |",
             "|---|---|---:|---|---:|---|"]
    for name, r in results["tasks"].items():
        cols = [c for c in _COLUMNS[r["family"]] if c in r["metrics"]]
        head = r.get("headline_metric") or cols[0]
        rest = [c for c in cols if c != head]
        other = ", ".join(f"{c} {_fmt(r['metrics'][c])}" for c in rest)
        if r.get("truncated_prompts"):
            other += f"; {r['truncated_prompts']} prompts truncated"
        lines.append(task_row(r, head, _fmt(r["metrics"][head]), other))
    lines.append("")
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
