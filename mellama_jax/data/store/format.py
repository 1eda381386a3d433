"""The token store's layout (format v1): paths, the manifest, and the hashes a training run checks.

A store is a local directory or a URL prefix (gs://, s3://; every path goes through mellama_jax.fs):

    <store>/BUILDING.json                         first thing a build writes: {format, version, spec_sha256}
    <store>/<source>/<split>/<NNNNN>.tokens.npy   int32, [BOS] ids [EOS] per document, in file order
    <store>/<source>/<split>/<NNNNN>.offsets.npy  int64, n_docs + 1 entries, offsets[0] == 0
    <store>/<source>/parts/<NNNNN>.json           one per input file, written after its .npy files
    <store>/MANIFEST.json                         written last; without it the store is incomplete

NNNNN is the input file's index in the source's sorted file list (readers.expand_paths order), so
a source's documents of one split are its shards concatenated in index order. Why a manifest
written last: a build killed half way leaves shards but no manifest, and `read_manifest` refuses
such a store instead of training on part of a corpus.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any

from mellama_jax import fs
from mellama_jax.data.sources.report import DataError

__all__ = ["FORMAT", "VERSION", "MANIFEST", "BUILDING", "PARTS_DIR", "SPLITS", "SPLIT_RULE",
           "shard_name", "shard_paths", "part_path", "manifest_path", "building_path", "read_json",
           "write_json", "read_manifest", "write_manifest", "split_rule_sha256", "check_store_source"]

FORMAT = "mellama-token-store"
VERSION = 1
MANIFEST = "MANIFEST.json"
BUILDING = "BUILDING.json"
PARTS_DIR = "parts"
SPLITS = ("train", "eval")
# How a document's split is chosen (data/sources/splits.py); part of split_rule_sha256, so changing
# the rule there must bump the version here.
SPLIT_RULE = {"name": "blake2b(source\\0doc_id) < eval_fraction", "version": 1}
_SHARD_DIGITS = 5

# Source keys that decide which documents exist and which split each lands in, with the defaults
# a source config missing them gets (data/config.source_config; eval_fraction as token_cache reads it).
_SPLIT_KEYS: dict[str, Any] = {"format": None, "eval_fraction": 0.0, "text_field": "text", "id_field": "id",
                               "text_split": "file", "dedup": "none", "scrub_inline": False,
                               "require_prepared": False}


def shard_name(shard: int | str) -> str:
    """`00042` for file index 42 (5+ digits, zero padded); a name given as a string is kept."""
    return shard if isinstance(shard, str) else f"{int(shard):0{_SHARD_DIGITS}d}"


def shard_paths(store: str, source: str, split: str, shard: int | str) -> tuple[str, str]:
    """(tokens, offsets) `.npy` paths of one input file's documents of one split."""
    if split not in SPLITS:
        raise ValueError(f"split {split!r}: expected one of {SPLITS}")
    name = shard_name(shard)
    base = fs.join(store, source, split)
    return fs.join(base, f"{name}.tokens.npy"), fs.join(base, f"{name}.offsets.npy")


def part_path(store: str, source: str, shard: int | str) -> str:
    """The record of one finished input file (written after its shards)."""
    return fs.join(store, source, PARTS_DIR, f"{shard_name(shard)}.json")


def manifest_path(store: str) -> str:
    return fs.join(store, MANIFEST)


def building_path(store: str) -> str:
    return fs.join(store, BUILDING)


def read_json(path: str) -> dict:
    try:
        return json.loads(fs.read_text(path))
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: not valid JSON ({err.msg} at line {err.lineno})") from None


def write_json(path: str, obj: dict) -> None:
    """One JSON file, whole or not at all (fs.write_bytes is atomic locally, a PUT remotely)."""
    fs.write_text(path, json.dumps(obj, indent=1, sort_keys=True) + "\n")


def _check_format(obj: dict, path: str) -> None:
    if obj.get("format") != FORMAT or obj.get("version") != VERSION:
        raise DataError(f"{path}: format {obj.get('format')!r} version {obj.get('version')!r}; expected "
                        f"{FORMAT!r} version {VERSION} (a store from another tool or another version: "
                        "rebuild it with python -m mellama_jax.cli.tokenize_beam)")


def read_manifest(store: str) -> dict:
    """The manifest of a complete store; DataError naming the URL when it is missing (an interrupted
    build) or of another format or version."""
    path = manifest_path(store)
    if not fs.exists(path):
        building = " (it has a BUILDING.json)" if fs.exists(building_path(store)) else ""
        raise DataError(f"token store {store}: {path} missing{building}: the store is incomplete (an "
                        "interrupted build?); rerun the build to complete it")
    manifest = read_json(path)
    _check_format(manifest, path)
    if not isinstance(manifest.get("sources"), dict) or not isinstance(manifest.get("tokenizer"), dict):
        raise DataError(f"{path}: expected 'sources' and 'tokenizer' objects")
    return manifest


def write_manifest(store: str, manifest: dict) -> None:
    """Write MANIFEST.json: the last file of a build, which makes the store usable."""
    _check_format(manifest, manifest_path(store))
    write_json(manifest_path(store), manifest)


def _exclude_ids_sha256(path: str) -> str:
    return hashlib.sha256(fs.read_bytes(path)).hexdigest()


def split_rule_sha256(name: str, src: Any) -> str:
    """sha256 of everything that decides which documents of source `name` exist and which split each
    lands in: the split rule, the reading keys, dedup, and the exclude_ids file's content (not its
    path). The input files are recorded apart (their sha256 in the manifest), not hashed here."""
    src = src.to_dict() if hasattr(src, "to_dict") else dict(src)
    spec: dict[str, Any] = {"split_rule": SPLIT_RULE, "source": name}
    for key, default in _SPLIT_KEYS.items():
        value = src.get(key, default)
        spec[key] = default if value is None or value == "" else value
    spec["eval_fraction"] = float(spec["eval_fraction"])
    spec["scrub_inline"], spec["require_prepared"] = bool(spec["scrub_inline"]), bool(spec["require_prepared"])
    exclude = str(src.get("exclude_ids", "") or "")
    spec["exclude_ids_sha256"] = _exclude_ids_sha256(exclude) if exclude else ""
    blob = json.dumps(spec, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def check_store_source(manifest: dict, name: str, src: Any, tokenizer_sha256: str, store: str = "") -> None:
    """Refuse a store that was not built for this run's source `name`: another tokenizer or another
    split rule (eval_fraction, dedup, exclude_ids, ...). The error names both hashes."""
    where = f"token store {store}" if store else "token store"
    built_tok = str(manifest.get("tokenizer", {}).get("sha256", ""))
    if built_tok != tokenizer_sha256:
        raise DataError(f"{where}: built with tokenizer sha256 {built_tok}, but this run's tokenizer has "
                        f"sha256 {tokenizer_sha256}; rebuild the store with this run's tokenizer "
                        "(python -m mellama_jax.cli.tokenize_beam) or train with the store's")
    sources = manifest.get("sources", {})
    if name not in sources:
        raise DataError(f"{where}: has no source {name!r} (it holds {sorted(sources)}); rebuild it with "
                        "this run's data.sources")
    built_split = str(sources[name].get("split_sha256", ""))
    want = split_rule_sha256(name, src)
    if built_split != want:
        raise DataError(f"{where}: source {name!r} was built with split/filter sha256 {built_split}, but "
                        f"this run's data.sources.{name} gives {want} (eval_fraction, dedup, exclude_ids, "
                        "format or reading keys differ); rebuild the store for this config")
