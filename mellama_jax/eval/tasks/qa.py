"""Question-answering benchmarks: PubMedQA, MedQA (USMLE), MedMCQA and EmrQA.

Each loader reads the original release, the common TSV/JSON exports, Hugging Face `datasets`
exports (parquet / JSON lines with their column names) and Me-LLaMA's own query/answer test sets.
"""
from __future__ import annotations

import ast
import os
import re

from mellama_jax.data.sources.report import describe_value, label_repr
from mellama_jax.eval.tasks.common import (Example, FormatError, LoadReport, base_ext, first_of, looks_like_jsonl,
                                           read_json, read_records, read_text, require, strict_report)
from mellama_jax.eval.tasks.release import is_release_record, release_inputs, release_label

__all__ = ["load_pubmedqa", "load_medqa", "load_medmcqa", "load_emrqa", "PUBMEDQA_CHOICES"]

PUBMEDQA_CHOICES = ("yes", "no", "maybe")
_LETTERS = "ABCDEFGHIJ"


def _pubmedqa_example(pid: str, question: str, contexts, label, path: str, where) -> Example:
    if isinstance(label, list):  # BigBio QA schema: answer is a list
        label = label[0] if label else ""
    shown = str(label).strip()  # as written: label_repr tells a label from a name by its case
    label = shown.lower()
    if label not in PUBMEDQA_CHOICES:
        raise FormatError(path, where, f"final_decision {label_repr(shown)} is not one of {PUBMEDQA_CHOICES}", "bad_label")
    if isinstance(contexts, str):
        try:
            contexts = ast.literal_eval(contexts)
        except (ValueError, SyntaxError):
            raise FormatError(path, where, "CONTEXTS is not a Python list literal of strings", "bad_value") from None
    if not isinstance(contexts, list) or not all(isinstance(c, str) for c in contexts):
        raise FormatError(path, where, "CONTEXTS must be a list of strings", "bad_value")
    return Example(id=str(pid), inputs={"question": str(question), "context": " ".join(contexts),
                                        "context_lines": "\n".join(contexts)},
                   reference=label, choices=PUBMEDQA_CHOICES, target_text=label)


def _pubmedqa_record(rec: dict, path: str, where, fallback_id: str) -> Example:
    pid = str(first_of(rec, ("pmid", "pubid", "PMID", "id", "document_id"), path, where)
              if any(rec.get(k) is not None for k in ("pmid", "pubid", "PMID", "id", "document_id")) else fallback_id)
    if is_release_record(rec):
        f = release_inputs("pubmedqa", rec, path, where)
        return _pubmedqa_example(pid, f["question"], f["context_lines"].split("\n"),
                                 release_label(rec, path, where), path, where)
    question = first_of(rec, ("QUESTION", "question"), path, where)
    ctx = first_of(rec, ("CONTEXTS", "context", "contexts"), path, where, "CONTEXTS")
    if isinstance(ctx, dict):  # qiaojin/PubMedQA: context {contexts, labels, meshes}
        ctx = ctx.get("contexts")
    elif rec.get("CONTEXTS") is None and isinstance(ctx, str):
        ctx = [ctx]  # BigBio QA schema: `context` is one string (CONTEXTS is always a list literal)
    label = first_of(rec, ("final_decision", "answer"), path, where, "final_decision")
    return _pubmedqa_example(pid, question, ctx, label, path, where)


def load_pubmedqa(path: str, report: LoadReport | None = None) -> list[Example]:
    """PubMedQA: the flat TSV (CONTEXTS as a Python-list string; pandas-quoted or raw), the original
    ori_pqal.json (PMID -> record), HF exports (pubid/question/context{contexts}/final_decision, or
    BigBio's question/context/answer) or Me-LLaMA's query/answer set."""
    report = strict_report(report)
    out = []
    if base_ext(path) == "json":
        data = read_json(path) if not _jsonl_named_json(path) else None
        if isinstance(data, dict) and data and all(isinstance(v, dict) for v in data.values()):
            report.note("format", "ori_pqal.json")
            for pid, rec in data.items():
                where = f"record {pid}"
                with report.record():
                    require(rec, ("QUESTION", "CONTEXTS", "final_decision"), path, where)
                    out.append(_pubmedqa_example(pid, rec["QUESTION"], rec["CONTEXTS"], rec["final_decision"],
                                                 path, where))
            return out
    cols = ("QUESTION", "CONTEXTS", "final_decision")
    for where, rec in read_records(path, cols, report=report):
        with report.record():
            out.append(_pubmedqa_record(rec, path, where, f"{os.path.basename(path)}:{where}"))
    return out


def _jsonl_named_json(path: str) -> bool:
    return looks_like_jsonl(read_text(path))


