"""Benchmark contamination check: word n-gram overlap between training text and benchmark test sets.

The library takes texts: `build_index({benchmark: [texts of example i]}, n)`, `scan_documents` over
one source's documents, and `run(benchmarks, documents, out_dir)` for the reports. Reading benchmarks
through the evaluation harness's loaders and instruction records through the SFT readers is the
command's job: `python -m mellama_jax.cli.decontaminate`.

Texts are normalised to lower-case word tokens (`\\w+`), so whitespace, punctuation and case changes
do not hide an overlap; a training document is contaminated by a benchmark when they share at least
`min_matches` n-grams (n = 13 by default, as in GPT-3's and Llama-2's contamination studies).

A scan that did not read all of a source is not reported as a result: a source with no documents,
or one whose file broke off (a cut-short or corrupt gzip) unless its report allows truncation, raises
IncompleteScan naming the source and file, before anything is written. Bad records that were
skipped, and allowed truncations (file, line, share unread), are recorded per source in the report.

Outputs (in out_dir): decontamination.json and .md (per benchmark: examples in the file, examples too
short for one n-gram, examples touched, documents touched per source, matched n-grams; per source:
documents, contaminated, bad records by reason, truncated files), and with
`write_exclude` one `exclude/<source>.txt` of contaminated document ids per source. Setting
`--config.data.sources.<source>.exclude_ids=<out>/exclude/<source>.txt` then drops those documents:
the id list is part of the token-cache key, so the tokenized store is rebuilt without them.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import time
from collections.abc import Mapping
from typing import Any, Iterable

import numpy as np

from mellama_jax import fs
from mellama_jax.data.sources.report import BadInputReport, DataError

__all__ = ["normalized_words", "ngram_hashes", "BenchmarkIndex", "build_index", "document_text",
           "scan_documents", "IncompleteScan", "check_complete", "run"]

_WORD = re.compile(r"\w+")
_MUL = np.uint64(0x100000001B3)  # FNV-1a 64-bit prime: the polynomial base of the n-gram hash


def normalized_words(text: str) -> list[str]:
    """Lower-case word tokens: whitespace, punctuation and case carry no weight in the match."""
    return _WORD.findall(text.lower())


class _WordHasher:
    """64-bit word hashes (blake2b, stable across processes), memoised: corpora repeat words."""

    def __init__(self) -> None:
        self._cache: dict[str, int] = {}

    def __call__(self, words: list[str]) -> np.ndarray:
        cache = self._cache
        out = np.empty(len(words), np.uint64)
        for i, w in enumerate(words):
            h = cache.get(w)
            if h is None:
                h = int.from_bytes(hashlib.blake2b(w.encode("utf-8"), digest_size=8).digest(), "little")
                if len(cache) < 5_000_000:
                    cache[w] = h
            out[i] = h
        return out


def ngram_hashes(word_hashes: np.ndarray, n: int) -> np.ndarray:
    """Hash of every window of n consecutive words (a polynomial over the word hashes, mod 2^64)."""
    m = len(word_hashes) - n + 1
    if m <= 0:
        return np.zeros(0, np.uint64)
    with np.errstate(over="ignore"):
        acc = word_hashes[:m].copy()
        for j in range(1, n):
            acc = acc * _MUL + word_hashes[j:j + m]
    return acc


# --------------------------------------------------------------------------------------------------
# Benchmarks
# --------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class BenchmarkIndex:
    """Sorted n-gram hashes of all benchmarks, with the (benchmark, example) each came from."""

    n: int
    names: list[str]
    hashes: np.ndarray      # uint64, sorted
    bench: np.ndarray       # int32, benchmark index of each hash
    example: np.ndarray     # int64, example index within its benchmark
    num_examples: dict[str, int]
    too_short: dict[str, int]  # examples with no text of n or more words

    def lookup(self, grams: np.ndarray) -> np.ndarray:
        """Positions in the index of every gram that occurs in it."""
        if len(grams) == 0 or len(self.hashes) == 0:
            return np.zeros(0, np.int64)
        lo = np.searchsorted(self.hashes, grams, side="left")
        hi = np.searchsorted(self.hashes, grams, side="right")
        hit = hi > lo
        if not hit.any():
            return np.zeros(0, np.int64)
        return np.concatenate([np.arange(a, b) for a, b in zip(lo[hit], hi[hit])])


def build_index(benchmarks: dict[str, list[list[str]]], n: int) -> BenchmarkIndex:
    hasher = _WordHasher()
    hs, bs, es = [], [], []
    names = list(benchmarks)
    too_short = {}
    for b, name in enumerate(names):
        short = 0
        for e, texts in enumerate(benchmarks[name]):
            grams = [ngram_hashes(hasher(normalized_words(t)), n) for t in texts]
            grams = np.unique(np.concatenate(grams)) if grams else np.zeros(0, np.uint64)
            if len(grams) == 0:
                short += 1
                continue
            hs.append(grams)
            bs.append(np.full(len(grams), b, np.int32))
            es.append(np.full(len(grams), e, np.int64))
        too_short[name] = short
    if hs:
        h, bi, ei = np.concatenate(hs), np.concatenate(bs), np.concatenate(es)
        order = np.argsort(h, kind="stable")
        h, bi, ei = h[order], bi[order], ei[order]
    else:
        h, bi, ei = np.zeros(0, np.uint64), np.zeros(0, np.int32), np.zeros(0, np.int64)
    return BenchmarkIndex(n, names, h, bi, ei, {k: len(v) for k, v in benchmarks.items()}, too_short)


# --------------------------------------------------------------------------------------------------
# Training documents
# --------------------------------------------------------------------------------------------------
def document_text(doc: dict) -> str:
    """A document's text; instruction records are checked on all their fields."""
    if "text" in doc:
        return doc["text"]
    return "\n".join(str(doc[k]) for k in ("instruction", "input", "output") if doc.get(k))


