"""Which source each row comes from: a counter-based hash of (seed, host, row), no RNG state.

A pure function of its inputs, so the source of any row of any step is known without replaying
earlier steps, and a resumed run draws exactly the same sources.
"""
from __future__ import annotations

import hashlib

import numpy as np

__all__ = ["mixture_choices", "document_keys"]


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


def document_keys(seed: int, source: str, doc_ids: np.ndarray) -> np.ndarray:
    """A uint64 key per document id of one source (pure function of seed, source name, id): the order
    in which a budget subsample takes documents (token_cache.subsample_documents)."""
    salt = np.uint64(int(hashlib.sha256(f"{int(seed)}|{source}".encode()).hexdigest()[:16], 16))
    return _splitmix64(_splitmix64(doc_ids.astype(np.uint64) ^ salt))