def _options_text(options: list[tuple[str, str]]) -> str:
    return "\n".join(f"{k}. {v}" for k, v in options)


def _choice_example(ex_id: str, question: str, options: list[tuple[str, str]], gold_letter: str, path, where,
                    meta=None) -> Example:
    keys = [k for k, _ in options]
    if gold_letter not in keys:
        raise FormatError(path, where, f"answer {label_repr(gold_letter)} is not an option key "
                                       f"[{', '.join(label_repr(k) for k in keys)}]", "bad_label")
    gold = dict(options)[gold_letter]
    return Example(id=ex_id, inputs={"question": str(question), "options": _options_text(options)},
                   reference=gold, choices=tuple(v for _, v in options), target_text=gold,
                   meta={"option_letters": tuple(keys), **(meta or {})})


def _options_from_text(text: str, path, where) -> list[tuple[str, str]]:
    opts = re.findall(r"^([A-J])\. (.*)$", text, flags=re.M)
    if len(opts) < 2:
        raise FormatError(path, where, "could not read the 'A. ...' option lines of the query", "query_mismatch")
    return opts


def _release_choice(task: str, rec: dict, path, where, ex_id: str) -> Example:
    f = release_inputs(task, rec, path, where)
    options = _options_from_text(f["options"], path, where)
    return _choice_example(ex_id, f["question"], options, str(release_label(rec, path, where)).strip(), path, where)


def load_medqa(path: str, report: LoadReport | None = None) -> list[Example]:
    """MedQA-USMLE: question, options ({A..E} dict, or [{key, value}] in BigBio/HF exports), answer_idx
    (letter) or answer (text); or Me-LLaMA's query/answer/choices/gold set (answer = option letter)."""
    report = strict_report(report)
    out = []
    for where, rec in read_records(path, ("question", "options"), report=report):
        with report.record():
            ex_id = str(rec.get("id", f"{os.path.basename(path)}:{where}"))
            if is_release_record(rec):
                out.append(_release_choice("medqa", rec, path, where, ex_id))
                continue
            require(rec, ("question", "options"), path, where)
            opts = rec["options"]
            if isinstance(opts, str):  # a CSV/TSV export keeps the dict as its repr
                try:
                    opts = ast.literal_eval(opts)
                except (ValueError, SyntaxError):
                    raise FormatError(path, where, "options is not a dict literal", "bad_value") from None
            if isinstance(opts, list):  # [{"key": "A", "value": ...}]
                try:
                    opts = {o["key"]: o["value"] for o in opts}
                except (TypeError, KeyError):
                    raise FormatError(path, where, "options list must hold {key, value} objects", "bad_value") from None
            if not isinstance(opts, dict):
                raise FormatError(path, where, "options must map letters to option texts", "bad_value")
            opts = {k: v for k, v in opts.items() if v is not None}  # parquet structs pad missing keys
            if len(opts) < 2:
                raise FormatError(path, where, "options must map letters to option texts", "bad_value")
            options = sorted((str(k), str(v).strip()) for k, v in opts.items())
            if rec.get("answer_idx") is not None:
                letter = str(rec["answer_idx"]).strip()
            elif rec.get("answer") is not None:
                gold = str(rec["answer"]).strip()
                letters = [k for k, v in options if v == gold]
                if not letters:
                    raise FormatError(path, where, "answer is not one of the options", "bad_label")
                letter = letters[0]
            else:
                raise FormatError(path, where, "missing field 'answer_idx' (or 'answer')", "missing_field")
            out.append(_choice_example(ex_id, rec["question"], options, letter, path, where))
    return out


