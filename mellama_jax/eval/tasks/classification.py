"""Document classification: HoC (multi-label hallmarks of cancer) and MTSamples (specialties)."""
from __future__ import annotations

import os

from mellama_jax.data.sources.report import describe_keys, label_repr
from mellama_jax.eval.tasks.common import (Example, FormatError, LoadReport, first_of, read_records,
                                           strict_report)
from mellama_jax.eval.tasks.release import is_release_record, release_inputs

__all__ = ["load_hoc", "load_mtsamples", "HOC_CHOICES", "MTSAMPLES_LAYOUT"]

# The ten hallmarks, in the order Me-LLaMA's HoC task lists them.
HOC_CHOICES = (
    "sustaining proliferative signaling", "evading growth suppressors", "resisting cell death",
    "enabling replicative immortality", "inducing angiogenesis", "activating invasion and metastasis",
    "genomic instability and mutation", "tumor promoting inflammation", "cellular energetics",
    "avoiding immune destruction",
)
MTSAMPLES_LAYOUT = ("description", "medical_specialty", "sample_name", "transcription", "keywords")


def _hoc_labels(value, path, where) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        value = value.strip("\n").split(";")
    if not isinstance(value, list):
        raise FormatError(path, where, "labels must be a ';'-separated string or a list", "bad_value")
    raw = [str(x).strip() for x in value if str(x).strip()]
    labels = [x.lower() for x in raw]
    for lab, shown in zip(labels, raw):
        if lab not in HOC_CHOICES:  # shown as written: label_repr tells a label from a name by its case
            raise FormatError(path, where, f"label {label_repr(shown)} is not a hallmark of cancer {HOC_CHOICES}", "bad_label")
    return [c for c in HOC_CHOICES if c in labels]  # canonical order, no duplicates


def load_hoc(path: str, report: LoadReport | None = None) -> list[Example]:
    """HoC: pmid, text, labels (";"-separated hallmark names; empty = none) as TSV (pandas-quoted or raw),
    HF/BigBio exports (text, labels as a list; document_id/id), or Me-LLaMA's query/answer/gold set."""
    report = strict_report(report)
    out = []
    for where, row in read_records(path, ("text", "labels"), layouts=(("pmid", "text", "labels"),), report=report):
        with report.record():
            if is_release_record(row):
                text = release_inputs("hoc", row, path, where)["text"]
                labels = _hoc_labels(row["answer"], path, where)
            else:
                text = first_of(row, ("text", "sentence", "abstract"), path, where)
                if "labels" not in row and "label" not in row:
                    raise FormatError(path, where, f"missing field 'labels' (of ['labels', 'label'] the record {describe_keys(row, ('labels', 'label'))})", "missing_field")
                labels = _hoc_labels(row.get("labels", row.get("label")), path, where)
            ex_id = str(row.get("pmid") or row.get("document_id") or row.get("id") or f"{os.path.basename(path)}")
            out.append(Example(id=f"{ex_id}:{where}", inputs={"text": str(text)}, reference=labels,
                               choices=HOC_CHOICES, target_text="; ".join(labels) if labels else "none"))
    return out


def load_mtsamples(path: str, report: LoadReport | None = None) -> list[Example]:
    """MTSamples CSV (description, medical_specialty, sample_name, transcription, keywords; Kaggle's
    file has an unnamed index column; headerless files use that column order), HF exports, or
    Me-LLaMA's query/answer/choices/gold set.

    The answer choices are the specialties found in the file, sorted, so the choice list (and with it
    the parse) is a pure function of the file (the mellama-release prompt set replaces them with the
    release's 40 in its order); rows without a transcription are skipped as in the public release's
    usual cleaning and counted in results.json.
    """
    report = strict_report(report)
    rows = []
    for where, row in read_records(path, ("medical_specialty", "transcription"), layouts=(MTSAMPLES_LAYOUT,),
                                   report=report):
        with report.record():
            if is_release_record(row):
                text = release_inputs("mtsamples", row, path, where)["text"]
                spec = str(row["answer"]).strip()
            else:
                spec = str(first_of(row, ("medical_specialty", "label"), path, where)).strip()
                text = str(first_of(row, ("transcription", "text"), path, where)).strip()
            if not spec:
                raise FormatError(path, where, "empty field 'medical_specialty'", "missing_field")
            rows.append((where, row, spec, text))
    choices = tuple(sorted({spec for _, _, spec, _ in rows}))
    out = []
    for where, row, spec, text in rows:
        if not text:
            report.count("skipped_empty_transcription")
            continue
        ex_id = str(row.get("") or row.get("id") or f"{os.path.basename(path)}:{where}")
        out.append(Example(id=ex_id, inputs={"text": text}, reference=spec, choices=choices, target_text=spec))
    return out
