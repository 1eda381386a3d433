"""Corpus-wide exact and near-duplicate removal (MinHash over word 5-grams, banded LSH).

Copy-forward notes (a progress note re-filed daily with one line changed) are the main
duplication in EHR text. We run after scrubbing, so copies differing only in PHI collapse.
Signatures come from `datasketch.MinHash`; the band index is our own: we only ever ask "did an
earlier kept note share a band?", so one Python set of band hashes (~1 KB per kept note, measured,
with 12 bands) replaces datasketch's MinHashLSH, which also stores keys and per-key band
lists and needs several times the memory at MIMIC scale (millions of notes).
"""
from __future__ import annotations

import hashlib
import re
import zlib
from dataclasses import asdict, dataclass

import numpy as np

_TOKEN = re.compile(r"\w+|\[[A-Z>0-9]+\]")
# (exact digest or None, LSH band keys or None): what `Deduplicator.decide` compares.
DedupKeys = tuple[bytes | None, tuple[int, ...] | None]


@dataclass(frozen=True)
class DedupConfig:
    exact: bool = True
    near: bool = True
    threshold: float = 0.8  # estimated Jaccard of word 5-gram sets
    num_perm: int = 128
    # datasketch's (false-positive, false-negative) weights for choosing bands x rows. (0.2, 0.8)
    # gives b=12, r=10 at 128 perms: P(drop) = 0.99 at J=0.9, 0.74 at J=0.8, 0.07 at J=0.6.
    fp_fn_weights: tuple[float, float] = (0.2, 0.8)
    shingle_words: int = 5
    seed: int = 1

    def to_dict(self) -> dict:
        return asdict(self)


def normalized_tokens(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


def shingles(tokens: list[str], k: int) -> set[bytes]:
    if len(tokens) <= k:
        return {" ".join(tokens).encode()}
    return {" ".join(tokens[i:i + k]).encode() for i in range(len(tokens) - k + 1)}


def jaccard(a: str, b: str, k: int = 5) -> float:
    """Exact Jaccard similarity of two notes' word k-gram sets (for tests and audits)."""
    sa, sb = shingles(normalized_tokens(a), k), shingles(normalized_tokens(b), k)
    return len(sa & sb) / max(1, len(sa | sb))


class Deduplicator:
    """Streaming filter: `check(text)` -> None (new, now indexed) or the duplicate reason.

    check = decide(keys(text)): `keys` is the per-note work (tokens, MinHash), parallel-safe;
    `decide` is the cheap sequential lookup and index update."""

    def __init__(self, config: DedupConfig = DedupConfig()):
        from datasketch import MinHash, MinHashLSH

        self.config = config
        lsh = MinHashLSH(threshold=config.threshold, num_perm=config.num_perm, weights=config.fp_fn_weights)
        self.bands, self.rows = lsh.b, lsh.r  # datasketch's FP/FN-optimal banding
        self._template = MinHash(num_perm=config.num_perm, seed=config.seed, hashfunc=zlib.crc32)
        self._minhash = MinHash
        self._exact: set[bytes] = set()
        self._band_index: set[int] = set()

    def signature(self, tokens: list[str]) -> np.ndarray:
        m = self._minhash(num_perm=self.config.num_perm, seed=self.config.seed, hashfunc=zlib.crc32,
                          permutations=self._template.permutations, scheme=self._template.scheme)
        m.update_batch(shingles(tokens, self.config.shingle_words))
        return m.hashvalues

    def keys(self, text: str) -> DedupKeys:
        """The note's exact digest and LSH band keys (None where that check is off). Pure: reads no
        index, so documents can be keyed in parallel and decided in order later (token store build)."""
        tokens = normalized_tokens(text)
        digest = hashlib.blake2b(" ".join(tokens).encode(), digest_size=16).digest() if self.config.exact else None
        bands = None
        if self.config.near:
            sig = self.signature(tokens)
            r = self.rows
            # blake2b, not hash(): bytes hashing is salted per process and runs must be reproducible.
            bands = tuple(int.from_bytes(hashlib.blake2b(sig[i * r:(i + 1) * r].tobytes(), digest_size=8,
                                                         person=b"band%d" % i).digest(), "little")
                          for i in range(self.bands))
        return digest, bands

    def decide(self, keys: DedupKeys) -> str | None:
        """None (new, now indexed) or the duplicate reason, for keys from `keys()`; sequential: the
        answer depends on every note decided before."""
        digest, bands = keys
        if digest is not None:
            if digest in self._exact:
                return "exact_duplicate"
            self._exact.add(digest)
        if bands is not None:
            if any(k in self._band_index for k in bands):
                return "near_duplicate"
            self._band_index.update(bands)
        return None

    def check(self, text: str) -> str | None:
        return self.decide(self.keys(text))

    def stats(self) -> dict:
        return {"bands": self.bands, "rows_per_band": self.rows, "exact_digests": len(self._exact),
                "band_keys": len(self._band_index)}
