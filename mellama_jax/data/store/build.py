"""Building a token store: the per-input-file work (shared by the Beam command and the serial
builder) and the serial, in-process builder itself.

Why per file: an input file is the unit a cluster runner spreads over workers, and the unit a rerun
after a crash skips. Equivalence with today's in-process path (token_cache with reader="direct", one
process) rests on doing the same steps in the same order:

  phase A, per file (parallel): read with the same readers and scrubber, skip excluded ids, and
      compute each remaining document's dedup keys (Deduplicator.keys). Skipped when dedup is "none".
  phase B, per source (sequential, cheap): decide duplicates in (file index, document ordinal)
      order (Deduplicator.decide), i.e. exactly the order filter_documents sees them today.
  phase C, per file (parallel): read again, drop excluded and duplicate documents, split by
      splits.split_of, tokenize as [BOS] ids [EOS] in chunks, stream the shards to `.npy` files,
      then write parts/<N>.json (the file's sha256, size, bad-input report and counts) last.

Phase A runs the expensive part of dedup (normalising, MinHash) in parallel; phase B holds one
source's keys (~120 bytes a document with near dedup) in one process, as filter_documents holds its
index today. Phase C reads a file a second time when dedup is on (the price of exact equivalence
without shipping text between stages).

The driver then checks every part against the input list, merges the reports (refusing a source
with too much bad input, as training does), and writes MANIFEST.json last. A rerun of the same
build (same BUILDING.json spec) redoes only the files without a matching part.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from typing import Any, Iterable, Mapping

import numpy as np

from mellama_jax import fs
from mellama_jax.data.config import resolved_data_config, source_paths
from mellama_jax.data.doc_filters import dedup_mode, excluded_ids, new_deduplicator
from mellama_jax.data.sources.readers import expand_paths, read_file, source_scrubber
from mellama_jax.data.sources.report import BadInputReport, DataError
from mellama_jax.data.sources.splits import split_of
from mellama_jax.data.store.format import (BUILDING, FORMAT, MANIFEST, PARTS_DIR, SPLITS, VERSION, building_path,
                                           manifest_path, part_path, read_json, shard_name, shard_paths,
                                           split_rule_sha256, write_json, write_manifest)
from mellama_jax.data.token_cache import ChunkedEncoder, source_dict
from mellama_jax.data.token_store import NpyAppender, TokenizedDocs

__all__ = ["InputFile", "source_dicts", "check_sources", "list_inputs", "spec_sha256", "file_sha256",
           "file_dedup_keys", "decide_drops", "tokenize_file", "prepare_store", "finish_store",
           "build_store_serial", "StoreExistsError"]

log = logging.getLogger("mellama_jax.data")
InputFile = tuple[str, int, str]  # (source, file index in the source's sorted list, path)
_HASH_BLOCK = 8 << 20


class StoreExistsError(DataError):
    """The output holds a complete store, another build's, or files this builder did not create."""


# --- inputs ----------------------------------------------------------------------------------------
def source_dicts(data_config: Any, names: Iterable[str] | None = None) -> dict[str, dict]:
    """Plain dicts of the sources to build (all of data_config.sources, or `names`), in name order.
    `data_config` may be a data ConfigDict (with .sources; its perplexity_texts become the eval-only
    source training adds, see data.config.resolved_data_config) or a mapping of sources."""
    if hasattr(data_config, "sources"):
        try:  # the sources training reads: sources_spec applied, the perplexity text set added
            data_config = resolved_data_config(data_config)
        except ValueError as err:
            raise DataError(str(err)) from None
        sources = data_config.sources
    else:
        sources = data_config
    names = sorted(sources.keys()) if names is None else list(names)
    missing = [n for n in names if n not in sources]
    if missing:
        raise DataError(f"sources {missing}: not in data.sources ({sorted(sources.keys())})")
    return {n: source_dict(sources[n]) for n in names}


def check_sources(sources: Mapping[str, dict]) -> None:
    """The per-source settings a worker would otherwise trip over mid-build (dedup mode, raw
    clinical input without scrubbing, the exclude_ids file), checked once in the driver."""
    for name, src in sources.items():
        dedup_mode(name, src)
        source_scrubber(name, src)
        excluded_ids(src)


def list_inputs(data_config: Any, names: Iterable[str] | None = None) -> list[InputFile]:
    """Every input file as (source, file_index, path): each source's files in readers.expand_paths
    order, the order iter_documents reads them in."""
    out: list[InputFile] = []
    for name, src in source_dicts(data_config, names).items():
        files = expand_paths(name, list(source_paths(src)), src["format"])
        out.extend((name, i, path) for i, path in enumerate(files))
    return out


