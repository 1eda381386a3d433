"""The sweep table: one row per finished point, read back from what the point wrote (its
metrics.jsonl and, when benchmarks ran, eval/results.json), written as CSV and Markdown."""
from __future__ import annotations

import csv
import io
import json
import math
from typing import Any, Sequence

from mellama_jax import fs
from mellama_jax.train.metrics import read_metrics_lines

__all__ = ["read_metrics", "point_row", "is_finished", "write_table", "table_columns", "no_held_out"]


def read_metrics(workdir: str) -> list[dict]:
    """The point's metrics records, read by the trainer's own reader. A torn last line (what a
    kill -9 mid-write leaves; the trainer drops it when the point resumes) is left out; an
    unreadable line before the last is an error naming file:line."""
    path = fs.join(workdir, "metrics.jsonl")
    if not fs.isfile(path):
        return []
    lines = list(read_metrics_lines(path))
    out = []
    for i, (lineno, _, record) in enumerate(lines):
        if record is not None:
            out.append(record)
        elif i < len(lines) - 1:
            raise ValueError(f"{path}:{lineno}: not a complete metrics record, and not the last line (only a "
                             "run killed mid-write leaves one, at the end); repair or remove that line, or "
                             "remove the point's directory to rerun it")
    return out


def _final(records: list[dict], prefix: str, steps: int) -> dict:
    """The record at `steps` holding keys that start with `prefix` (the last one written)."""
    found = {}
    for r in records:
        if r.get("step") == steps and any(k.startswith(prefix) for k in r):
            found = r
    return found


def no_held_out(value: Any) -> bool:
    """An eval/<source>/loss that measured nothing: a source with no held-out examples logged 0.0
    (perplexity 1.0) before the trainer stopped reporting it, or NaN. A real cross-entropy is > 0,
    so such a column would read as the best source."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and (
        not math.isfinite(value) or value == 0.0)


def is_finished(workdir: str, steps: int, eval_tasks: Sequence[str]) -> bool:
    """Trained to `steps` with its final held-out evaluation logged (and benchmarks, if any)."""
    if not _final(read_metrics(workdir), "eval/", steps):
        return False
    if eval_tasks:
        results = fs.join(workdir, "eval", "results.json")
        if not fs.isfile(results):
            return False
        done = json.loads(fs.read_text(results)).get("tasks", {})
        return all(t in done for t in eval_tasks)
    return True


def point_row(name: str, grid: dict[str, Any], weights: dict[str, float], workdir: str, steps: int,
              eval_tasks: Sequence[str]) -> dict[str, Any]:
    """Everything the table shows for one point, each value copied from the point's own outputs."""
    records = read_metrics(workdir)
    ev = _final(records, "eval/", steps)
    train = _final(records, "loss", steps)
    total = sum(weights.values()) or 1.0
    row: dict[str, Any] = {"point": name, **grid}
    for s, w in weights.items():
        row[f"weight/{s}"] = w / total
    row["step"] = steps
    row["train_loss"] = train.get("loss")
    empty = {k.split("/")[1] for k in ev if k.startswith("eval/") and k.endswith("/loss") and no_held_out(ev[k])}
    for key in sorted(ev):
        if key.startswith("eval/") and key.split("/")[1] not in empty:
            row[key] = ev[key]
    for key in sorted(train):
        if key.startswith("data/") and key.endswith("/tokens"):
            row[key] = train[key]
    if eval_tasks:
        results = json.loads(fs.read_text(fs.join(workdir, "eval", "results.json")))
        for task in eval_tasks:
            res = results["tasks"][task]
            metric = res.get("headline_metric") or sorted(res["metrics"])[0]
            row[f"bench/{task}/{metric}"] = res["metrics"].get(metric)
    return row


def table_columns(rows: list[dict]) -> list[str]:
    cols: list[str] = []
    for r in rows:
        for k in r:
            if k not in cols:
                cols.append(k)
    return cols


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        if math.isfinite(v) and v == int(v) and abs(v) < 1e15:
            return str(int(v))
        return f"{v:.4f}"
    return str(v)


def write_table(rows: list[dict], csv_path: str, md_path: str) -> list[str]:
    """CSV with full-precision values (repr) and a Markdown table rounded for reading; each file
    appears whole (fs.write_text: a renamed temporary locally, one PUT in a bucket)."""
    cols = table_columns(rows)
    buf = io.StringIO(newline="")
    w = csv.writer(buf)
    w.writerow(cols)
    for r in rows:
        w.writerow(["" if r.get(c) is None else (repr(r[c]) if isinstance(r.get(c), float) else r[c])
                    for c in cols])
    fs.write_text(csv_path, buf.getvalue())
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |")
    fs.write_text(md_path, "\n".join(lines) + "\n")
    return cols
