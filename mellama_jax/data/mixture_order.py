"""Which source each row comes from: a counter-based hash of (seed, host, row), no RNG state.

A pure function of its inputs, so the source of any row of any step is known without replaying
earlier steps, and a resumed run draws exactly the same sources.
"""
from __future__ import annotations

import numpy as np

__all__ = ["mixture_choices"]


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
