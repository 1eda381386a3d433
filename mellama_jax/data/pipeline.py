"""The pretraining input pipeline: documents -> tokens -> fixed-length rows -> weighted mixture -> batches.

Interface (what the train loop consumes): `build_train_pipeline(data_config, *, global_batch_size,
process_index, process_count) -> TrainPipeline` with `.batch(step)`, `.eval_batches(source, n)`,
`.stats()`, `.state()` / `.restore(state)`, `.source_names`, `.vocab_size`, `.tokenizer`.

How a batch is made, and why resume is exact:
  1. Each source is read (tfds records, or the format readers directly), split into train/eval by a
     hash of the doc id, sharded across hosts by document ordinal (host h keeps ordinals i with
     i % process_count == h, so hosts see disjoint documents), and tokenized once as
     [BOS] + ids + [EOS] per document into one flat int32 array plus int64 document offsets.
     These live on disk, not in RAM (a Me-LLaMA corpus is tens of billions of tokens, 4 bytes each):
     tokenizing streams each encoded chunk (<= _ENCODE_CHUNK documents / _ENCODE_CHUNK_CHARS chars)
     into `.npy` files (token_store.py), so peak memory is one chunk, and training maps them with
     np.load(mmap_mode="r"), paging in only the windows it reads. With cache_tokenized (default) the
     files are built in `<cache>.tmp<pid>` and renamed into data_dir/tokenized/<source>-<key> once
     complete (a crash never leaves a half cache; an old `.npz` cache under the same key is a miss and
     is replaced). With cache_tokenized=False they are built in a scratch dir under
     data_dir/tokenized (the data's disk; /tmp is often RAM-backed tmpfs), mapped, and unlinked at
     once: the mappings keep the data readable and the space is freed when the pipeline is dropped.
     Everything downstream slices the mapped arrays (no full copies); only per-document metadata
     (offsets, packing pieces) is held in RAM.
  2. The token stream becomes rows of seq_len targets: "concat" cuts the stream into windows of
     seq_len + 1 tokens with stride seq_len (every token is a target exactly once, attention runs
     across document boundaries as in LLaMA pretraining); "pack" places whole documents (split into
     seq_len + 1 pieces when longer) into rows by first-fit, with segment_ids 1, 2, ... per document,
     positions restarting at 0, padding with segment 0 and loss_mask 0.
  3. Row j of the batch at `step` is the host's global row r = step * local_batch + j. Its source is
     drawn from the mixture weights by a counter-based hash of (seed, host, r); it takes the k-th row of
     that source, k = how many earlier rows chose that source (prefix counts, cached), from the
     source's row permutation for epoch k // n_rows (seeded by seed, host, source, epoch).
     So a batch is a pure function of (seed, step, process_index) and the data: resuming at any step
     reproduces the same batches without saving iterator state.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from typing import Any, Iterator

import numpy as np

from mellama_jax.data.config import parse_mixture_stages, resolved_data_config, source_paths
from mellama_jax.data.sources.readers import expand_paths, iter_documents
from mellama_jax.data.sources.report import BadInputReport, DataError
from mellama_jax.data.sources.splits import split_of
from mellama_jax.data.token_store import SplitWriter, load_split, split_files
from mellama_jax.tokenizer import Tokenizer, load_tokenizer

__all__ = ["TrainPipeline", "build_train_pipeline", "TokenizedDocs", "pack_rows", "concat_rows",
           "mixture_choices", "load_source_tokens"]

log = logging.getLogger("mellama_jax.data")
_PIPELINE_VERSION = "1"
_COUNT_STRIDE = 256          # steps between cached prefix counts of the mixture draws
_ENCODE_CHUNK = 4096         # documents per sentencepiece batch call
_ENCODE_CHUNK_CHARS = 2 << 20  # ... and at most this many characters (bounds tokenizing memory)


# --------------------------------------------------------------------------------------------------
# Tokenized documents of one (source, split, host shard)
# --------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class TokenizedDocs:
    """Documents as one flat token array; document i is tokens[offsets[i]:offsets[i + 1]].
    In the pipeline both arrays are read-only np.memmap views of the token store."""

    tokens: np.ndarray   # int32 [total]
    offsets: np.ndarray  # int64 [n_docs + 1]

    @property
    def num_docs(self) -> int:
        return len(self.offsets) - 1

    @property
    def num_tokens(self) -> int:
        return int(self.offsets[-1])

    @classmethod
    def from_lists(cls, docs: list[list[int]]) -> "TokenizedDocs":
        lengths = np.fromiter((len(d) for d in docs), dtype=np.int64, count=len(docs))
        offsets = np.zeros(len(docs) + 1, np.int64)
        np.cumsum(lengths, out=offsets[1:])
        tokens = np.fromiter((t for d in docs for t in d), dtype=np.int32, count=int(offsets[-1]))
        return cls(tokens, offsets)

    @classmethod
    def concatenate(cls, parts: list["TokenizedDocs"]) -> "TokenizedDocs":
        """In-RAM concatenation (small inputs only; the pipeline streams to disk instead)."""
        if not parts:
            return cls(np.zeros(0, np.int32), np.zeros(1, np.int64))
        tokens = np.concatenate([p.tokens for p in parts])
        offs, base = [np.zeros(1, np.int64)], 0
        for p in parts:
            offs.append(p.offsets[1:] + base)
            base += p.num_tokens
        return cls(tokens, np.concatenate(offs))


def _fingerprint(name: str, src: dict[str, Any]) -> str:
    """Hash of the source config and its matched files (path, size, mtime)."""
    files = expand_paths(name, list(source_paths(src)), src["format"])
    stats = [(p, os.path.getsize(p), int(os.path.getmtime(p))) for p in files]
    if src.get("exclude_ids"):  # the list's content, not only its name, decides what is dropped
        from mellama_jax.data.doc_filters import exclude_ids_sha256
        stats.append(("exclude_ids", exclude_ids_sha256(src["exclude_ids"])))
    blob = json.dumps({"v": _PIPELINE_VERSION, "name": name, "src": src, "files": stats}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def _use_tfds(reader: str) -> bool:
    if reader == "direct":
        return False
    if reader not in ("tfds", "auto"):
        raise DataError(f"data.reader={reader!r}: expected 'tfds', 'direct' or 'auto'")
    try:
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


def _tokenize_texts(texts: Iterator[tuple[str, str]], tokenizer: Tokenizer, threads: int, max_docs: int,
                    shard: tuple[int, int] | None, out_dir: str) -> dict[str, int]:
    """Tokenize as [BOS] ids [EOS] per document, per split, streaming each encoded chunk into
    `out_dir` (token_store files); with `shard` = (index, count) keep only the documents whose ordinal
    within their split is index modulo count. Peak memory is one chunk (at most _ENCODE_CHUNK
    documents or _ENCODE_CHUNK_CHARS characters), never the whole source. Returns documents per split."""
    writers = {split: SplitWriter(out_dir, split) for split in ("train", "eval")}
    chunks: dict[str, list[str]] = {"train": [], "eval": []}
    chars = {"train": 0, "eval": 0}
    seen = {"train": 0, "eval": 0}
    kept = {"train": 0, "eval": 0}

    def flush(split: str) -> None:
        if chunks[split]:
            ids = tokenizer.encode_batch(chunks[split], bos=True, eos=True, num_threads=threads)
            chunks[split], chars[split] = [], 0
            part = TokenizedDocs.from_lists(ids)
            del ids
            writers[split].append(part.tokens, part.offsets)

    try:
        for split, text in texts:
            i = seen[split]
            seen[split] += 1
            if shard is not None and i % shard[1] != shard[0]:
                continue
            if max_docs and kept[split] >= max_docs:
                continue
            kept[split] += 1
            chunks[split].append(text)
            chars[split] += len(text)
            if len(chunks[split]) >= _ENCODE_CHUNK or chars[split] >= _ENCODE_CHUNK_CHARS:
                flush(split)
        for split in writers:
            flush(split)
    finally:
        for w in writers.values():
            w.close()
    return {split: w.num_docs for split, w in writers.items()}


def _cache_complete(cache: str) -> bool:
    """A cache directory in the current (memmapped .npy) format; an old `.npz` one counts as a miss."""
    names = ["report.json"] + [os.path.basename(f) for sp in ("train", "eval") for f in split_files(cache, sp)]
    return all(os.path.isfile(os.path.join(cache, n)) for n in names)


def _load_store(directory: str) -> dict[str, TokenizedDocs]:
    out = {}
    for split in ("train", "eval"):
        tokens, offsets = load_split(directory, split)
        out[split] = TokenizedDocs(tokens, offsets)
    return out


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
    src = data_config.sources[name].to_dict() if hasattr(data_config.sources[name], "to_dict") \
        else dict(data_config.sources[name])
    fp = _fingerprint(name, src)
    max_docs = int(data_config.get("max_docs_per_source", 0))
    key = hashlib.sha256(f"{fp}|{tokenizer.sha256()}|{max_docs}|{process_index}/{process_count}".encode()).hexdigest()[:20]
    data_dir = os.path.expanduser(data_config.data_dir)
    cache = os.path.join(data_dir, "tokenized", f"{name}-{key}")
    use_cache = bool(data_config.get("cache_tokenized", True))
    if use_cache and _cache_complete(cache):
        with open(os.path.join(cache, "report.json"), encoding="utf-8") as f:
            report = BadInputReport.from_dict(json.load(f))
        report.check(float(data_config.max_bad_fraction))
        return _load_store(cache), report

    if use_cache:
        tmp = cache + f".tmp{os.getpid()}"
        os.makedirs(tmp, exist_ok=True)
    else:
        tmp = _scratch_dir(data_dir)
    ok = False
    try:
        threads = int(data_config.get("tokenize_threads", 0))
        if _use_tfds(str(data_config.get("reader", "auto"))):
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
            out = _load_store(tmp)
        else:
            with open(os.path.join(tmp, "report.json"), "w", encoding="utf-8") as f:
                json.dump(report.to_dict(), f)
            _publish(tmp, cache)
            out = _load_store(cache)
        ok = True
        return out, report
    finally:
        if not ok or not use_cache or os.path.isdir(tmp):  # failed, uncached, or lost a publish race
            shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------------------------------
# Rows: fixed-length training examples of one source
# --------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class ConcatRows:
    """Windows of seq_len + 1 tokens at stride seq_len over the document stream."""

    tokens: np.ndarray
    seq_len: int
    keep_partial: bool = False  # eval: the last, shorter window is kept (padded) instead of dropped

    @property
    def num_rows(self) -> int:
        n = max(0, len(self.tokens) - 1)
        return -(-n // self.seq_len) if self.keep_partial else n // self.seq_len

    @property
    def fill(self) -> float:
        return 1.0

    def write(self, i: int, out: dict[str, np.ndarray], j: int, source_id: int) -> None:
        w = self.tokens[i * self.seq_len: i * self.seq_len + self.seq_len + 1]
        n = len(w) - 1
        out["inputs"][j, :n] = w[:-1]
        out["targets"][j, :n] = w[1:]
        out["positions"][j, :n] = np.arange(n, dtype=np.int32)
        out["segment_ids"][j, :n] = 1
        out["loss_mask"][j, :n] = 1.0
        out["source_ids"][j, :n] = source_id


def concat_rows(docs: TokenizedDocs, seq_len: int, for_eval: bool = False) -> ConcatRows:
    tokens = docs.tokens
    if not for_eval and 0 < len(tokens) < seq_len + 1:  # a source smaller than one window: repeat it
        tokens = np.tile(tokens, (seq_len + 1) // len(tokens) + 1)
    return ConcatRows(tokens, seq_len, keep_partial=for_eval)


@dataclasses.dataclass
class PackedRows:
    """Rows of whole documents: row i holds pieces row_ptr[i]:row_ptr[i + 1] of (start, n) where a
    piece contributes tokens[start:start + n + 1] (n input/target pairs)."""

    tokens: np.ndarray
    piece_start: np.ndarray
    piece_len: np.ndarray
    row_ptr: np.ndarray
    seq_len: int

    @property
    def num_rows(self) -> int:
        return len(self.row_ptr) - 1

    @property
    def fill(self) -> float:
        """Mean share of a row's positions holding real tokens."""
        return float(self.piece_len.sum()) / max(1, self.num_rows * self.seq_len)

    def write(self, i: int, out: dict[str, np.ndarray], j: int, source_id: int) -> None:
        pos = 0
        for seg, p in enumerate(range(self.row_ptr[i], self.row_ptr[i + 1]), start=1):
            s, n = int(self.piece_start[p]), int(self.piece_len[p])
            out["inputs"][j, pos:pos + n] = self.tokens[s:s + n]
            out["targets"][j, pos:pos + n] = self.tokens[s + 1:s + n + 1]
            out["positions"][j, pos:pos + n] = np.arange(n, dtype=np.int32)
            out["segment_ids"][j, pos:pos + n] = seg
            out["loss_mask"][j, pos:pos + n] = 1.0
            out["source_ids"][j, pos:pos + n] = source_id
            pos += n