def load_medmcqa(path: str, cop_base: str = "auto", report: LoadReport | None = None) -> list[Example]:
    """MedMCQA: question, opa..opd, cop (1-4 in the original release, 0-3 on the HF hub); or Me-LLaMA's
    query/answer/choices/gold set.

    cop_base "auto" decides per file: a 0 means 0-based, a 4 means 1-based; a file with neither is
    ambiguous and must be told (config.medmcqa_cop_base = "0" or "1").
    """
    report = strict_report(report)
    rows, out = [], []
    for idx, (where, rec) in enumerate(read_records(path, ("question", "opa", "opb", "opc", "opd", "cop"),
                                                    report=report)):
        with report.record():
            ex_id = str(rec.get("id", f"{os.path.basename(path)}:{where}"))
            if is_release_record(rec):
                out.append((idx, _release_choice("medmcqa", rec, path, where, ex_id)))
                continue
            require(rec, ("question", "opa", "opb", "opc", "opd", "cop"), path, where)
            try:
                cop = int(rec["cop"])
            except (TypeError, ValueError):
                raise FormatError(path, where, f"cop ({describe_value(rec['cop'])}) is not an integer", "bad_label") from None
            if not 0 <= cop <= 4:
                shown = cop if -99 <= cop <= 99 else f"(an integer of {len(str(abs(cop)))} digits)"  # not an MRN
                raise FormatError(path, where, f"cop {shown} outside 0..4", "bad_label")
            rows.append((idx, where, rec, cop, ex_id))
    if rows:
        if cop_base == "auto":
            cops = {c for _, _, _, c, _ in rows}
            if 0 in cops and 4 in cops:
                raise FormatError(path, None, "cop values span 0..4: cannot be both 0- and 1-based")
            if 0 in cops:
                base = 0
            elif 4 in cops:
                base = 1
            else:
                raise FormatError(path, None, "cop values are all in 1..3, so the base is ambiguous; set "
                                              "config.medmcqa_cop_base to '0' or '1'")
        else:
            base = int(cop_base)
        report.note("cop_base", base)
        for idx, where, rec, cop, ex_id in rows:
            with report.record():
                options = [(k, str(rec[f"op{k.lower()}"]).strip()) for k in "ABCD"]
                i = cop - base
                if not 0 <= i < 4:
                    raise FormatError(path, where, f"cop {cop} invalid for {base}-based answers", "bad_label")
                out.append((idx, _choice_example(ex_id, rec["question"], options, "ABCD"[i], path, where,
                                                   {"subject_name": rec.get("subject_name")})))
    return [ex for _, ex in sorted(out, key=lambda t: t[0])]


def _emrqa_example(qa: dict, context: str, path: str, where, fallback_id: str) -> Example:
    require(qa, ("question", "answers"), path, where)
    answers = qa["answers"]
    if isinstance(answers, dict) and isinstance(answers.get("text"), list):  # HF SQuAD columns
        answers = [{"text": t} for t in answers["text"]]
    if not isinstance(answers, list) or not answers:
        raise FormatError(path, where, "answers must be a non-empty list of {text, answer_start}", "bad_value")
    texts = []
    for a in answers:
        if isinstance(a, str):
            texts.append(a)
            continue
        if not isinstance(a, dict) or "text" not in a:
            raise FormatError(path, where, "missing field 'text' in an answers entry", "missing_field")
        texts.append(str(a["text"]))
    return Example(id=str(qa.get("id", fallback_id)), inputs={"context": context, "question": qa["question"]},
                   reference=texts, target_text=texts[0])


def load_emrqa(path: str, report: LoadReport | None = None) -> list[Example]:
    """EmrQA in SQuAD form ({"data": [{"paragraphs": [{"context", "qas": [...]}]}]}), flat records of
    {context, question, answers} (JSON lines / HF exports, answers as a list or SQuAD's {text: [...]}),
    or Me-LLaMA's query/answer set."""
    report = strict_report(report)
    out = []
    if base_ext(path) == "json" and not _jsonl_named_json(path):
        data = read_json(path)
        if isinstance(data, dict) and isinstance(data.get("data"), list) and data["data"] \
                and isinstance(data["data"][0], dict) and "paragraphs" in data["data"][0]:
            report.note("format", "squad json")
            for di, doc in enumerate(data["data"]):
                with report.record():
                    require(doc, ("paragraphs",), path, f"data[{di}]")
                for pi, para in enumerate(doc.get("paragraphs") or []):
                    where = f"data[{di}].paragraphs[{pi}]"
                    with report.record():
                        require(para, ("context", "qas"), path, where)
                    for qi, qa in enumerate(para.get("qas") or []):
                        with report.record():
                            out.append(_emrqa_example(qa, para["context"], path, f"{where}.qas[{qi}]",
                                                      f"{di}-{pi}-{qi}"))
            return out
        if isinstance(data, dict) and "data" not in data and "context" not in data:
            raise FormatError(path, None, "missing field 'data' (SQuAD-style JSON: {\"data\": [{\"paragraphs\": ...}]})")
    for where, rec in read_records(path, ("context", "question", "answers"), report=report):
        with report.record():
            fallback = f"{os.path.basename(path)}:{where}"
            if is_release_record(rec):
                f = release_inputs("emrqa", rec, path, where)
                ans = rec["answer"] if isinstance(rec["answer"], list) else [str(rec["answer"])]
                out.append(_emrqa_example({"id": rec.get("id", fallback), "question": f["question"], "answers": ans},
                                          f["context"], path, where, fallback))
                continue
            require(rec, ("context", "question", "answers"), path, where)
            out.append(_emrqa_example(rec, rec["context"], path, where, fallback))
    return out
