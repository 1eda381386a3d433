"""Per-source document filters applied while reading, before the train/eval split and tokenizing:
an exclusion list of document ids (what `mellama_jax.cli.decontaminate --write_exclude` writes) and
exact / MinHash near-duplicate removal (the clinical pipeline's `Deduplicator`, for any source).

Dropped documents are counted in the source's report under `dropped` (not as bad input: a corpus
with many duplicates is not malformed), by reason, never with their text.
"""
from __future__ import annotations

import hashlib
import os
from typing import Any, Iterable, Iterator

from mellama_jax import fs
from mellama_jax.data.sources.report import BadInputReport, DataError

__all__ = ["read_exclude_ids", "exclude_ids_sha256", "filter_documents", "DEDUP_MODES", "dedup_mode",
           "new_deduplicator", "excluded_ids"]

DEDUP_MODES = ("none", "exact", "near")


def _path(path: str) -> str:
    return path if fs.is_url(path) else os.path.expanduser(path)


def read_exclude_ids(path: str) -> set[str]:
    """Document ids, one per line (blank lines and lines starting with '#' ignored); a local file
    or a gs:// / s3:// object."""
    path = _path(path)
    if not fs.isfile(path):
        raise DataError(f"exclude_ids file {path} does not exist")
    with fs.open(path, "r", encoding="utf-8") as f:
        return {line.rstrip("\r\n") for line in f if line.strip() and not line.startswith("#")}


def exclude_ids_sha256(path: str) -> str:
    return hashlib.sha256(fs.read_bytes(_path(path))).hexdigest()


def dedup_mode(source: str, src_cfg: Any) -> str:
    """The source's `dedup` setting, checked."""
    mode = str(src_cfg.get("dedup", "none") or "none")
    if mode not in DEDUP_MODES:
        raise DataError(f"data.sources.{source}.dedup={mode!r}: expected one of {DEDUP_MODES}")
    return mode


def new_deduplicator(mode: str):
    """A fresh index for dedup mode "exact" or "near" (None for "none")."""
    if mode == "none":
        return None
    from mellama_jax.data.clinical.dedup import DedupConfig, Deduplicator
    return Deduplicator(DedupConfig(exact=True, near=mode == "near"))


def excluded_ids(src_cfg: Any) -> set[str]:
    """The ids the source's exclude_ids file lists (empty without one)."""
    exclude_path = str(src_cfg.get("exclude_ids", "") or "")
    return read_exclude_ids(exclude_path) if exclude_path else set()


def filter_documents(source: str, src_cfg: Any, docs: Iterable[dict], report: BadInputReport) -> Iterator[dict]:
    """`docs` without the excluded ids and (per `dedup`) without exact / near duplicates of an
    earlier document of the same source."""
    dedup = new_deduplicator(dedup_mode(source, src_cfg))
    excluded = excluded_ids(src_cfg)
    if not excluded and dedup is None:
        yield from docs
        return
    for doc in docs:
        if doc["id"] in excluded:
            report.drop("excluded_id")
            continue
        if dedup is not None:
            reason = dedup.check(doc["text"])
            if reason is not None:
                report.drop(reason)
                continue
        yield doc
