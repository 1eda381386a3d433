"""Natural language inference: BioNLI (premise/hypothesis/label) and MedNLI (sentence1/2, gold_label).

Both read JSON lines, JSON, parquet or TSV/CSV exports; BigBio's TE schema (premise, hypothesis,
label) for either; MedNLI also Me-LLaMA's query/answer set.
"""
from __future__ import annotations

import os

from mellama_jax.data.sources.report import label_repr
from mellama_jax.eval.tasks.common import (Example, FormatError, LoadReport, first_of, read_records,
                                           strict_report)
from mellama_jax.eval.tasks.release import is_release_record, release_inputs, release_label

__all__ = ["load_bionli", "load_mednli", "BIONLI_CHOICES", "MEDNLI_CHOICES"]

BIONLI_CHOICES = ("entailment", "contradiction")
MEDNLI_CHOICES = ("entailment", "contradiction", "neutral")


def _load(path, task, choices, report, label_map=None):
    report = strict_report(report)
    out = []
    for where, rec in read_records(path, ("premise", "hypothesis"), report=report):
        with report.record():
            if is_release_record(rec):
                f = release_inputs(task, rec, path, where)
                premise, hypothesis, raw = f["premise"], f["hypothesis"], release_label(rec, path, where)
            else:
                premise = first_of(rec, ("sentence1", "premise"), path, where)
                hypothesis = first_of(rec, ("sentence2", "hypothesis"), path, where)
                raw = first_of(rec, ("gold_label", "label"), path, where)
            label = str(raw).strip().lower()
            label = (label_map or {}).get(label, label)
            if label not in choices:
                raise FormatError(path, where, f"label {label_repr(raw)} is not one of {choices}", "bad_label")
            ex_id = str(rec.get("pairID", rec.get("id", f"{os.path.basename(path)}:{where}")))
            out.append(Example(id=ex_id, inputs={"premise": str(premise), "hypothesis": str(hypothesis)},
                               reference=label, choices=choices, target_text=label))
    return out


def load_bionli(path: str, report: LoadReport | None = None) -> list[Example]:
    # Some BioNLI exports use 0/1 (or "neg"/"pos"); 1/pos is entailment.
    return _load(path, "bionli", BIONLI_CHOICES, report,
                 {"1": "entailment", "0": "contradiction", "pos": "entailment", "neg": "contradiction"})


def load_mednli(path: str, report: LoadReport | None = None) -> list[Example]:
    return _load(path, "mednli", MEDNLI_CHOICES, report)
