"""The token cache: each source tokenized once per (content, tokenizer, host shard), kept on disk.

A source is read (tfds records, or the format readers directly), split into train/eval by a hash of
the doc id, sharded across hosts by document ordinal (host h keeps ordinals i with
i % process_count == h, so hosts see disjoint documents), and tokenized once as [BOS] + ids + [EOS]
per document into one flat int32 array plus int64 document offsets (token_store.TokenizedDocs).
These live on disk, not in RAM (a Me-LLaMA corpus is tens of billions of tokens, 4 bytes each):
tokenizing streams each encoded chunk (<= ENCODE_CHUNK documents / ENCODE_CHUNK_CHARS chars) into
`.npy` files (token_store.py), so peak memory is one chunk, and training maps them with
np.load(mmap_mode="r"), paging in only the windows it reads. With cache_tokenized (default) the files
are built in `<cache>.tmp<pid>` and renamed into data_dir/tokenized/<source>-<key> once complete (a
crash never leaves a half cache; an old `.npz` cache under the same key is a miss and is replaced).
With cache_tokenized=False they are built in a scratch dir under data_dir/tokenized (the data's disk;
/tmp is often RAM-backed tmpfs), mapped, and unlinked at once: the mappings keep the data readable
and the space is freed when the pipeline is dropped.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from typing import Any, Iterator

import numpy as np

from mellama_jax import fs
from mellama_jax.data.config import source_paths
from mellama_jax.data.doc_filters import exclude_ids_sha256
from mellama_jax.data.mixture_order import document_keys
from mellama_jax.data.sources.readers import expand_paths, iter_documents
from mellama_jax.data.sources.report import BadInputReport, DataError
from mellama_jax.data.sources.splits import split_of
from mellama_jax.data.token_store import SPLITS, SplitWriter, TokenizedDocs, load_store, split_files
from mellama_jax.tokenizer import Tokenizer

__all__ = ["load_source_tokens", "source_fingerprint", "source_dict", "subsample_documents", "global_doc_ids",
           "ENCODE_CHUNK", "ENCODE_CHUNK_CHARS", "ChunkedEncoder"]

log = logging.getLogger("mellama_jax.data")
_PIPELINE_VERSION = "1"        # part of every cache key: bump when the tokenized layout changes
ENCODE_CHUNK = 4096           # documents per sentencepiece batch call
ENCODE_CHUNK_CHARS = 2 << 20  # ... and at most this many characters (bounds tokenizing memory)


def source_dict(src: Any) -> dict[str, Any]:
    """One source config (a ConfigDict or a plain mapping) as a plain dict."""
    return src.to_dict() if hasattr(src, "to_dict") else dict(src)


def source_fingerprint(name: str, src: dict[str, Any]) -> str:
    """Hash of the source config and its matched files: (path, size, mtime) of a local file (the key
    existing caches were made with), (path, size, ETag/generation) of an object."""
    files = expand_paths(name, list(source_paths(src)), src["format"])
    stats = [(p, *fs.stat_key(p)) if fs.is_url(p) else (p, os.path.getsize(p), int(os.path.getmtime(p)))
             for p in files]
    if src.get("exclude_ids"):  # the list's content, not only its name, decides what is dropped
        stats.append(("exclude_ids", exclude_ids_sha256(src["exclude_ids"])))
    blob = json.dumps({"v": _PIPELINE_VERSION, "name": name, "src": src, "files": stats}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def _use_tfds(reader: str) -> bool:
    if reader == "direct":
        return False
    if reader not in ("tfds", "auto"):
        raise DataError(f"data.reader={reader!r}: expected 'tfds', 'direct' or 'auto'")
    try:  # heavy and optional (the GPU images have no TensorFlow): probed, never imported at module top
        import tensorflow_datasets  # noqa: F401
        return True
    except ImportError:
        if reader == "tfds":
            raise DataError("data.reader='tfds' but tensorflow_datasets is not importable; "
                            "install it or set data.reader='direct'") from None
        return False


def _iter_texts_direct(name: str, src: dict, report: BadInputReport) -> Iterator[tuple[str, str]]:
    """(split, text) of every document, reading the files once."""
    eval_fraction = float(src.get("eval_fraction", 0.0))
    for doc in iter_documents(name, src, report):
        yield split_of(doc["id"], eval_fraction, name), doc["text"]


def _iter_texts_tfds(builder, process_index: int, process_count: int) -> Iterator[tuple[str, str]]:
    """(split, text) from the prepared records; the host shard is taken by tf.data."""
    # TensorFlow is heavy and optional: imported only on the tfds path.
    import tensorflow as tf
    import tensorflow_datasets as tfds

    read_config = tfds.ReadConfig(shuffle_seed=0, interleave_cycle_length=1, add_tfds_id=False)
    for split in ("train", "eval"):
        ds = builder.as_dataset(split=split, shuffle_files=False, read_config=read_config)
        ds = ds.map(lambda ex: ex["text"], num_parallel_calls=tf.data.AUTOTUNE)
        if process_count > 1:
            ds = ds.shard(process_count, process_index)
        for chunk in tfds.as_numpy(ds.batch(1024).prefetch(2)):
            for b in chunk:
                yield split, b.decode("utf-8")


class ChunkedEncoder:
    """Documents of each split encoded as [BOS] ids [EOS] in bounded chunks (at most ENCODE_CHUNK
    documents or ENCODE_CHUNK_CHARS characters) and handed to `sink(split, TokenizedDocs)`, so peak
    memory is one chunk, never the whole source. The in-process token cache and the store builder
    (data/store/build.py) both tokenize through it, so their documents are the same."""

    def __init__(self, tokenizer: Tokenizer, threads: int, sink):
        self.tokenizer, self.threads, self.sink = tokenizer, threads, sink
        self._texts: dict[str, list[str]] = {split: [] for split in SPLITS}
        self._chars = {split: 0 for split in SPLITS}

    def add(self, split: str, text: str) -> None:
        self._texts[split].append(text)
        self._chars[split] += len(text)
        if len(self._texts[split]) >= ENCODE_CHUNK or self._chars[split] >= ENCODE_CHUNK_CHARS:
            self.flush(split)

    def flush(self, split: str) -> None:
        if self._texts[split]:
            ids = self.tokenizer.encode_batch(self._texts[split], bos=True, eos=True, num_threads=self.threads)
            self._texts[split], self._chars[split] = [], 0
            part = TokenizedDocs.from_lists(ids)
            del ids
            self.sink(split, part)

    def close(self) -> None:
        for split in SPLITS:
            self.flush(split)


def _tokenize_texts(texts: Iterator[tuple[str, str]], tokenizer: Tokenizer, threads: int, max_docs: int,
                    shard: tuple[int, int] | None, out_dir: str) -> dict[str, int]:
    """Tokenize per split through ChunkedEncoder, streaming each chunk into `out_dir` (token_store
    files); with `shard` = (index, count) keep only the documents whose ordinal within their split is
    index modulo count. Returns documents per split."""
    writers = {split: SplitWriter(out_dir, split) for split in SPLITS}
    encoder = ChunkedEncoder(tokenizer, threads, lambda split, part: writers[split].append(part.tokens, part.offsets))
    seen = {"train": 0, "eval": 0}
    kept = {"train": 0, "eval": 0}
    try:
        for split, text in texts:
            i = seen[split]
            seen[split] += 1
            if shard is not None and i % shard[1] != shard[0]:
                continue
            if max_docs and kept[split] >= max_docs:
                continue
            kept[split] += 1
            encoder.add(split, text)
        encoder.close()
    finally:
        for w in writers.values():
            w.close()
    return {split: w.num_docs for split, w in writers.items()}


def _cache_complete(cache: str) -> bool:
    """A cache directory in the current (memmapped .npy) format; an old `.npz` one counts as a miss."""
    names = ["report.json"] + [os.path.basename(f) for sp in SPLITS for f in split_files(cache, sp)]
    return all(os.path.isfile(os.path.join(cache, n)) for n in names)


def _scratch_dir(data_dir: str) -> str:
    """A fresh directory for an uncached token store: under data_dir/tokenized (the disk that holds
    the data; /tmp is often a RAM-backed tmpfs, which would defeat the point), else a tempfile dir."""
    try:
        root = os.path.join(data_dir, "tokenized")
        os.makedirs(root, exist_ok=True)
        return tempfile.mkdtemp(prefix=f"tmp-{os.getpid()}-", dir=root)
    except OSError:
        return tempfile.mkdtemp(prefix="mellama-tokens-")


def _publish(tmp: str, cache: str) -> None:
    """Atomically move a finished store into place. An old-format (`.npz`) or incomplete cache dir
    at `cache` is moved aside and removed; a complete one published by another process is kept."""
    try:
        os.rename(tmp, cache)
        return
    except OSError:
        if _cache_complete(cache):
            return
    stale = cache + f".stale{os.getpid()}"
    log.info("data: replacing an old-format token cache %s", cache)
    try:
        os.rename(cache, stale)
        os.rename(tmp, cache)
    except OSError:
        if not _cache_complete(cache):
            raise
    shutil.rmtree(stale, ignore_errors=True)


def load_source_tokens(name: str, data_config, tokenizer: Tokenizer, process_index: int,
                       process_count: int) -> tuple[dict[str, TokenizedDocs], BadInputReport]:
    """Train and eval tokens of one source for this host, memory-mapped from the on-disk store
    (the cache under data_dir/tokenized, built on a miss; see the module docstring)."""
    src = source_dict(data_config.sources[name])
    fp = source_fingerprint(name, src)
    max_docs = int(data_config.get("max_docs_per_source", 0))
    key = hashlib.sha256(f"{fp}|{tokenizer.sha256()}|{max_docs}|{process_index}/{process_count}".encode()).hexdigest()[:20]
    data_dir = os.path.expanduser(data_config.data_dir)
    cache = os.path.join(data_dir, "tokenized", f"{name}-{key}")
    use_cache = bool(data_config.get("cache_tokenized", True))
    if use_cache and _cache_complete(cache):
        with open(os.path.join(cache, "report.json"), encoding="utf-8") as f:
            report = BadInputReport.from_dict(json.load(f))
        report.check(float(data_config.max_bad_fraction))
        return load_store(cache), report

    if use_cache:
        tmp = cache + f".tmp{os.getpid()}"
        os.makedirs(tmp, exist_ok=True)
    else:
        tmp = _scratch_dir(data_dir)
    ok = False
    try:
        threads = int(data_config.get("tokenize_threads", 0))
        if _use_tfds(str(data_config.get("reader", "auto"))):
            # tfds_builder imports tensorflow_datasets at import time (heavy, optional)
            from mellama_jax.data.sources.tfds_builder import prepare_source

            builder, report = prepare_source(name, src, data_dir, fp, float(data_config.max_bad_fraction))
            _tokenize_texts(_iter_texts_tfds(builder, process_index, process_count), tokenizer, threads,
                            max_docs, None, tmp)
        else:
            report = BadInputReport(name)
            shard = (process_index, process_count) if process_count > 1 else None
            _tokenize_texts(_iter_texts_direct(name, src, report), tokenizer, threads, max_docs, shard, tmp)
            report.check(float(data_config.max_bad_fraction))
        if not use_cache:
            # Map the files, then (finally, below) unlink them at once: the open mappings keep the
            # data readable (POSIX) and the disk space comes back when the arrays are dropped.
            out = load_store(tmp)
        else:
            with open(os.path.join(tmp, "report.json"), "w", encoding="utf-8") as f:
                json.dump(report.to_dict(), f)
            _publish(tmp, cache)
            out = load_store(cache)
        ok = True
        return out, report
    finally:
        if not ok or not use_cache or os.path.isdir(tmp):  # failed, uncached, or lost a publish race
            shutil.rmtree(tmp, ignore_errors=True)


def global_doc_ids(num_docs: int, process_index: int, process_count: int) -> np.ndarray:
    """Each local document's ordinal in its source's split across all hosts (host h holds ordinals
    h, h + count, ...: see _tokenize_texts): a document id that does not change with the host count."""
    return np.arange(num_docs, dtype=np.int64) * int(process_count) + int(process_index)


def subsample_documents(docs: TokenizedDocs, fraction: float, *, seed: int, source: str,
                        process_index: int = 0, process_count: int = 1) -> TokenizedDocs:
    """round(fraction x tokens) tokens of `docs`: whole documents in the order of a hash of (seed,
    source, document id), the last one cut to a prefix so the count is exact (a per-document coin
    would miss a small source's share by a whole document). The kept documents stay in their
    original order, in RAM (a short run's subsample is about its own budget, not the corpus).
    A pure function of its arguments, so a resumed run keeps exactly the same subsample."""
    if fraction >= 1.0:
        return docs
    want = int(round(fraction * docs.num_tokens))
    lengths = np.diff(np.asarray(docs.offsets, np.int64))
    order = np.argsort(document_keys(seed, source, global_doc_ids(docs.num_docs, process_index, process_count)),
                       kind="stable")
    cum = np.cumsum(lengths[order])
    whole = int(np.searchsorted(cum, want, side="right"))  # documents that fit entirely
    keep = np.zeros(docs.num_docs, np.int64)                # tokens kept per document
    keep[order[:whole]] = lengths[order[:whole]]
    if whole < len(order):
        keep[order[whole]] = want - (int(cum[whole - 1]) if whole else 0)
    kept = np.flatnonzero(keep)
    offsets = np.zeros(len(kept) + 1, np.int64)
    np.cumsum(keep[kept], out=offsets[1:])
    starts = np.asarray(docs.offsets[:-1], np.int64)[kept]
    tokens = np.concatenate([np.asarray(docs.tokens[s:s + n]) for s, n in zip(starts, keep[kept])]) \
        if len(kept) else np.zeros(0, np.int32)
    return TokenizedDocs(tokens.astype(np.int32, copy=False), offsets)
