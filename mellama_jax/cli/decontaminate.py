"""Benchmark contamination check: word n-gram overlap between training text and benchmark test sets.

    python -m mellama_jax.cli.decontaminate --sources configs/pretrain.py:demo \\
        --benchmarks /data/benchmarks --n 13 --out runs/decontam [--write_exclude] [--overwrite]
        [--allow_truncated SOURCE[,SOURCE]]

Every benchmark the evaluation harness can load (`mellama_jax.eval.tasks`, found under --benchmarks
exactly as `configs/eval.py --config.data_dir` finds it) is read through the harness's own loaders;
every string of an example (question, context, choices, reference) is a separate text. Texts are
normalised to lower-case word tokens (`\\w+`), so whitespace, punctuation and case changes do not hide
an overlap; a training document is contaminated by a benchmark when they share at least
--min_matches n-grams (n = 13 by default, as in GPT-3's and Llama-2's contamination studies).
Pretraining sources are read by the data readers, instruction-tuning sources (configs/sft.py) by
the SFT record readers, each record as one text of all its messages.

Only a complete scan is a result: a source with no documents, a file that cannot be read (an
unparseable .json, a corrupt .parquet) or one that breaks off (a cut-short or corrupt gzip) exits 2
naming the source and file, and nothing is written. `--allow_truncated SOURCE` (or the source's own
allow_truncated=True) scans what was read of a broken-off file and records the file, its line and
the share unread in decontamination.json; records skipped as bad are counted there per source.
--out is written as the other tools write theirs (mellama_jax.output_dir): into a temporary sibling
renamed into place at the end, and an earlier decontamination output is replaced only with
--overwrite.

Outputs (in --out): decontamination.json and .md (per benchmark: examples in the file, examples too
short for one n-gram, examples touched, documents touched per source, matched n-grams; per source:
documents, contaminated, bad records by reason, truncated files), and with --write_exclude one
`exclude/<source>.txt` of contaminated document ids per source. Setting
`--config.data.sources.<source>.exclude_ids=<out>/exclude/<source>.txt` then drops those documents:
the id list is part of the token-cache key, so the tokenized store is rebuilt without them.
"""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from typing import Any, Iterable, Iterator

import ml_collections
from ml_collections.config_flags.config_flags import ConfigFileFlagParser

from mellama_jax.data import decontaminate
from mellama_jax.data.config import apply_sources_spec, default_data_config
from mellama_jax.data.sources.readers import iter_documents
from mellama_jax.data.sources.report import BadInputReport
from mellama_jax.eval.runner import load_task_file
from mellama_jax.eval.tasks import LOADER_DEFAULTS, TASKS, get_task, resolve_path
from mellama_jax.output_dir import OutputDirError, StagedOutput
from mellama_jax.sft.data import RecordError, expand, iter_records, to_messages

__all__ = ["example_texts", "benchmark_texts", "instruction_documents", "source_documents", "main"]

TOOL = "mellama_jax.cli.decontaminate"


# --------------------------------------------------------------------------------------------------
# Benchmarks, read by the evaluation harness's loaders
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


def benchmark_texts(data_dir: str, tasks: Iterable[str] | None = None) -> tuple[dict[str, list[list[str]]], dict]:
    """({task: [texts of example i]}, {task: why skipped}) for every task (or the named ones) whose
    test file the evaluation harness finds under data_dir, read through its loaders with the eval
    config's default loader settings."""
    loader_config = ml_collections.ConfigDict(LOADER_DEFAULTS)
    names = list(tasks) if tasks else list(TASKS)
    found, skipped = {}, {}
    for name in names:
        spec = get_task(name)
        try:
            path = resolve_path(spec, data_dir, None, "test")
        except FileNotFoundError:
            skipped[name] = "no test file under --benchmarks"
            continue
        examples, _ = load_task_file(spec, path, loader_config)
        found[name] = [example_texts(ex) for ex in examples]
    return found, skipped


