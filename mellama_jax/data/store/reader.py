"""Reading a token store (format v1, format.py): each source's documents of a split as one lazy array.

Why lazy: a store of a 129B-token corpus is ~0.5 TB of int32; a host trains on a few rows a step.
`TokenStore.docs(source, split)` gives a `TokenizedDocs` whose `offsets` are the split's document
index (the shards' offsets concatenated and shifted, in RAM: 8 bytes a document) and whose `tokens`
is a `ShardedTokens`: the shards' tokens as one 1-D int32 array that reads only what is sliced.
  - A local store maps each shard with np.load(mmap_mode="r"): no copy, the page cache does the rest.
  - A remote store (gs://, s3://) reads the `.npy` data region by ranged GETs (fs.read_range, retried)
    in aligned blocks through one bounded LRU cache (`BlockCache`, data.store_cache_mb), so a host
    fetches only the blocks holding the rows it draws; `stats()` counts the bytes fetched and the hits.
A shard's `.npy` header is read once, on first use, by one small ranged GET.

The store is checked before it is used: MANIFEST.json must exist (read_manifest refuses a half-built
store), each shard's dtype, length and offsets must agree with the manifest, and `check` refuses a
source built with another tokenizer or split rule (format.check_store_source names both hashes).
"""
from __future__ import annotations

import collections
import concurrent.futures
import hashlib
import io
import json
import os
import struct
import threading
from typing import Any, Callable

import numpy as np

from mellama_jax import fs
from mellama_jax.data.sources.report import BadInputReport, DataError
from mellama_jax.data.store.format import SPLITS, check_store_source, manifest_path, read_manifest, shard_paths
from mellama_jax.data.token_store import TokenizedDocs

__all__ = ["TokenStore", "ShardedTokens", "BlockCache", "open_token_store", "store_sha256",
           "DEFAULT_CACHE_BYTES", "DEFAULT_BLOCK_BYTES"]

DEFAULT_CACHE_BYTES = 256 << 20   # data.store_cache_mb's default
DEFAULT_BLOCK_BYTES = 1 << 20     # bytes per ranged GET of token data (a multiple of 4)
_HEAD_BYTES = 4096                # first GET of a shard: its whole .npy header in practice
_OFFSET_THREADS = 16              # parallel GETs of the offsets files when a remote store opens


class BlockCache:
    """A bounded LRU of fixed-size blocks of remote token data, shared by every shard of a store."""

    def __init__(self, capacity_bytes: int, block_bytes: int = DEFAULT_BLOCK_BYTES):
        self.capacity = int(capacity_bytes)
        self.block_bytes = int(block_bytes)
        self._blocks: collections.OrderedDict[tuple, np.ndarray] = collections.OrderedDict()
        self._size = 0
        self._lock = threading.Lock()
        self.hits = self.misses = self.bytes_fetched = self.evictions = 0

    def get(self, key: tuple, load: Callable[[], np.ndarray]) -> np.ndarray:
        with self._lock:
            block = self._blocks.get(key)
            if block is not None:
                self._blocks.move_to_end(key)
                self.hits += 1
                return block
        block = load()  # outside the lock: a GET must not stall other readers' hits
        with self._lock:
            self.misses += 1
            self.bytes_fetched += block.nbytes
            if key not in self._blocks:
                self._blocks[key] = block
                self._size += block.nbytes
            while self._size > self.capacity and len(self._blocks) > 1:
                _, old = self._blocks.popitem(last=False)
                self._size -= old.nbytes
                self.evictions += 1
        return block

    def count_fetch(self, nbytes: int) -> None:
        """Bytes fetched outside the block path (headers, offsets), for stats()."""
        with self._lock:
            self.bytes_fetched += int(nbytes)

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {"bytes_fetched": self.bytes_fetched, "cache_hits": self.hits, "cache_misses": self.misses,
                    "cache_evictions": self.evictions, "cache_bytes": self._size, "cache_capacity": self.capacity}


class _ShortHeader(Exception):
    """The first GET did not hold the whole `.npy` header: `need` bytes do."""

    def __init__(self, need: int):
        super().__init__(need)
        self.need = need


