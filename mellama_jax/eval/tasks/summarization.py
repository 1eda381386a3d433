"""Summarization: PubMed (article -> abstract) and MIMIC-CXR (findings -> impression)."""
from __future__ import annotations

import os

from mellama_jax.data.sources.report import describe_keys
from mellama_jax.eval.tasks.common import Example, FormatError, LoadReport, read_records, strict_report
from mellama_jax.eval.tasks.release import is_release_record

__all__ = ["load_pubmed_sum", "load_mimic_cxr"]


def _text(value, path, where, name) -> str:
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return " ".join(value)  # sentence lists (Me-LLaMA's MIMIC preprocessing joins them with spaces)
    if not isinstance(value, str):
        raise FormatError(path, where, f"{name} must be a string", "bad_value")
    return value


def load_pubmed_sum(path: str, report: LoadReport | None = None) -> list[Example]:
    """PubMed summarization: {article, abstract} (source corpus / HF ccdv export), {src, tgt}, or
    {text, answer[, query, id]} (Me-LLaMA release, where `text` is the article and `answer` the abstract)."""
    report = strict_report(report)
    out = []
    for where, rec in read_records(path, ("article", "abstract"), report=report):
        with report.record():
            for a, b in (("article", "abstract"), ("src", "tgt"), ("text", "answer")):
                if a in rec and b in rec:
                    article, abstract = rec[a], rec[b]
                    break
            else:
                missing = "abstract" if "article" in rec else ("answer" if "text" in rec else "article")
                raise FormatError(path, where, f"missing field {missing!r} (expected article+abstract, src+tgt or "
                                               f"text+answer; the record {describe_keys(rec, ('article', 'abstract', 'src', 'tgt', 'text', 'answer'))})", "missing_field")
            article, abstract = _text(article, path, where, "article"), _text(abstract, path, where, "abstract")
            ex_id = str(rec.get("id", rec.get("article_id", f"{os.path.basename(path)}:{where}")))
            out.append(Example(id=ex_id, inputs={"text": article}, reference=abstract, target_text=abstract,
                               meta={"query": rec.get("query")}))
    return out


def load_mimic_cxr(path: str, report: LoadReport | None = None) -> list[Example]:
    """MIMIC-CXR report pairs: findings, impression (strings or sentence lists)[, id/study_id]; or
    Me-LLaMA's query/answer set."""
    report = strict_report(report)
    out = []
    for where, rec in read_records(path, ("findings", "impression"), report=report):
        with report.record():
            if is_release_record(rec) and "findings" not in rec:
                from mellama_jax.eval.tasks.release import release_inputs

                findings, impression = release_inputs("mimiccxr", rec, path, where)["text"], rec["answer"]
            else:
                for name in ("findings", "impression"):
                    if rec.get(name) is None:
                        raise FormatError(path, where, f"missing field {name!r} (the record {describe_keys(rec, ('findings', 'impression'))})", "missing_field")
                findings, impression = rec["findings"], rec["impression"]
            findings = _text(findings, path, where, "findings")
            impression = _text(impression, path, where, "impression")
            ex_id = str(rec.get("id", rec.get("study_id", f"{os.path.basename(path)}:{where}")))
            out.append(Example(id=ex_id, inputs={"text": findings}, reference=impression, target_text=impression))
    return out
