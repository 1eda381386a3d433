"""The Apache Beam pipeline that builds a token store: the DoFns and the graph, over the per-file
phases of mellama_jax.data.store.build (see its docstring).

    Create(files) | Reshuffle | ParDo(DedupKeys)            phase A, dedup sources only
                  | GroupByKey(source) | ParDo(DecideDrops)  phase B, sequential per source
    files + drops | CoGroupByKey(source, file) | Reshuffle | ParDo(TokenizeFile)   phase C

Phase C writes its shards and part record itself and emits only a small summary, so no token array
ever crosses a stage. The driver writes the manifest after the pipeline finishes (build.finish_store).
Imported only by mellama_jax.cli.tokenize_beam, and only once a pipeline is to run (Beam is heavy).
"""
from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any, Iterator

# Beam is imported only here and in tokenize_beam (lazily): nothing else needs it.
import apache_beam as beam

from mellama_jax.data.doc_filters import dedup_mode
from mellama_jax.data.store import build
from mellama_jax.data.sources.report import DataError
from mellama_jax.tokenizer import load_tokenizer

__all__ = ["DedupKeys", "DecideDrops", "TokenizeFile", "tokenizer_payload", "build_pipeline"]


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