def _parse_npy_header(head: bytes, url: str) -> tuple[int, np.dtype, tuple]:
    """(data offset, dtype, shape) of a `.npy` file from its first bytes (errors name `url`)."""
    if head[:6] != b"\x93NUMPY" or len(head) < 12:
        raise DataError(f"{url}: not a .npy file (bad magic)")
    major = head[6]
    hlen, prefix = (struct.unpack("<H", head[8:10])[0], 10) if major == 1 else (struct.unpack("<I", head[8:12])[0], 12)
    if len(head) < prefix + hlen:
        raise _ShortHeader(prefix + hlen)
    bio = io.BytesIO(head[:prefix + hlen])
    version = np.lib.format.read_magic(bio)
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, fortran, dtype = read(bio)
    if fortran and len(shape) > 1:
        raise DataError(f"{url}: a Fortran-ordered array; expected a 1-D array")
    return prefix + hlen, np.dtype(dtype), tuple(shape)


class _RemoteShard:
    """One remote `.npy` token shard: ranged reads of aligned blocks through the store's cache."""

    def __init__(self, url: str, n: int, cache: BlockCache, key: tuple):
        self.url, self.n, self.cache, self.key = url, int(n), cache, key
        self._data_start: int | None = None
        self._lock = threading.Lock()

    def _start(self) -> int:
        with self._lock:
            if self._data_start is None:
                want = min(_HEAD_BYTES, 64 + 4 * self.n)  # a v1 header is >= 64 bytes: never past EOF
                head = fs.read_range(self.url, 0, want)
                self.cache.count_fetch(len(head))
                try:
                    start, dtype, shape = _parse_npy_header(head, self.url)
                except _ShortHeader as short:
                    head = fs.read_range(self.url, 0, short.need)
                    self.cache.count_fetch(len(head))
                    start, dtype, shape = _parse_npy_header(head, self.url)
                _check_tokens(self.url, dtype, shape, self.n)
                self._data_start = start
            return self._data_start

    def read(self, a: int, b: int) -> np.ndarray:
        """Tokens [a, b) of this shard (0 <= a <= b <= n)."""
        start = self._start()
        per = self.cache.block_bytes // 4
        k0, k1 = a // per, (b - 1) // per if b > a else a // per - 1
        parts = []
        for k in range(k0, k1 + 1):
            lo, hi = k * per, min((k + 1) * per, self.n)

            def load(lo=lo, hi=hi) -> np.ndarray:
                raw = fs.read_range(self.url, start + 4 * lo, start + 4 * hi)
                return np.frombuffer(raw, dtype="<i4")

            block = self.cache.get((self.key, k), load)
            parts.append(block[max(a - lo, 0): min(b, hi) - lo])
        if not parts:
            return np.zeros(0, np.int32)
        return parts[0] if len(parts) == 1 else np.concatenate(parts)


class _LocalShard:
    """One local `.npy` token shard, memory-mapped (no copy)."""

    def __init__(self, path: str, n: int):
        self.url, self.n = path, int(n)
        self._arr: np.ndarray | None = None

    def read(self, a: int, b: int) -> np.ndarray:
        if self._arr is None:
            if not os.path.isfile(_local_path(self.url)):
                raise DataError(f"{self.url}: missing (the manifest lists this shard)")
            arr = np.load(_local_path(self.url), mmap_mode="r")
            _check_tokens(self.url, arr.dtype, arr.shape, self.n)
            self._arr = arr
        return self._arr[a:b]


def _local_path(path: str) -> str:
    return os.path.expanduser(path[len("file://"):] if path.startswith("file://") else path)


def _check_tokens(url: str, dtype: np.dtype, shape: tuple, n: int) -> None:
    if np.dtype(dtype) != np.dtype("<i4") or len(shape) != 1:
        raise DataError(f"{url}: expected a 1-D int32 array, got {np.dtype(dtype)} {shape}")
    if shape[0] != n:
        raise DataError(f"{url}: holds {shape[0]} tokens but the manifest says {n} (a store changed "
                        "after its build, or mixed from two builds)")


