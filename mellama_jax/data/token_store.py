"""Disk-backed token arrays: documents are appended chunk by chunk to `.npy` files, read back memmapped
as `TokenizedDocs` (one flat token array plus document offsets).

Why: a host's tokens for one source are int32 (4 bytes a token, ~1 GB per 250M tokens); a
Me-LLaMA-scale corpus (tens of billions of tokens) does not fit in RAM. So tokenization appends each
encoded chunk to `<split>.tokens.npy` (int32) and `<split>.offsets.npy` (int64, document i is
tokens[offsets[i]:offsets[i + 1]]) and training maps them with `np.load(mmap_mode="r")`, paging in
only what the batches touch.

Format: ordinary NumPy `.npy` (version 1.0) whose header is written with a fixed 128-byte size
before the length is known and rewritten in place once the last chunk is appended, so the files are
streamed once, never copied, and stay readable by plain `np.load`.
"""
from __future__ import annotations

import dataclasses
import os
import struct

import numpy as np

__all__ = ["NpyAppender", "SplitWriter", "TokenizedDocs", "load_split", "load_store", "split_files",
           "SPLITS", "HEADER_BYTES"]

HEADER_BYTES = 128  # magic (6) + version (2) + header length (2) + dict, padded; a multiple of 64
SPLITS = ("train", "eval")


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


def _npy_header(dtype: np.dtype, n: int) -> bytes:
    """A `.npy` v1.0 header of exactly HEADER_BYTES bytes for a 1-D little-endian array of n items."""
    d = repr({"descr": np.dtype(dtype).newbyteorder("<").str, "fortran_order": False, "shape": (int(n),)})
    body_len = HEADER_BYTES - 10
    body = d.encode("latin1")
    if len(body) + 1 > body_len:
        raise ValueError(f"npy header for shape ({n},) does not fit in {HEADER_BYTES} bytes")
    body = body + b" " * (body_len - len(body) - 1) + b"\n"
    return b"\x93NUMPY" + bytes([1, 0]) + struct.pack("<H", body_len) + body


class NpyAppender:
    """Appends 1-D chunks of one dtype to a `.npy` file; `close()` writes the final length."""

    def __init__(self, path: str, dtype):
        self.path, self.dtype, self.n = path, np.dtype(dtype).newbyteorder("<"), 0
        self._f = open(path, "wb")
        self._f.write(_npy_header(self.dtype, 0))

    def append(self, arr: np.ndarray) -> None:
        arr = np.ascontiguousarray(arr, dtype=self.dtype)
        if arr.ndim != 1:
            raise ValueError(f"{self.path}: expected a 1-D chunk, got shape {arr.shape}")
        self._f.write(memoryview(arr).cast("B"))
        self.n += len(arr)

    def close(self) -> None:
        if self._f.closed:
            return
        self._f.seek(0)
        self._f.write(_npy_header(self.dtype, self.n))
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()


def split_files(directory: str, split: str) -> tuple[str, str]:
    """Paths of the token and offset files of `split` in a store directory."""
    return (os.path.join(directory, f"{split}.tokens.npy"), os.path.join(directory, f"{split}.offsets.npy"))


class SplitWriter:
    """Streams the documents of one split into `<split>.tokens.npy` + `<split>.offsets.npy`.

    Only the chunk being appended is held in memory; offsets are streamed too (8 bytes a document).
    """

    def __init__(self, directory: str, split: str):
        tok_path, off_path = split_files(directory, split)
        self.tokens = NpyAppender(tok_path, np.int32)
        self.offsets = NpyAppender(off_path, np.int64)
        self.offsets.append(np.zeros(1, np.int64))
        self.num_tokens = 0
        self.num_docs = 0

    def append(self, tokens: np.ndarray, offsets: np.ndarray) -> None:
        """Add documents given as a flat token chunk and its local offsets (offsets[0] == 0)."""
        if len(offsets) < 1 or offsets[0] != 0 or offsets[-1] != len(tokens):
            raise ValueError(f"{self.tokens.path}: chunk offsets must run from 0 to len(tokens)={len(tokens)}")
        self.tokens.append(tokens)
        self.offsets.append(np.asarray(offsets[1:], np.int64) + self.num_tokens)
        self.num_tokens += len(tokens)
        self.num_docs += len(offsets) - 1

    def close(self) -> None:
        self.tokens.close()
        self.offsets.close()


def load_split(directory: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(tokens int32, offsets int64) of `split`, both memory-mapped read-only; checked for consistency."""
    tok_path, off_path = split_files(directory, split)
    tokens = np.load(tok_path, mmap_mode="r")
    offsets = np.load(off_path, mmap_mode="r")
    if tokens.dtype != np.int32 or tokens.ndim != 1:
        raise ValueError(f"{tok_path}: expected a 1-D int32 array, got {tokens.dtype} {tokens.shape}")
    if offsets.dtype != np.int64 or offsets.ndim != 1 or len(offsets) < 1:
        raise ValueError(f"{off_path}: expected a non-empty 1-D int64 array, got {offsets.dtype} {offsets.shape}")
    if int(offsets[0]) != 0 or int(offsets[-1]) != len(tokens):
        raise ValueError(f"{off_path}: offsets run {int(offsets[0])}..{int(offsets[-1])} but {tok_path} "
                         f"holds {len(tokens)} tokens (truncated or mismatched cache)")
    return tokens, offsets


def load_store(directory: str) -> dict[str, TokenizedDocs]:
    """Both splits of a store directory, memory-mapped ({"train": ..., "eval": ...})."""
    return {split: TokenizedDocs(*load_split(directory, split)) for split in SPLITS}
