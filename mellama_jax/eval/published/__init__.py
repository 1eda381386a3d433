"""Published figures carried as data (Me-LLaMA's zero-shot Table 3), matched to our tasks and metrics,
for results.md to show beside the measured ones (``--config.published.model=COLUMN``)."""
from __future__ import annotations

import csv
import functools
import os

__all__ = ["CITATION", "TABLE", "DATASET_TASK", "METRIC_NAMES", "models", "check_model", "check_config",
           "configured_model", "figures", "task_block"]

TABLE = "me_llama_zero_shot_table3"
_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), f"{TABLE}.csv")
CITATION = ("Xie et al., \"Medical foundation large language models for comprehensive text analysis and beyond\", "
            "npj Digital Medicine 2025, Table 3 (zero-shot); arXiv:2402.12749")

# The table's dataset names -> our task names.
DATASET_TASK = {"PubMedQA": "pubmedqa", "MedQA": "medqa", "MedMCQA": "medmcqa", "EmrQA": "emrqa", "i2b2": "i2b2",
                "DDI": "ddi", "HoC": "hoc", "MTsample": "mtsamples", "PubMed": "pubmedsum",
                "MIMIC-CXR": "mimiccxr", "BioNLI": "bionli", "MedNLI": "mednli"}
# (task, the table's metric) -> our metric name; see README.md beside this file for why.
METRIC_NAMES = {
    **{(t, "acc"): "accuracy" for t in ("pubmedqa", "medqa", "medmcqa")},
    **{(t, "macro_f1"): "macro_f1" for t in ("pubmedqa", "medqa", "medmcqa", "ddi", "hoc", "mtsamples", "bionli",
                                             "mednli")},
    ("emrqa", "acc"): "mellama_exact_match", ("emrqa", "f1"): "mellama_f1",
    ("i2b2", "macro_f1"): "f1",
    **{(t, "rouge_l"): "rougeL" for t in ("pubmedsum", "mimiccxr")},
    **{(t, "bertscore"): "bertscore_f1" for t in ("pubmedsum", "mimiccxr")},
}
NOTES = {"emrqa": "EmrQA: compared with mellama_exact_match / mellama_f1 (Me-LLaMA's answer normalisation)",
         "i2b2": "i2b2: the table calls its figure macro-F1; ours is seqeval's entity-level F1 (approximate match)"}


@functools.lru_cache(maxsize=1)
def _table() -> tuple[tuple[str, ...], dict[str, dict[str, dict[str, float]]]]:
    """(model columns, {task: {our metric: {column: value}}})."""
    with open(_PATH, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    cols = tuple(k for k in rows[0] if k not in ("dataset", "metric"))
    out: dict[str, dict[str, dict[str, float]]] = {}
    for row in rows:
        task = DATASET_TASK[row["dataset"]]
        metric = METRIC_NAMES[(task, row["metric"])]
        out.setdefault(task, {})[metric] = {c: float(row[c]) for c in cols}
    return cols, out


def models() -> tuple[str, ...]:
    """The table's model columns."""
    return _table()[0]


def check_model(name: str) -> None:
    if name and name not in models():
        raise ValueError(f"config.published.model={name!r}: not a column of {TABLE} (known: {', '.join(models())})")


def configured_model(config) -> str:
    """config.published.model ("" when unset or absent)."""
    sub = config.get("published")
    return (sub.get("model") or "") if sub is not None else ""


def check_config(config) -> None:
    """Fails on an unknown config.published.model, listing the known columns."""
    check_model(configured_model(config))


def figures(task: str, model: str) -> dict[str, float]:
    """{our metric: published fraction} of a task for one model column ({} if the task is not in the table)."""
    check_model(model)
    return {m: v[model] for m, v in _table()[1].get(task, {}).items()}


def task_block(task: str, config) -> dict:
    """{"published": {...}} for a task's results.json entry when config.published.model is set, else {}."""
    model = configured_model(config)
    if not model:
        return {}
    found = figures(task, model)
    block = {"table": TABLE, "model": model, "source": CITATION, "metrics": found}
    if not found:
        block["note"] = f"{task} is not in the table"
    elif task in NOTES:
        block["note"] = NOTES[task]
    return {"published": block}