class ShardedTokens:
    """A split's token shards as one read-only 1-D int32 array: len(), shape, dtype, slicing (also
    across shard boundaries) and np.asarray (materializes: small sources only)."""

    dtype = np.dtype(np.int32)
    ndim = 1

    def __init__(self, shards: list, limit: int | None = None):
        self._shards = [s for s in shards if s.n > 0]
        sizes = np.array([s.n for s in self._shards], np.int64)
        self._starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        total = int(self._starts[-1])
        self._len = total if limit is None else min(int(limit), total)

    def head(self, n: int) -> "ShardedTokens":
        """The first n tokens (max_docs_per_source: the first documents of a split)."""
        return ShardedTokens(self._shards, min(int(n), self._len))

    def __len__(self) -> int:
        return self._len

    @property
    def shape(self) -> tuple[int]:
        return (self._len,)

    @property
    def size(self) -> int:
        return self._len

    def __getitem__(self, key) -> np.ndarray:
        if isinstance(key, (int, np.integer)):
            i = int(key) + self._len if key < 0 else int(key)
            if not 0 <= i < self._len:
                raise IndexError(f"index {key} out of range for {self._len} tokens")
            return self[i:i + 1][0]
        if not isinstance(key, slice):
            raise TypeError(f"ShardedTokens takes an int or a slice, got {type(key).__name__}")
        a, b, step = key.indices(self._len)
        if step != 1:
            raise ValueError(f"ShardedTokens slices with step 1 only, got {key}")
        if b <= a:
            return np.zeros(0, np.int32)
        i0 = int(np.searchsorted(self._starts, a, side="right")) - 1
        parts = []
        i = i0
        while i < len(self._shards) and self._starts[i] < b:
            s0 = int(self._starts[i])
            parts.append(self._shards[i].read(max(a - s0, 0), min(b, int(self._starts[i + 1])) - s0))
            i += 1
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = np.array(self[0:self._len], dtype=np.int32)
        return out if dtype is None else out.astype(dtype)

    def __repr__(self) -> str:
        return f"ShardedTokens({self._len} tokens in {len(self._shards)} shards)"