def scan_documents(source: str, docs: Iterable[dict], index: BenchmarkIndex, min_matches: int = 1) -> dict:
    """Contaminated documents of one source: {"documents", "contaminated_ids", "per_benchmark":
    {name: {"documents", "examples" (set), "ngrams"}}}; texts are never stored."""
    hasher = _WordHasher()
    out = {"documents": 0, "contaminated_ids": [], "per_benchmark": {}}
    for doc in docs:
        out["documents"] += 1
        grams = np.unique(ngram_hashes(hasher(normalized_words(document_text(doc))), index.n))
        pos = index.lookup(grams)
        if len(pos) == 0:
            continue
        matched_per_bench: dict[int, int] = {}
        examples_per_bench: dict[int, set] = {}
        for b, e, h in zip(index.bench[pos].tolist(), index.example[pos].tolist(), index.hashes[pos].tolist()):
            examples_per_bench.setdefault(b, set()).add(e)
            matched_per_bench.setdefault(b, set()).add(h)
        hit = False
        for b, hashes in matched_per_bench.items():
            if len(hashes) < min_matches:
                continue
            hit = True
            rec = out["per_benchmark"].setdefault(index.names[b], {"documents": 0, "examples": set(), "ngrams": 0})
            rec["documents"] += 1
            rec["examples"] |= examples_per_bench[b]
            rec["ngrams"] += len(hashes)
        if hit:
            out["contaminated_ids"].append(str(doc["id"]))
    return out


class IncompleteScan(DataError):
    """A source was not read in full (or not at all): its counts would understate contamination."""


def check_complete(source: str, documents: int, report: BadInputReport | None) -> dict:
    """The input accounting of one scanned source for decontamination.json ({"bad", "bad_records",
    "truncated"}); raises IncompleteScan when nothing was read or a file broke off unallowed."""
    bad = dict(report.bad) if report is not None else {}
    truncated = list(report.truncations) if report is not None else []
    if truncated and not report.allow_truncated:
        raise IncompleteScan(
            f"source {source!r}: scan incomplete, {len(truncated)} file(s) could not be read to the end: "
            f"{report.truncation_summary()}; an exclude list from it would miss the unread documents, so "
            f"nothing was written. Repair the file, or allow it (--allow_truncated {source}, or "
            f"data.sources.{source}.allow_truncated=True) to scan what was read")
    if documents == 0:
        why = f"bad records: {bad}; first problems: {report.examples[:3]}" if bad else "the files hold no records"
        raise IncompleteScan(f"source {source!r}: no documents were read ({why}); a scan of nothing would "
                             "report no contamination, so nothing was written")
    return {"bad": bad, "bad_records": sum(bad.values()), "truncated": truncated}