def pack_rows(docs: TokenizedDocs, seq_len: int, open_rows: int = 32) -> PackedRows:
    """First-fit packing (over the `open_rows` most recent rows) of documents into rows of seq_len
    targets; documents longer than seq_len + 1 tokens are cut into pieces of at most that."""
    lengths = np.diff(docs.offsets) - 1          # input/target pairs per document
    starts, lens = [], []
    for off, n in zip(docs.offsets[:-1].tolist(), lengths.tolist()):
        while n > 0:
            k = min(n, seq_len)
            starts.append(off)
            lens.append(k)
            off += k
            n -= k
    rows: list[list[int]] = []
    free: list[int] = []                          # free space of the open rows (tail of `rows`)
    first_open = 0
    for p, n in enumerate(lens):
        placed = False
        for r in range(first_open, len(rows)):
            if free[r] >= n:
                rows[r].append(p)
                free[r] -= n
                placed = True
                break
        if not placed:
            rows.append([p])
            free.append(seq_len - n)
            if len(rows) - first_open > open_rows:
                first_open += 1
    order = [p for r in rows for p in r]
    row_ptr = np.zeros(len(rows) + 1, np.int64)
    np.cumsum([len(r) for r in rows], out=row_ptr[1:])
    return PackedRows(docs.tokens, np.asarray(starts, np.int64)[order] if order else np.zeros(0, np.int64),
                      np.asarray(lens, np.int64)[order] if order else np.zeros(0, np.int64), row_ptr, seq_len)