def spec_sha256(sources: Mapping[str, dict], tokenizer_sha256: str) -> str:
    """What one build is: its sources (configs and split rules) and its tokenizer. A rerun with the
    same spec may resume a half-written store; another spec may not write into it."""
    blob = {"format": FORMAT, "version": VERSION, "tokenizer": tokenizer_sha256,
            "sources": {n: {"config": src, "split_sha256": split_rule_sha256(n, src)} for n, src in sources.items()}}
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=list).encode()).hexdigest()


def file_sha256(path: str) -> tuple[str, int]:
    """(sha256 hex, size) of a file's bytes, streamed."""
    h, n = hashlib.sha256(), 0
    with fs.open(path, "rb") as f:
        while True:
            block = f.read(_HASH_BLOCK)
            if not block:
                break
            h.update(block)
            n += len(block)
    return h.hexdigest(), n


def _file_report(source: str, src: dict, quiet: bool = False) -> BadInputReport:
    # quiet (phase A): the same problems are read again in phase C, which logs and counts them.
    report = BadInputReport(source, max_examples=0) if quiet else BadInputReport(source)
    report.allow_truncated = bool(src.get("allow_truncated", False))
    return report


# --- phase A: dedup keys of one file -------------------------------------------------------------------
def file_dedup_keys(source: str, src: dict, file_index: int, path: str) -> dict:
    """{"source", "file_index", "keys": [(ordinal, exact digest, band keys), ...]} for the documents
    of one file that are not excluded; ordinal = the document's position among those read_file yields."""
    dedup = new_deduplicator(dedup_mode(source, src))
    excluded = excluded_ids(src)
    keys = []
    if dedup is not None:
        report = _file_report(source, src, quiet=True)
        for ordinal, doc in enumerate(read_file(source, src, path, report, source_scrubber(source, src))):
            if doc["id"] in excluded:
                continue
            digest, bands = dedup.keys(doc["text"])
            keys.append((ordinal, digest, bands))
    return {"source": source, "file_index": int(file_index), "keys": keys}


# --- phase B: the sequential dedup decision of one source ------------------------------------------------
def decide_drops(source: str, src: dict, file_keys: Iterable[dict]) -> dict[int, dict[int, str]]:
    """{file_index: {ordinal: reason}} of the duplicates of one source, deciding in (file index,
    ordinal) order: the order filter_documents checks them in when reading the whole source."""
    dedup = new_deduplicator(dedup_mode(source, src))
    out: dict[int, dict[int, str]] = {}
    for fk in sorted(file_keys, key=lambda fk: fk["file_index"]):
        dropped = out.setdefault(int(fk["file_index"]), {})
        if dedup is None:
            continue
        for ordinal, digest, bands in fk["keys"]:
            reason = dedup.decide((digest, None if bands is None else tuple(bands)))
            if reason is not None:
                dropped[int(ordinal)] = reason
    return out


def _dropped_sha256(dropped: Mapping[int, str] | None) -> str:
    items = sorted((int(k), str(v)) for k, v in (dropped or {}).items())
    return hashlib.sha256(json.dumps(items).encode()).hexdigest()


# --- phase C: tokenize one file into its shards -----------------------------------------------------------
class _ShardWriter:
    """One (source, split, file) shard: `.npy` files streamed to temporary names (a local store) or
    to a scratch directory (a URL), published by commit() once complete."""

    def __init__(self, store: str, source: str, split: str, shard: str, scratch: str):
        self.final = shard_paths(store, source, split, shard)
        self.remote = fs.is_url(store)
        if self.remote:
            self.local = tuple(os.path.join(scratch, f"{split}.{k}.npy") for k in ("tokens", "offsets"))
        else:
            os.makedirs(os.path.dirname(self.final[0]), exist_ok=True)
            self.local = tuple(f"{p}.tmp{os.getpid()}" for p in self.final)
        self.tokens = NpyAppender(self.local[0], np.int32)
        self.offsets = NpyAppender(self.local[1], np.int64)
        self.offsets.append(np.zeros(1, np.int64))
        self.num_tokens = 0
        self.num_docs = 0

    def append(self, part: TokenizedDocs) -> None:
        self.tokens.append(part.tokens)
        self.offsets.append(np.asarray(part.offsets[1:], np.int64) + self.num_tokens)
        self.num_tokens += part.num_tokens
        self.num_docs += part.num_docs

    def commit(self) -> None:
        self.tokens.close()
        self.offsets.close()
        for local, final in zip(self.local, self.final):
            if self.remote:
                fs.put_file(local, final)
                os.unlink(local)
            else:
                os.replace(local, final)

    def abort(self) -> None:
        for appender in (self.tokens, self.offsets):
            appender.close()
        for local in self.local:
            try:
                os.unlink(local)
            except OSError:
                pass


