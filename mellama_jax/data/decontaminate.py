"""Benchmark contamination check: word n-gram overlap between training text and benchmark test sets.

    python -m mellama_jax.data.decontaminate --sources configs/pretrain.py:demo \
        --benchmarks /data/benchmarks --n 13 --out runs/decontam [--write_exclude]

Every benchmark the evaluation harness can load (`mellama_jax.eval.tasks`, found under --benchmarks
exactly as `configs/eval.py --config.data_dir` finds it) is read through the harness's own loaders;
every string of an example (question, context, choices, reference) is a separate text. Texts are
normalised to lower-case word tokens (`\\w+`), so whitespace, punctuation and case changes do not hide
an overlap; a training document is contaminated by a benchmark when they share at least
--min_matches n-grams (n = 13 by default, as in GPT-3's and Llama-2's contamination studies).

Outputs (in --out): decontamination.json and .md (per benchmark: examples in the file, examples too
short for one n-gram, examples touched, documents touched per source, matched n-grams), and with
--write_exclude one `exclude/<source>.txt` of contaminated document ids per source. Setting
`--config.data.sources.<source>.exclude_ids=<out>/exclude/<source>.txt` then drops those documents:
the id list is part of the token-cache key, so the tokenized store is rebuilt without them.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import re
import sys
import time
from collections.abc import Mapping
from typing import Any, Iterable, Iterator

import numpy as np

__all__ = ["normalized_words", "ngram_hashes", "BenchmarkIndex", "build_index", "scan_documents",
           "benchmark_texts", "main"]

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
def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, (list, tuple)):
        if value and all(isinstance(v, str) for v in value) and all(len(v.split()) <= 1 for v in value):
            yield " ".join(value)  # a token list (NER) is one text, not one text per token
        else:
            for v in value:
                yield from _strings(v)


def example_texts(example: Any) -> list[str]:
    """Every text of a benchmark example: its inputs, choices, reference and target text."""
    parts = list(_strings(dict(example.inputs)))
    parts += list(_strings(list(example.choices)))
    parts += list(_strings(example.reference))
    if example.target_text:
        parts.append(example.target_text)
    return [p for p in parts if p.strip()]


def _eval_config() -> Any:
    """configs/eval.py's defaults: the loaders read files with the harness's own settings."""
    from ml_collections.config_flags.config_flags import ConfigFileFlagParser

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return ConfigFileFlagParser(name="config", lock_config=False).parse(os.path.join(root, "configs", "eval.py"))


def benchmark_texts(data_dir: str, tasks: Iterable[str] | None = None) -> tuple[dict[str, list[list[str]]], dict]:
    """({task: [texts of example i]}, {task: why skipped}) for every task (or the named ones) whose
    test file the evaluation harness finds under data_dir, read through its loaders."""
    from mellama_jax.eval.runner import load_task_file
    from mellama_jax.eval.tasks import TASKS, get_task, resolve_path

    eval_cfg = _eval_config()
    names = list(tasks) if tasks else list(TASKS)
    found, skipped = {}, {}
    for name in names:
        spec = get_task(name)
        try:
            path = resolve_path(spec, data_dir, None, "test")
        except FileNotFoundError:
            skipped[name] = "no test file under --benchmarks"
            continue
        examples, _ = load_task_file(spec, path, eval_cfg)
        found[name] = [example_texts(ex) for ex in examples]
    return found, skipped


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


def _instruction_documents(name: str, src: Any, report: Any) -> Iterator[dict]:
    """Records of an instruction-tuning source (configs/sft.py formats), each as one text of all its
    messages; unreadable records are counted, as the SFT pipeline counts them."""
    from mellama_jax.sft.data import RecordError, expand, iter_records, to_messages

    fmt = str(src.get("format", "auto"))
    for path in expand(name, src["paths"]):
        base = os.path.basename(path)
        for line, rec in iter_records(path):
            try:
                if isinstance(rec, RecordError):
                    raise rec
                messages = to_messages(rec, fmt)
            except RecordError as err:
                report.skip(err.reason, path, line)
                continue
            rid = rec.get("id") if isinstance(rec, dict) else None
            yield {"id": str(rid) if rid is not None else f"{base}:{line}",
                   "text": "\n".join(str(m.get("content", "")) for m in messages)}


def _load_sources(spec: str, sources_spec: str) -> tuple[Any, str]:
    """(config.data, task) of a config file (`path.py[:variant]`), with an optional sources spec applied."""
    from ml_collections.config_flags.config_flags import ConfigFileFlagParser

    from mellama_jax.data.config import apply_sources_spec, default_data_config

    task = "pretrain"
    if spec:
        config = ConfigFileFlagParser(name="config", lock_config=False).parse(spec)
        data, task = config.data, str(config.get("task", "pretrain"))
    else:
        data = default_data_config()
    if sources_spec:
        apply_sources_spec(data, sources_spec, task=task)
    return data, task


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
    lines += ["", "| source | documents | contaminated |", "|---|---|---|"]
    for s, v in report["sources"].items():
        lines.append(f"| {s} | {v['documents']} | {v['contaminated']} |")
    return "\n".join(lines) + "\n"


def run(sources_data: Any, benchmarks_dir: str, out_dir: str, *, n: int = 13, min_matches: int = 1,
        tasks: Iterable[str] | None = None, only_sources: Iterable[str] | None = None,
        write_exclude: bool = False, task: str = "pretrain") -> dict:
    """Check every source of `sources_data` (a config.data) against every benchmark; write reports."""
    from mellama_jax.data.sources.readers import iter_documents
    from mellama_jax.data.sources.report import BadInputReport

    if n < 1:
        raise ValueError(f"--n={n}: must be >= 1")
    t0 = time.perf_counter()
    texts, skipped = benchmark_texts(benchmarks_dir, tasks)
    if not texts:
        raise FileNotFoundError(f"--benchmarks {benchmarks_dir}: no benchmark test file found (looked for "
                                "the files configs/eval.py finds under --config.data_dir)")
    index = build_index(texts, n)
    names = list(only_sources) if only_sources else list(sources_data.sources.keys())
    report: dict[str, Any] = {"n": n, "min_matches": min_matches, "benchmarks_dir": os.path.abspath(benchmarks_dir),
                              "skipped": skipped, "sources": {}, "benchmarks": {}}
    scans = {}
    for name in names:
        if name not in sources_data.sources:
            raise ValueError(f"--only_sources: no source {name!r} (have {sorted(sources_data.sources.keys())})")
        src = sources_data.sources[name].to_dict()
        src["exclude_ids"] = ""  # check everything, including what an earlier run excluded
        docs = (_instruction_documents(name, src, BadInputReport(name)) if task == "sft"
                else iter_documents(name, src, BadInputReport(name)))
        scans[name] = scan_documents(name, docs, index, min_matches)
        report["sources"][name] = {"documents": scans[name]["documents"],
                                   "contaminated": len(scans[name]["contaminated_ids"])}
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
            report["exclude_files"][name] = path
    report["seconds"] = round(time.perf_counter() - t0, 3)
    with open(os.path.join(out_dir, "decontamination.json"), "w", encoding="utf-8") as f:
        json.dump(report, f, indent=1)
    with open(os.path.join(out_dir, "decontamination.md"), "w", encoding="utf-8") as f:
        f.write(_report_md(report))
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mellama_jax.data.decontaminate", description=__doc__.split("\n")[0])
    ap.add_argument("--sources", default="", help="experiment config whose data.sources are checked, "
                    "e.g. configs/pretrain.py:demo or configs/sft.py")
    ap.add_argument("--sources_spec", default="", help="data.sources_spec applied on top (or alone)")
    ap.add_argument("--only_sources", default="", help="comma-separated source names (default: all)")
    ap.add_argument("--benchmarks", required=True, help="benchmark directory (as configs/eval.py data_dir)")
    ap.add_argument("--tasks", default="", help="comma-separated benchmark names (default: every one found)")
    ap.add_argument("--n", type=int, default=13, help="n-gram length in words (default 13)")
    ap.add_argument("--min_matches", type=int, default=1, help="shared n-grams that make a document contaminated")
    ap.add_argument("--out", required=True, help="output directory for the reports (and exclude lists)")
    ap.add_argument("--write_exclude", action="store_true", help="write exclude/<source>.txt id lists")
    args = ap.parse_args(argv)
    if not args.sources and not args.sources_spec:
        ap.error("give --sources (a config file) and/or --sources_spec")
    try:
        data, task = _load_sources(args.sources, args.sources_spec)
        report = run(data, args.benchmarks, args.out, n=args.n, min_matches=args.min_matches, task=task,
                     tasks=[t for t in args.tasks.split(",") if t.strip()] or None,
                     only_sources=[s for s in args.only_sources.split(",") if s.strip()] or None,
                     write_exclude=args.write_exclude)
    except (ValueError, FileNotFoundError) as err:
        print(f"decontaminate: {err}", file=sys.stderr)
        return 2
    with open(os.path.join(args.out, "decontamination.md"), encoding="utf-8") as f:
        print(f.read())
    if task == "sft" and report.get("exclude_files"):
        print("instruction sources: the id lists name the records to remove from the instruction files "
              "(exclude_ids applies to pretraining sources)")
    else:
        for name, path in report.get("exclude_files", {}).items():
            print(f"--config.data.sources.{name}.exclude_ids={path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