# --------------------------------------------------------------------------------------------------
# Training sources
# --------------------------------------------------------------------------------------------------
def instruction_documents(name: str, src: Any, report: Any) -> Iterator[dict]:
    """Records of an instruction-tuning source (configs/sft.py formats), each as one text of all its
    messages; unreadable records are counted, and unreadable files fail or are recorded, as the SFT
    pipeline does it."""
    fmt = str(src.get("format", "auto"))
    report.allow_truncated = bool(src.get("allow_truncated", False))
    for path in expand(name, src["paths"]):
        base = os.path.basename(path)
        for line, rec in iter_records(path, report):
            try:
                if isinstance(rec, RecordError):
                    raise rec
                messages = to_messages(rec, fmt)
            except RecordError as err:
                report.skip(err.reason, path, line, err.detail)
                continue
            report.ok()
            rid = rec.get("id") if isinstance(rec, dict) else None
            yield {"id": str(rid) if rid is not None else f"{base}:{line}",
                   "text": "\n".join(str(m.get("content", "")) for m in messages)}


def _load_sources(spec: str, sources_spec: str) -> tuple[Any, str]:
    """(config.data, task) of a config file (`path.py[:variant]`), with an optional sources spec applied."""
    task = "pretrain"
    if spec:
        config = ConfigFileFlagParser(name="config", lock_config=False).parse(spec)
        data, task = config.data, str(config.get("task", "pretrain"))
    else:
        data = default_data_config()
    if sources_spec:
        apply_sources_spec(data, sources_spec, task=task)
    return data, task


def source_documents(sources_data: Any, task: str = "pretrain", only_sources: Iterable[str] | None = None,
                     reports: dict[str, BadInputReport] | None = None,
                     allow_truncated: Iterable[str] = ()) -> dict[str, Iterator[dict]]:
    """{source: its documents, read lazily} of a config.data: instruction records for an SFT config,
    documents through the data readers otherwise; ids an earlier run excluded are checked too.
    `reports` receives each source's BadInputReport (filled as the documents are read);
    `allow_truncated` names sources whose broken-off files are scanned as far as they go."""
    names = list(only_sources) if only_sources else list(sources_data.sources.keys())
    allowed = set(allow_truncated)
    unknown = sorted(allowed - set(sources_data.sources.keys()))
    if unknown:
        raise ValueError(f"--allow_truncated: no source(s) {unknown} (have {sorted(sources_data.sources.keys())})")
    documents = {}
    for name in names:
        if name not in sources_data.sources:
            raise ValueError(f"--only_sources: no source {name!r} (have {sorted(sources_data.sources.keys())})")
        src = sources_data.sources[name].to_dict()
        src["exclude_ids"] = ""  # check everything, including what an earlier run excluded
        if name in allowed:
            src["allow_truncated"] = True
        report = BadInputReport(name)
        if reports is not None:
            reports[name] = report
        documents[name] = (instruction_documents(name, src, report) if task == "sft"
                           else iter_documents(name, src, report))
    return documents


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mellama_jax.cli.decontaminate", description=__doc__.split("\n")[0])
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
    ap.add_argument("--allow_truncated", default="", help="comma-separated sources whose cut-short or corrupt "
                    "gzip files are scanned as far as they can be read (recorded in decontamination.json)")
    ap.add_argument("--overwrite", action="store_true", help="replace --out if it holds an earlier decontamination")
    args = ap.parse_args(argv)
    if not args.sources and not args.sources_spec:
        ap.error("give --sources (a config file) and/or --sources_spec")
    try:
        staged = StagedOutput(args.out, TOOL, overwrite=args.overwrite)
        staged.check()  # before the work: a bad --out fails at once
        data, task = _load_sources(args.sources, args.sources_spec)
        reports: dict[str, BadInputReport] = {}
        documents = source_documents(data, task, [s for s in args.only_sources.split(",") if s.strip()] or None,
                                     reports, [s.strip() for s in args.allow_truncated.split(",") if s.strip()])
        texts, skipped = benchmark_texts(args.benchmarks, [t for t in args.tasks.split(",") if t.strip()] or None)
        with staged as out_dir:  # an error inside leaves no output (and an earlier one untouched)
            report = decontaminate.run(texts, documents, out_dir, n=args.n, min_matches=args.min_matches,
                                       write_exclude=args.write_exclude, skipped=skipped,
                                       benchmarks_dir=args.benchmarks, reports=reports, final_dir=staged.path)
    except (ValueError, FileNotFoundError, OutputDirError) as err:
        print(f"decontaminate: {err}", file=sys.stderr)
        return 2
    with open(os.path.join(staged.path, "decontamination.md"), encoding="utf-8") as f:
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
