"""Row layouts: one source's documents as fixed-length training rows of seq_len targets.

"concat" (ConcatRows) cuts the token stream into windows of seq_len + 1 tokens with stride seq_len
(every token is a target exactly once, attention runs across document boundaries as in LLaMA
pretraining); "pack" (PackedRows) places whole documents (split into seq_len + 1 pieces when longer)
into rows by first-fit, with segment_ids 1, 2, ... per document, positions restarting at 0, padding
with segment 0 and loss_mask 0. A layout writes row i into row j of a batch (`Rows.write`).
"""
from __future__ import annotations

import dataclasses
from typing import Protocol

import numpy as np

from mellama_jax.data.token_store import TokenizedDocs

__all__ = ["Rows", "ConcatRows", "PackedRows", "concat_rows", "pack_rows", "layout_rows", "PACKINGS"]

PACKINGS = ("concat", "pack")  # data.packing of pretraining rows


class Rows(Protocol):
    """Fixed-length rows of one source, as the pipeline draws them."""

    @property
    def num_rows(self) -> int: ...

    @property
    def fill(self) -> float:
        """Mean share of a row's positions holding real tokens (row draws are divided by it)."""
        ...

    def write(self, i: int, out: dict[str, np.ndarray], j: int, source_id: int) -> None:
        """Row i into row j of the batch arrays `out` (inputs, targets, positions, ...)."""
        ...


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


def layout_rows(docs: TokenizedDocs, packing: str, seq_len: int, for_eval: bool) -> Rows:
    """Pretraining rows of `docs` as data.packing says (the one layout rule of every document source)."""
    if packing == "concat":
        return concat_rows(docs, seq_len, for_eval)
    if packing == "pack":
        return pack_rows(docs, seq_len)
    raise ValueError(f"data.packing={packing!r}: expected 'concat' or 'pack'")