# --------------------------------------------------------------------------------------------------
# Mixture: counter-based, deterministic source draws
# --------------------------------------------------------------------------------------------------
def _splitmix64(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def mixture_choices(seed: int, host: int, rows: np.ndarray, cum_weights: np.ndarray) -> np.ndarray:
    """Source index of each global row index in `rows` (pure function of seed, host, row)."""
    salt = _splitmix64(np.array([(seed & 0xFFFFFFFF) << 20 | (host & 0xFFFFF)], np.uint64))[0]
    u = (_splitmix64(rows.astype(np.uint64) ^ salt) >> np.uint64(11)).astype(np.float64) / float(1 << 53)
    return np.searchsorted(cum_weights, u, side="right").astype(np.int64)


# --------------------------------------------------------------------------------------------------
# The pipeline
# --------------------------------------------------------------------------------------------------
class TrainPipeline:
    """Host-local batches of the weighted source mixture, a pure function of (seed, step, host)."""

    def __init__(self, data_config, *, global_batch_size: int, process_index: int, process_count: int,
                 tokenizer: Tokenizer | None = None):
        if global_batch_size % process_count:
            raise ValueError(f"global_batch_size={global_batch_size} is not divisible by "
                             f"process_count={process_count}")
        self.config = data_config
        self.process_index, self.process_count = int(process_index), int(process_count)
        self.local_batch = global_batch_size // process_count
        self.seq_len = int(data_config.seq_len)
        self.seed = int(data_config.seed)
        self.packing = str(data_config.packing)
        if self.packing not in ("concat", "pack"):
            raise ValueError(f"data.packing={self.packing!r}: expected 'concat' or 'pack'")
        # The train loop passes the tokenizer it chose (config.data.tokenizer_path, else the one of
        # config.model.init_from) after checking it against the model.
        if tokenizer is None:
            if not data_config.get("tokenizer_path", ""):
                raise DataError("data.tokenizer_path is empty: name a tokenizer.model (the train loop fills "
                                "it in from config.model.init_from)")
            tokenizer = load_tokenizer(os.path.expanduser(data_config.tokenizer_path))
        self.tokenizer = tokenizer
        self.vocab_size = self.tokenizer.vocab_size

        # Spec applied, perplexity text set added as an eval-only source (see data/config.py).
        try:
            data_config = self.config = resolved_data_config(data_config)
        except ValueError as err:
            raise DataError(str(err)) from None
        mixture = {k: float(v) for k, v in dict(data_config.mixture).items()}
        for name, w in mixture.items():
            if name not in data_config.sources:
                raise DataError(f"data.mixture.{name}: no such source in data.sources "
                                f"({sorted(data_config.sources.keys())})")
            if w < 0:
                raise DataError(f"data.mixture.{name}={w}: weights must be >= 0")
        try:
            self.stages = parse_mixture_stages(str(data_config.get("mixture_stages", "") or ""), mixture)
        except ValueError as err:
            raise DataError(str(err)) from None
        # Every source with a mixture entry is loaded and evaluated; one whose weight is 0 in every
        # stage is never drawn for training (eval only: forgetting / held-out measures).
        self.source_names = list(mixture)
        if not any(w > 0 for w in mixture.values()):
            raise DataError("data.mixture: every weight is zero; nothing to train on")
        self._trained = [any(st.weights[n] > 0 for st in self.stages) for n in self.source_names]
        weights = np.array([mixture[n] for n in self.source_names])
        self.weights = weights / weights.sum()  # target token fractions (of the first stage)

        self._reports: dict[str, BadInputReport] = {}
        self._docs: dict[str, dict[str, TokenizedDocs]] = {}
        self._rows, self._eval_rows = [], {}
        self._timings = {}
        for name, trained in zip(self.source_names, self._trained):
            t0 = time.perf_counter()
            docs, report = self._load_source(name, data_config)
            self._timings[name] = time.perf_counter() - t0
            self._reports[name], self._docs[name] = report, docs
            if trained and docs["train"].num_docs == 0:
                raise DataError(
                    f"source {name!r} has mixture weight {mixture[name]} but its train split is empty on "
                    f"host {self.process_index}/{self.process_count} (paths {list(data_config.sources[name].paths)}, "
                    f"{report.good} documents read, eval_fraction {data_config.sources[name].eval_fraction})")
            self._rows.append(self._make_rows(docs["train"]) if trained
                              else ConcatRows(np.zeros(0, np.int32), self.seq_len))
            self._eval_rows[name] = self._make_rows(docs["eval"], True) if docs["eval"].num_docs else None
            log.info("data: %s", report.summary())
        # Rows are drawn with probability ~ weight / fill so that *token* fractions match the weights
        # even when packed rows of different sources carry different amounts of padding.
        fills = np.array([r.fill if r.num_rows else 1.0 for r in self._rows])
        self._stage_cums = [self._cum_weights(st.weights, fills) for st in self.stages]
        self.row_probs = np.diff(np.concatenate([[0.0], self._stage_cums[0]]))
        self._cum = self._stage_cums[0]
        self._count_cache: dict[int, np.ndarray] = {0: np.zeros(len(self.source_names), np.int64)}
        self._perm_cache: dict[tuple[int, int], np.ndarray] = {}

    def _cum_weights(self, weights: dict[str, float], fills: np.ndarray) -> np.ndarray:
        """Cumulative row-draw probabilities of one stage; the last drawable source ends at exactly 1,
        so a zero-weight source after it is never drawn."""
        w = np.array([weights[n] for n in self.source_names], np.float64)
        w = w / w.sum()
        row_p = w / fills
        cum = np.cumsum(row_p / row_p.sum())
        cum[int(np.flatnonzero(w > 0)[-1]):] = 1.0
        return cum

    def _load_source(self, name: str, data_config) -> tuple[dict[str, TokenizedDocs], BadInputReport]:
        """Train/eval documents of one source (the SFT pipeline, mellama_jax.sft.data, overrides this)."""
        return load_source_tokens(name, data_config, self.tokenizer, self.process_index, self.process_count)

    def _make_rows(self, docs: TokenizedDocs, for_eval: bool = False):
        if self.packing == "concat":
            return concat_rows(docs, self.seq_len, for_eval)
        return pack_rows(docs, self.seq_len)

    # --- mixture bookkeeping -------------------------------------------------------------------
    def stage_of(self, step: int) -> int:
        """Index of the mixture stage that `step` (0-based) trains in."""
        return max(i for i, st in enumerate(self.stages) if st.start_step <= step)

    def _choices(self, r0: int, r1: int) -> np.ndarray:
        """Source of each host row in [r0, r1): each row drawn with the weights of its step's stage."""
        b = self.local_batch
        parts = []
        for i, st in enumerate(self.stages):
            end = self.stages[i + 1].start_step * b if i + 1 < len(self.stages) else r1
            lo, hi = max(r0, st.start_step * b), min(r1, end)
            if lo < hi:
                parts.append(mixture_choices(self.seed, self.process_index, np.arange(lo, hi, dtype=np.int64),
                                             self._stage_cums[i]))
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)

    def stage_row_counts(self, step: int) -> tuple[int, np.ndarray]:
        """(stage of the last step before `step`, this host's rows per source drawn in that stage up
        to `step`, then their total): realised stage fractions, a pure function like the batches."""
        stage = self.stage_of(max(step - 1, 0))
        counts = self._counts_before(step) - self._counts_before(self.stages[stage].start_step)
        return stage, np.concatenate([counts, [counts.sum()]]).astype(np.int64)

    def _counts_before(self, step: int) -> np.ndarray:
        """How many rows of each source the host drew before `step` (cached every _COUNT_STRIDE steps)."""
        base = (step // _COUNT_STRIDE) * _COUNT_STRIDE
        known = max(k for k in self._count_cache if k <= base)
        counts = self._count_cache[known].copy()
        chunk = _COUNT_STRIDE * self.local_batch * max(1, (1 << 20) // (_COUNT_STRIDE * self.local_batch))
        r, end = known * self.local_batch, base * self.local_batch
        while r < end:  # extend the cache to `base` in bounded chunks
            r1 = min(end, r + chunk)
            counts += np.bincount(self._choices(r, r1), minlength=len(self.source_names))
            r = r1
            done = r // self.local_batch
            if done % _COUNT_STRIDE == 0:
                self._count_cache[done] = counts.copy()
        if base * self.local_batch < step * self.local_batch:
            counts = counts + np.bincount(self._choices(base * self.local_batch, step * self.local_batch),
                                          minlength=len(self.source_names))
        return counts

    def _row_index(self, s: int, k: int) -> int:
        n = self._rows[s].num_rows
        epoch, i = divmod(k, n)
        key = (s, epoch)
        perm = self._perm_cache.get(key)
        if perm is None:
            if len(self._perm_cache) > 2 * len(self.source_names):
                self._perm_cache.clear()
            rng = np.random.default_rng([self.seed, self.process_index, s, epoch, 0x5EED])
            perm = self._perm_cache[key] = rng.permutation(n)
        return int(perm[i])

    # --- batches -------------------------------------------------------------------------------
    def _empty(self, b: int) -> dict[str, np.ndarray]:
        s = self.seq_len
        return {"inputs": np.full((b, s), self.tokenizer.pad_id, np.int32),
                "targets": np.full((b, s), self.tokenizer.pad_id, np.int32),
                "positions": np.zeros((b, s), np.int32), "segment_ids": np.zeros((b, s), np.int32),
                "loss_mask": np.zeros((b, s), np.float32), "source_ids": np.full((b, s), -1, np.int32)}

    def batch(self, step: int) -> dict[str, np.ndarray]:
        """The host-local batch for `step` (the same for the same seed, step and host, always)."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        b = self.local_batch
        choices = self._choices(step * b, (step + 1) * b)
        counts = self._counts_before(step)
        out = self._empty(b)
        for j, s in enumerate(choices.tolist()):
            k = int(counts[s])
            counts[s] += 1
            self._rows[s].write(self._row_index(s, k), out, j, s)
        return out

    def eval_batches(self, source_name: str, num_batches: int) -> list[dict[str, np.ndarray]]:
        """Held-out batches of one source, in a fixed order; rows past its end are all padding."""
        if source_name not in self._eval_rows:
            raise KeyError(f"eval_batches: unknown source {source_name!r}; have {self.source_names}")
        rows = self._eval_rows[source_name]
        if rows is None or rows.num_rows == 0:
            log.warning("data: source %r has no held-out documents on this host (eval_fraction=%s)",
                        source_name, self.config.sources[source_name].eval_fraction)
            return []
        s = self.source_names.index(source_name)
        out = []
        for i in range(num_batches):
            batch = self._empty(self.local_batch)
            for j in range(self.local_batch):
                r = i * self.local_batch + j
                if r < rows.num_rows:
                    rows.write(r, batch, j, s)
            out.append(batch)
        return out

    # --- bookkeeping ---------------------------------------------------------------------------
    def state(self) -> dict:
        """Nothing to save beyond these checks: batches are a pure function of (seed, step, host)."""
        state = {"kind": "stateless", "seed": self.seed, "packing": self.packing, "seq_len": self.seq_len,
                 "sources": self.source_names,
                 "rows": {n: int(r.num_rows) for n, r in zip(self.source_names, self._rows)}}
        if len(self.stages) > 1:
            state["stages"] = [[st.start_step, [st.weights[n] for n in self.source_names]] for st in self.stages]
        return state

    def fingerprint(self) -> dict:
        """What this run's data is (for checkpoint provenance): per-source config + file stats
        hashes, mixture, layout and tokenizer."""
        sources = {}
        for name in self.source_names:
            src = self.config.sources[name]
            sources[name] = _fingerprint(name, src.to_dict() if hasattr(src, "to_dict") else dict(src))
        return {"sources": sources, "mixture": dict(zip(self.source_names, map(float, self.weights))),
                "seq_len": self.seq_len, "packing": self.packing, "seed": self.seed,
                "tokenizer_sha256": self.tokenizer.sha256()}

    def restore(self, state: dict) -> None:
        """Check that a resumed run reads the same data the same way (else batches would differ)."""
        mine = self.state()
        diff = {k: (state.get(k), v) for k, v in mine.items() if state.get(k) != v}
        if diff:
            raise DataError(f"data pipeline differs from the checkpointed one (saved, now): {diff}; "
                            "resuming would not reproduce the same batches")

    def stats(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for s, name in enumerate(self.source_names):
            rep, docs = self._reports[name], self._docs[name]
            out[f"data/{name}/weight"] = float(self.weights[s])
            out[f"data/{name}/documents"] = rep.good
            out[f"data/{name}/bad_items"] = rep.num_bad
            for reason, n in rep.bad.items():
                out[f"data/{name}/bad/{reason}"] = n
            out[f"data/{name}/train_docs"] = docs["train"].num_docs
            out[f"data/{name}/train_tokens"] = docs["train"].num_tokens
            out[f"data/{name}/eval_tokens"] = docs["eval"].num_tokens
            out[f"data/{name}/train_rows"] = self._rows[s].num_rows
            out[f"data/{name}/load_seconds"] = round(self._timings[name], 3)
        return out

    def reports(self) -> dict[str, BadInputReport]:
        return dict(self._reports)


def build_train_pipeline(data_config, *, global_batch_size: int, process_index: int = 0,
                         process_count: int = 1, tokenizer: Tokenizer | None = None) -> TrainPipeline:
    return TrainPipeline(data_config, global_batch_size=global_batch_size, process_index=process_index,
                         process_count=process_count, tokenizer=tokenizer)