def store_sha256(manifest: dict) -> str:
    """The identity of a store's content: its manifest less when and how it was built (a store built
    by 1 worker and by 2 is the same store). A resumed run refuses a store of another identity."""
    content = {k: v for k, v in manifest.items() if k not in ("created", "builder")}
    return hashlib.sha256(json.dumps(content, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _load_offsets(url: str, remote: bool, cache: BlockCache) -> np.ndarray:
    if remote:
        raw = fs.read_bytes(url)
        cache.count_fetch(len(raw))
        return np.load(io.BytesIO(raw))
    if not os.path.isfile(_local_path(url)):
        raise DataError(f"{url}: missing (the manifest lists this shard)")
    return np.load(_local_path(url), mmap_mode="r")


class TokenStore:
    """An opened store: its manifest and, per (source, split), the documents as TokenizedDocs."""

    def __init__(self, url: str, manifest: dict, cache: BlockCache):
        self.url, self.manifest, self.cache = url, manifest, cache
        self.remote = fs.is_url(url)
        self.sha256 = store_sha256(manifest)
        self._docs: dict[tuple[str, str], TokenizedDocs] = {}
        self._lock = threading.Lock()

    @property
    def source_names(self) -> list[str]:
        return sorted(self.manifest["sources"])

    def _source(self, source: str) -> dict:
        sources = self.manifest["sources"]
        if source not in sources:
            raise DataError(f"token store {self.url}: has no source {source!r} (it holds {sorted(sources)}); "
                            "rebuild it with this run's data.sources")
        return sources[source]

    def _split_entry(self, source: str, split: str) -> tuple[list[str], list[int], list[int]]:
        entry = self._source(source)
        where = f"{manifest_path(self.url)}: sources.{source}"
        shards = list(entry.get("shards", []))
        sp = entry.get("splits", {}).get(split)
        if not isinstance(sp, dict):
            raise DataError(f"{where}.splits.{split}: missing")
        docs, toks = list(sp.get("shard_docs", [])), list(sp.get("shard_tokens", []))
        if len(docs) != len(shards) or len(toks) != len(shards):
            raise DataError(f"{where}.splits.{split}: {len(docs)} shard_docs and {len(toks)} shard_tokens for "
                            f"{len(shards)} shards")
        if sum(docs) != int(sp.get("docs", -1)) or sum(toks) != int(sp.get("tokens", -1)):
            raise DataError(f"{where}.splits.{split}: shard counts do not add up to docs={sp.get('docs')} "
                            f"tokens={sp.get('tokens')}")
        return shards, [int(d) for d in docs], [int(t) for t in toks]

    def docs(self, source: str, split: str) -> TokenizedDocs:
        """The documents of one source's split in file order: offsets in RAM, tokens lazy."""
        if split not in SPLITS:
            raise ValueError(f"split {split!r}: expected one of {SPLITS}")
        with self._lock:
            if (source, split) not in self._docs:
                self._docs[(source, split)] = self._open(source, split)
            return self._docs[(source, split)]

    def _open(self, source: str, split: str) -> TokenizedDocs:
        shards, n_docs, n_toks = self._split_entry(source, split)
        paths = [shard_paths(self.url, source, split, s) for s in shards]
        with concurrent.futures.ThreadPoolExecutor(max_workers=_OFFSET_THREADS if self.remote else 1) as pool:
            offs = list(pool.map(lambda p: _load_offsets(p[1], self.remote, self.cache), paths))
        parts, base = [np.zeros(1, np.int64)], 0
        tokens = []
        for i, ((tok_url, off_url), off, nd, nt) in enumerate(zip(paths, offs, n_docs, n_toks)):
            if off.dtype != np.int64 or off.ndim != 1 or len(off) != nd + 1 or int(off[0]) != 0 \
                    or int(off[-1]) != nt:
                raise DataError(f"{off_url}: expected {nd + 1} int64 offsets from 0 to {nt} (the manifest's "
                                f"counts), got {off.dtype} {off.shape}"
                                + (f" running {int(off[0])}..{int(off[-1])}" if len(off) else ""))
            parts.append(np.asarray(off[1:], np.int64) + base)
            base += nt
            if self.remote:
                tokens.append(_RemoteShard(tok_url, nt, self.cache, (source, split, i)))
            else:
                shard = _LocalShard(tok_url, nt)
                if nt:
                    shard.read(0, 0)  # maps it now: a missing or mismatched shard fails at launch
                tokens.append(shard)
        return TokenizedDocs(ShardedTokens(tokens), np.concatenate(parts))

    def report(self, source: str) -> BadInputReport:
        """The source's bad-input report as the build merged it (check it with report.check)."""
        rep = self._source(source).get("report")
        if not isinstance(rep, dict):
            raise DataError(f"{manifest_path(self.url)}: sources.{source}.report missing")
        return BadInputReport.from_dict(rep)

    def check(self, source: str, src: Any, tokenizer_sha256: str) -> None:
        """Refuse a source built with another tokenizer or split rule than this run's (both hashes named)."""
        check_store_source(self.manifest, source, src, tokenizer_sha256, self.url)

    def stats(self) -> dict[str, int]:
        """Bytes fetched and cache hits/misses of a remote store (all 0 for a local, memory-mapped one)."""
        return self.cache.stats()


def open_token_store(url: str, *, cache_bytes: int = DEFAULT_CACHE_BYTES,
                     block_bytes: int = DEFAULT_BLOCK_BYTES) -> TokenStore:
    """Open a complete store (MANIFEST.json present); DataError naming the URL otherwise."""
    url = str(url).rstrip("/") if fs.is_url(str(url)) else _local_path(str(url))
    if not fs.is_url(url) and not os.path.isdir(url):
        raise DataError(f"token store {url}: no such directory")
    manifest = read_manifest(url)
    block = max(4, min(int(block_bytes), int(cache_bytes)) // 4 * 4)
    return TokenStore(url, manifest, BlockCache(int(cache_bytes), block))
