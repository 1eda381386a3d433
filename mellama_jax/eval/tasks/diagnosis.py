"""Complex clinical case diagnosis: records of {case, diagnosis[, synonyms][, id]} (JSON lines, JSON,
parquet)."""
from __future__ import annotations

import os

from mellama_jax.eval.tasks.common import Example, FormatError, LoadReport, read_records, require, strict_report

__all__ = ["load_cases"]


def load_cases(path: str, report: LoadReport | None = None) -> list[Example]:
    report = strict_report(report)
    out = []
    for where, rec in read_records(path, ("case", "diagnosis"), report=report):
        with report.record():
            require(rec, ("case", "diagnosis"), path, where)
            syn = rec.get("synonyms") or []
            if isinstance(syn, str):
                syn = [s for s in syn.split(";") if s.strip()]
            if not isinstance(syn, list) or not all(isinstance(s, str) for s in syn):
                raise FormatError(path, where, "synonyms must be a list of strings", "bad_value")
            ex_id = str(rec.get("id", f"{os.path.basename(path)}:{where}"))
            out.append(Example(id=ex_id, inputs={"case": rec["case"]},
                               reference={"diagnosis": str(rec["diagnosis"]), "synonyms": list(syn)},
                               target_text=f"1. {rec['diagnosis']}"))
    return out