def _report_md(report: dict) -> str:
    lines = [f"# Benchmark contamination ({report['n']}-gram overlap, >= {report['min_matches']} shared)", "",
             "| benchmark | examples | too short | examples touched | " +
             " | ".join(f"{s} docs touched" for s in report["sources"]) + " |",
             "|---|---|---|---|" + "---|" * len(report["sources"])]
    for name, b in report["benchmarks"].items():
        docs = " | ".join(str(b["documents_touched"].get(s, 0)) for s in report["sources"])
        lines.append(f"| {name} | {b['examples']} | {b['too_short']} | {b['examples_touched']} | {docs} |")
    if report["skipped"]:
        lines += ["", "Not checked: " + ", ".join(f"{k} ({v})" for k, v in report["skipped"].items())]
    lines += ["", "| source | documents | contaminated | bad records | truncated files |", "|---|---|---|---|---|"]
    for s, v in report["sources"].items():
        lines.append(f"| {s} | {v['documents']} | {v['contaminated']} | {v.get('bad_records', 0)} | "
                     f"{len(v.get('truncated', []))} |")
    truncated = [(s, t) for s, v in report["sources"].items() for t in v.get("truncated", [])]
    if truncated:
        lines += ["", "Scanned only in part (allow_truncated): " + "; ".join(
            f"{s}: {t['path']} from line {t['line']} ({t['unread_fraction']:.1%} of the file unread)"
            for s, t in truncated)]
    return "\n".join(lines) + "\n"


def run(benchmarks: dict[str, list[list[str]]], documents: Mapping[str, Iterable[dict]], out_dir: str, *,
        n: int = 13, min_matches: int = 1, write_exclude: bool = False, skipped: dict | None = None,
        benchmarks_dir: str = "", reports: Mapping[str, BadInputReport] | None = None,
        final_dir: str | None = None) -> dict:
    """Check every source's documents ({source: iterable of {"id", "text" | instruction fields}})
    against the benchmark texts ({benchmark: [texts of example i]}); write the reports to out_dir.
    `reports` ({source: the BadInputReport its reader fills}) make the scan's completeness checked
    and recorded (check_complete); `skipped` ({benchmark: why}) and `benchmarks_dir` are recorded.
    `final_dir`: where out_dir will end up (a staged output), for the paths the report names."""
    if n < 1:
        raise ValueError(f"--n={n}: must be >= 1")
    t0 = time.perf_counter()
    if not benchmarks:
        raise FileNotFoundError(f"--benchmarks {benchmarks_dir}: no benchmark test file found (looked for "
                                "the files configs/eval.py finds under --config.data_dir)")
    index = build_index(benchmarks, n)
    report: dict[str, Any] = {"n": n, "min_matches": min_matches,
                              "benchmarks_dir": (benchmarks_dir if fs.is_url(benchmarks_dir) else os.path.abspath(benchmarks_dir))
                              if benchmarks_dir else "",
                              "skipped": dict(skipped or {}), "sources": {}, "benchmarks": {}}
    scans = {}
    for name, docs in documents.items():
        scans[name] = scan_documents(name, docs, index, min_matches)
        inputs = check_complete(name, scans[name]["documents"], (reports or {}).get(name))
        report["sources"][name] = {"documents": scans[name]["documents"],
                                   "contaminated": len(scans[name]["contaminated_ids"]), **inputs}
    for b in index.names:
        touched: set = set()
        docs = {}
        for name, scan in scans.items():
            rec = scan["per_benchmark"].get(b)
            if rec:
                touched |= rec["examples"]
                docs[name] = rec["documents"]
        report["benchmarks"][b] = {"examples": index.num_examples[b], "too_short": index.too_short[b],
                                   "examples_touched": len(touched), "touched_example_indices": sorted(touched),
                                   "documents_touched": docs}
    os.makedirs(out_dir, exist_ok=True)
    if write_exclude:
        ex_dir = os.path.join(out_dir, "exclude")
        os.makedirs(ex_dir, exist_ok=True)
        report["exclude_files"] = {}
        for name, scan in scans.items():
            path = os.path.join(ex_dir, f"{name}.txt")
            with open(path + ".tmp", "w", encoding="utf-8") as f:
                f.write("".join(f"{i}\n" for i in sorted(set(scan["contaminated_ids"]))))
            os.replace(path + ".tmp", path)
            report["exclude_files"][name] = os.path.join(final_dir or out_dir, "exclude", f"{name}.txt")
    report["seconds"] = round(time.perf_counter() - t0, 3)
    with open(os.path.join(out_dir, "decontamination.json"), "w", encoding="utf-8") as f:
        json.dump(report, f, indent=1)
    with open(os.path.join(out_dir, "decontamination.md"), "w", encoding="utf-8") as f:
        f.write(_report_md(report))
    return report
