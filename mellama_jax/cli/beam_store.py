"""The Apache Beam pipeline that builds a token store: the DoFns and the graph, over the per-file
phases of mellama_jax.data.store.build (see its docstring).

    Create(files) | Reshuffle | ParDo(DedupKeys)            phase A, dedup sources only
                  | GroupByKey(source) | ParDo(DecideDrops)  phase B, sequential per source
    files + drops | CoGroupByKey(source, file) | Reshuffle | ParDo(TokenizeFile)   phase C

Phase C writes its shards and part record itself and emits only a small summary, so no token array
ever crosses a stage. The driver writes the manifest after the pipeline finishes (build.finish_store).
`run_beam` runs it (mellama_jax.cli.tokenize_beam imports this module only once a pipeline is to
run: Beam is heavy; tests and library callers import run_beam from here, which defines no flags).
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
from typing import Any, Iterator

# Beam is imported only here: nothing else needs it.
import apache_beam as beam

from mellama_jax.data.doc_filters import dedup_mode
from mellama_jax.data.store import build
from mellama_jax.data.sources.report import DataError
from mellama_jax.tokenizer import load_tokenizer

__all__ = ["run_beam", "DedupKeys", "DecideDrops", "TokenizeFile", "tokenizer_payload", "build_pipeline"]


def tokenizer_payload(tokenizer: Any) -> dict:
    """The tokenizer's files as bytes (what workers load it from: a cluster worker cannot see the
    driver's disk), with its main file's name and sha256."""
    files = {os.path.basename(p): open(p, "rb").read() for p in tokenizer.files}
    return {"main": os.path.basename(tokenizer.model_path), "files": files, "sha256": tokenizer.sha256()}


def _load_payload(payload: dict) -> tuple[Any, str]:
    directory = tempfile.mkdtemp(prefix="mellama-tokenizer-")
    for name, data in payload["files"].items():
        with open(os.path.join(directory, name), "wb") as f:
            f.write(data)
    tokenizer = load_tokenizer(os.path.join(directory, payload["main"]))
    if tokenizer.sha256() != payload["sha256"]:
        raise DataError(f"worker tokenizer sha256 {tokenizer.sha256()} != the driver's {payload['sha256']}")
    return tokenizer, directory


class DedupKeys(beam.DoFn):
    """Phase A: (source, idx, path) -> (source, {"file_index", "keys"})."""

    def __init__(self, sources: dict):
        self.sources = sources

    def process(self, item: tuple) -> Iterator[tuple]:
        source, index, path = item
        yield source, build.file_dedup_keys(source, self.sources[source], index, path)


class DecideDrops(beam.DoFn):
    """Phase B: (source, [file keys]) -> ((source, idx), {ordinal: reason}) for each of its files."""

    def __init__(self, sources: dict):
        self.sources = sources

    def process(self, item: tuple) -> Iterator[tuple]:
        source, file_keys = item
        for index, dropped in build.decide_drops(source, self.sources[source], list(file_keys)).items():
            yield (source, index), dropped


class TokenizeFile(beam.DoFn):
    """Phase C: ((source, idx), {"path": [path], "dropped": [drops]}) -> a small summary dict; the
    shards and the part record are written by the worker. The tokenizer is loaded once per worker."""

    def __init__(self, store: str, sources: dict, tokenizer: dict, threads: int):
        self.store, self.sources, self.payload, self.threads = store, sources, tokenizer, threads
        self._tokenizer = self._dir = None

    def setup(self) -> None:
        self._tokenizer, self._dir = _load_payload(self.payload)

    def teardown(self) -> None:
        if self._dir:
            shutil.rmtree(self._dir, ignore_errors=True)

    def process(self, item: tuple) -> Iterator[dict]:
        (source, index), joined = item
        paths, drops = list(joined["path"]), list(joined["dropped"])
        part = build.tokenize_file(self.store, source, self.sources[source], index, paths[0], self._tokenizer,
                                   drops[0] if drops else None, threads=self.threads)
        yield {"source": source, "file_index": index,
               "docs": sum(s["docs"] for s in part["splits"].values()),
               "tokens": sum(s["tokens"] for s in part["splits"].values())}


def build_pipeline(p: beam.Pipeline, store: str, sources: dict, inputs: list[build.InputFile],
                   tokenizer: Any, threads: int) -> beam.PCollection:
    """Add the three phases to pipeline `p`; returns phase C's summaries."""
    dedup = {n for n, src in sources.items() if dedup_mode(n, src) != "none"}
    files = p | "Inputs" >> beam.Create(inputs)
    keyed = files | "ByFile" >> beam.Map(lambda f: ((f[0], f[1]), f[2]))
    if dedup:
        drops = (files
                 | "DedupSources" >> beam.Filter(lambda f, names: f[0] in names, dedup)
                 | "SpreadKeys" >> beam.Reshuffle()
                 | "DedupKeys" >> beam.ParDo(DedupKeys(sources))
                 | "BySource" >> beam.GroupByKey()
                 | "DecideDrops" >> beam.ParDo(DecideDrops(sources)))
    else:
        drops = p | "NoDrops" >> beam.Create([])
    return ({"path": keyed, "dropped": drops}
            | "Join" >> beam.CoGroupByKey()
            | "SpreadFiles" >> beam.Reshuffle()
            | "Tokenize" >> beam.ParDo(TokenizeFile(store, sources, tokenizer_payload(tokenizer), threads)))


_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _workers_visible_package() -> None:
    """DirectRunner multi_processing workers are fresh interpreters: give them this repository."""
    parts = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if _REPO_ROOT not in parts:
        os.environ["PYTHONPATH"] = os.pathsep.join([_REPO_ROOT] + parts)


def _runner_and_workers(options: Any) -> tuple[str, int]:
    from apache_beam.options.pipeline_options import DirectOptions, StandardOptions, WorkerOptions

    runner = options.view_as(StandardOptions).runner or "DirectRunner"
    runner = runner if isinstance(runner, str) else type(runner).__name__
    if "Direct" in runner:
        return runner, int(options.view_as(DirectOptions).direct_num_workers or 1)
    w = options.view_as(WorkerOptions)
    return runner, int(w.max_num_workers or w.num_workers or 0)


def run_beam(data_config: Any, tokenizer: Any, store: str, pipeline_args: list[str], *,
             sources: list[str] | None = None, overwrite: bool = False, threads: int = 1,
             command: str = "") -> dict:
    """Build the store on Beam with `pipeline_args` (Beam's options); returns the manifest."""
    from apache_beam.options.pipeline_options import PipelineOptions

    srcs = build.source_dicts(data_config, sources)
    build.check_sources(srcs)
    inputs = build.list_inputs(srcs)
    build.prepare_store(store, build.spec_sha256(srcs, tokenizer.sha256()), overwrite=overwrite)
    _workers_visible_package()
    logging.getLogger("apache_beam").setLevel(logging.WARNING)  # a line per bundle otherwise
    if not any(a.startswith("--default_sdk_harness_log_level") for a in pipeline_args):
        pipeline_args = list(pipeline_args) + ["--default_sdk_harness_log_level=WARNING"]
    options = PipelineOptions(pipeline_args)
    runner, workers = _runner_and_workers(options)
    with beam.Pipeline(options=options) as p:  # leaving the block runs it and waits until it finishes
        build_pipeline(p, store, srcs, inputs, tokenizer, threads)
    builder = {"command": command, "runner": runner, "workers": workers}
    return build.finish_store(store, srcs, inputs, tokenizer,
                              max_bad_fraction=float(data_config.get("max_bad_fraction", 0.01)), builder=builder)