def _finished_part(store: str, source: str, file_index: int, path: str, sha: str, dropped_sha: str) -> dict | None:
    """The part record of an earlier run of this build for this very file (same bytes, same dedup
    decisions), when it and its shards are all there; else None (the file is built again)."""
    p = part_path(store, source, file_index)
    if not fs.exists(p):
        return None
    part = read_json(p)
    if (part.get("file") != path or part.get("file_index") != file_index or part.get("sha256") != sha
            or part.get("dropped_sha256") != dropped_sha):
        return None
    if not all(fs.exists(f) for split in SPLITS for f in shard_paths(store, source, split, file_index)):
        return None
    return part


def tokenize_file(store: str, source: str, src: dict, file_index: int, path: str, tokenizer: Any,
                  dropped: Mapping[int, str] | None = None, *, threads: int = 0) -> dict:
    """Tokenize one input file into its train and eval shards and write its part record (last).
    `dropped` = {ordinal: reason} from decide_drops. Returns the part record; a file whose part
    from an earlier run of the same build matches (same sha256, same drops) is not redone."""
    dropped = {int(k): v for k, v in (dropped or {}).items()}
    sha, size = file_sha256(path)
    dropped_sha = _dropped_sha256(dropped)
    done = _finished_part(store, source, file_index, path, sha, dropped_sha)
    if done is not None:
        return done
    shard = shard_name(file_index)
    report = _file_report(source, src)
    excluded = excluded_ids(src)
    eval_fraction = float(src.get("eval_fraction", 0.0))
    scratch = tempfile.mkdtemp(prefix=f"mellama-store-{shard}-") if fs.is_url(store) else ""
    writers: dict[str, _ShardWriter] = {}
    try:
        writers = {split: _ShardWriter(store, source, split, shard, scratch) for split in SPLITS}
        encoder = ChunkedEncoder(tokenizer, threads, lambda split, part: writers[split].append(part))
        for ordinal, doc in enumerate(read_file(source, src, path, report, source_scrubber(source, src))):
            if doc["id"] in excluded:
                report.drop("excluded_id")
                continue
            reason = dropped.get(ordinal)
            if reason is not None:
                report.drop(reason)
                continue
            encoder.add(split_of(doc["id"], eval_fraction, source), doc["text"])
        encoder.close()
        for w in writers.values():
            w.commit()
    except BaseException:
        for w in writers.values():
            w.abort()
        raise
    finally:
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)
    part = {"file": path, "file_index": int(file_index), "sha256": sha, "size": size,
            "dropped_sha256": dropped_sha, "report": report.to_dict(),
            "splits": {split: {"docs": w.num_docs, "tokens": w.num_tokens} for split, w in writers.items()}}
    write_json(part_path(store, source, file_index), part)
    return part


# --- the store directory: start, resume, refuse ---------------------------------------------------------
def _our_files(store: str) -> list[str]:
    """Files of ours under a store (manifest, shards, parts), for --overwrite; nothing else."""
    pats = [fs.join(store, "*", split, "*.npy") for split in SPLITS] + [fs.join(store, "*", PARTS_DIR, "*.json")]
    return [p for pat in pats for p in fs.glob(pat)]


def prepare_store(store: str, spec: str, *, overwrite: bool = False) -> str:
    """Make `store` ready for the build `spec`: "new" (empty or absent: BUILDING.json written),
    "resume" (a half-written store of the same spec), "overwrite" (ours, emptied of our files).
    Refuses a complete store (without overwrite), another build's store (without overwrite), and a
    directory holding files this builder did not create (always)."""
    building, manifest = building_path(store), manifest_path(store)
    marker = {"format": FORMAT, "version": VERSION, "spec_sha256": spec}
    if fs.exists(building):
        old = read_json(building)
        ours = old.get("format") == FORMAT
        if not ours:
            raise StoreExistsError(f"{building}: not a {FORMAT} build marker; refusing to write into {store}")
        complete = fs.exists(manifest)
        if not overwrite:
            if complete:
                raise StoreExistsError(f"token store {store} is complete already ({manifest} exists); pass "
                                       "--overwrite to rebuild it, or choose another --output")
            if old.get("spec_sha256") != spec or old.get("version") != VERSION:
                raise StoreExistsError(
                    f"token store {store}: {building} is of another build (spec sha256 {old.get('spec_sha256')}, "
                    f"this build's is {spec}: other sources, settings or tokenizer); pass --overwrite to "
                    "replace it, or choose another --output")
            log.info("token store %s: resuming an interrupted build", store)
            for split in SPLITS:  # shards a killed worker left half-written (never published)
                for path in fs.glob(fs.join(store, "*", split, "*.npy.tmp*")):
                    fs.remove(path)
            return "resume"
        if complete:  # first, so the store is refused while it is being emptied
            fs.remove(manifest)
        for path in _our_files(store):
            fs.remove(path)
        write_json(building, marker)
        return "overwrite"
    if fs.exists(manifest):
        raise StoreExistsError(f"{store}: has {MANIFEST} but no {BUILDING}; refusing to write into a store "
                               "this builder did not create")
    present = fs.listdir(store) if fs.isdir(store) else []
    if present:
        shown = ", ".join(present[:5]) + (", ..." if len(present) > 5 else "")
        raise StoreExistsError(f"{store}: holds {len(present)} entries this builder did not create ({shown}); "
                               "choose an empty or new --output")
    fs.makedirs(store)
    write_json(building, marker)
    return "new"


# --- the manifest ---------------------------------------------------------------------------------------
def finish_store(store: str, sources: Mapping[str, dict], inputs: list[InputFile], tokenizer: Any, *,
                 max_bad_fraction: float, builder: dict) -> dict:
    """Check every input's part record, merge the reports (BadInputReport.check per source, as
    training does), and write MANIFEST.json, the last file of the build. Returns the manifest."""
    out_sources = {}
    for name, src in sources.items():
        files = [(i, p) for s, i, p in inputs if s == name]
        report = _file_report(name, src)
        entry = {"config": src, "split_sha256": split_rule_sha256(name, src), "files": [], "shards": [],
                 "splits": {split: {"docs": 0, "tokens": 0, "shard_docs": [], "shard_tokens": []} for split in SPLITS}}
        for i, path in files:
            pp = part_path(store, name, i)
            if not fs.exists(pp):
                raise DataError(f"token store {store}: {pp} missing: input {path} was not tokenized "
                                "(a worker failed?); rerun the build to complete it")
            part = read_json(pp)
            if part.get("file") != path or part.get("file_index") != i:
                raise DataError(f"token store {store}: {pp} records {part.get('file')!r} (index "
                                f"{part.get('file_index')}), expected {path!r} (index {i})")
            entry["files"].append({"path": path, "sha256": part["sha256"], "size": part["size"]})
            entry["shards"].append(shard_name(i))
            for split in SPLITS:
                counts, agg = part["splits"][split], entry["splits"][split]
                agg["docs"] += int(counts["docs"])
                agg["tokens"] += int(counts["tokens"])
                agg["shard_docs"].append(int(counts["docs"]))
                agg["shard_tokens"].append(int(counts["tokens"]))
            report.merge(BadInputReport.from_dict(part["report"]))
        report.check(float(max_bad_fraction))
        entry["report"] = report.to_dict()
        out_sources[name] = entry
    manifest = {"format": FORMAT, "version": VERSION,
                "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "builder": builder,
                "tokenizer": {"sha256": tokenizer.sha256(), "vocab_size": int(tokenizer.vocab_size),
                              "bos_id": int(tokenizer.bos_id), "eos_id": int(tokenizer.eos_id)},
                "sources": out_sources}
    manifest = json.loads(json.dumps(manifest))  # as readers will see it (tuples become lists)
    write_manifest(store, manifest)
    return manifest


# --- the serial builder -----------------------------------------------------------------------------------
def build_store_serial(data_config: Any, tokenizer: Any, store_url: str, *, sources: Iterable[str] | None = None,
                       overwrite: bool = False, threads: int | None = None, command: str | None = None) -> dict:
    """Build a token store in this process (phases A, B, C one file after another): the reference
    the Beam build must equal, and a way to build without Beam. Returns the manifest."""
    start = time.time()
    srcs = source_dicts(data_config, sources)
    check_sources(srcs)
    inputs = list_inputs(srcs)
    prepare_store(store_url, spec_sha256(srcs, tokenizer.sha256()), overwrite=overwrite)
    threads = int(data_config.get("tokenize_threads", 0)) if threads is None else int(threads)
    dropped: dict[tuple[str, int], dict[int, str]] = {}
    for name, src in srcs.items():
        if dedup_mode(name, src) == "none":
            continue
        keys = [file_dedup_keys(name, src, i, p) for s, i, p in inputs if s == name]
        dropped.update({(name, i): d for i, d in decide_drops(name, src, keys).items()})
    for name, i, path in inputs:
        tokenize_file(store_url, name, srcs[name], i, path, tokenizer, dropped.get((name, i)), threads=threads)
    builder = {"command": command if command is not None else " ".join(sys.argv), "runner": "serial", "workers": 1}
    manifest = finish_store(store_url, srcs, inputs, tokenizer,
                            max_bad_fraction=float(data_config.get("max_bad_fraction", 0.01)), builder=builder)
    log.info("token store %s: %d sources, %d files in %.1f s", store_url, len(srcs), len(inputs), time.time() - start)
    return manifest
