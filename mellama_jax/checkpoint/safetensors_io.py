"""Zero-copy safetensors reading and streaming writing with numpy + ml_dtypes.

Headers are parsed by the `safetensors` package first (its parser rejects offsets outside the data
region, overlaps, gaps and sizes that disagree with dtype x shape), then checked again here so that
every error names the file and the tensor. Tensor bytes are then read through our own memory map:
the package's numpy `get_tensor` always copies the tensor into a new array, while converting a
70B checkpoint should hold at most the stacked parameter being built, not a second copy of each
HF tensor (tests/test_hardening_convert.py shows the copy and the zero-copy view). The format: an
8-byte little-endian header size, a JSON header of {name: {dtype, shape, data_offsets}}, then raw
bytes.
"""
from __future__ import annotations

import json
import os
import struct
from typing import Iterable

import ml_dtypes
import numpy as np

DTYPES = {
    "F64": np.dtype(np.float64), "F32": np.dtype(np.float32), "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16), "I64": np.dtype(np.int64), "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16), "I8": np.dtype(np.int8), "U8": np.dtype(np.uint8), "BOOL": np.dtype(bool),
}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}


class SafetensorsError(ValueError):
    """A safetensors file is unreadable or inconsistent; the message names the file."""


def _package_check(path: str) -> None:
    """The `safetensors` package's own header validation (no tensor is read)."""
    try:
        from safetensors import safe_open
    except ImportError:  # pragma: no cover - a dependency; our checks below still run
        return
    try:
        with safe_open(path, framework="numpy"):
            pass
    except Exception as err:  # noqa: BLE001 - SafetensorError / OSError / ValueError from Rust
        raise SafetensorsError(f"{path}: invalid safetensors file ({type(err).__name__}: "
                               f"{str(err).splitlines()[0][:200] if str(err) else 'no detail'})") from None


def validate_header(path: str, header: dict, data_len: int) -> None:
    """Every entry: known dtype, non-negative int shape, offsets inside [0, data_len], size equal to
    dtype x shape, no two tensors overlapping. SafetensorsError names the file and the tensor."""
    spans = []
    for name, info in header.items():
        where = f"{path}: tensor {name!r}"
        if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= set(info):
            raise SafetensorsError(f"{where}: header entry needs dtype, shape and data_offsets, got {info!r:.200}")
        dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if not isinstance(dtype, str) or dtype not in DTYPES:
            raise SafetensorsError(f"{where}: unknown dtype {dtype!r} (known: {sorted(DTYPES)})")
        if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                                   for d in shape):
            raise SafetensorsError(f"{where}: shape {shape!r:.200} is not a list of non-negative integers")
        if not (isinstance(offsets, list) and len(offsets) == 2
                and all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)):
            raise SafetensorsError(f"{where}: data_offsets {offsets!r:.200} is not [begin, end]")
        begin, end = offsets
        if not 0 <= begin <= end <= data_len:
            raise SafetensorsError(f"{where}: data_offsets [{begin}, {end}] outside the data region "
                                   f"[0, {data_len}] (truncated or corrupt file?)")
        expected = int(np.prod(shape, dtype=np.int64)) * DTYPES[dtype].itemsize
        if end - begin != expected:
            raise SafetensorsError(f"{where}: {end - begin} bytes for shape {shape} {dtype}, which needs {expected}")
        spans.append((begin, end, name))
    spans.sort()
    for (b0, e0, n0), (b1, e1, n1) in zip(spans, spans[1:]):
        if b1 < e0:
            raise SafetensorsError(f"{path}: tensors {n0!r} [{b0}, {e0}] and {n1!r} [{b1}, {e1}] overlap")


def read_header(path: str, check: bool = True) -> tuple[dict, int]:
    """Return ({tensor name: info}, byte offset where tensor data starts), validated."""
    try:
        file_size = os.path.getsize(path)
        with open(path, "rb") as f:
            raw_size = f.read(8)
            if len(raw_size) != 8:
                raise SafetensorsError(f"{path}: too short to be a safetensors file")
            (size,) = struct.unpack("<Q", raw_size)
            if size > file_size - 8:
                raise SafetensorsError(f"{path}: header size {size} exceeds the file size (truncated?)")
            header = json.loads(f.read(size))
    except (OSError, ValueError, RecursionError) as err:  # JSONDecodeError/UnicodeDecodeError are ValueErrors
        if isinstance(err, SafetensorsError):
            raise
        raise SafetensorsError(f"{path}: cannot read safetensors header ({type(err).__name__}: {err})") from None
    if not isinstance(header, dict):
        raise SafetensorsError(f"{path}: header is not a JSON object")
    header.pop("__metadata__", None)
    if check:
        validate_header(path, header, file_size - 8 - size)
        _package_check(path)
    return header, 8 + size


class SafetensorsFile:
    """Lazily readable tensors of one file; `get(name)` returns a read-only memory-mapped array."""

    def __init__(self, path: str):
        self.path = path
        self.header, self._data_start = read_header(path)
        self._mmap = np.memmap(path, dtype=np.uint8, mode="r") if self.header else None

    def keys(self) -> list[str]:
        return list(self.header)

    def get(self, name: str) -> np.ndarray:
        if name not in self.header:
            raise SafetensorsError(f"{self.path}: no tensor named {name!r}")
        info = self.header[name]
        if info["dtype"] not in DTYPES:
            raise SafetensorsError(f"{self.path}: tensor {name!r} has unsupported dtype {info['dtype']}")
        begin, end = info["data_offsets"]
        dtype = DTYPES[info["dtype"]]
        raw = self._mmap[self._data_start + begin:self._data_start + end]
        expected = int(np.prod(info["shape"], dtype=np.int64)) * dtype.itemsize
        if raw.size != expected:
            raise SafetensorsError(f"{self.path}: tensor {name!r} has {raw.size} bytes, expected {expected} "
                                   f"for shape {info['shape']} {info['dtype']} (truncated file?)")
        return raw.view(dtype).reshape(info["shape"])


def write_file(path: str, tensors: Iterable[tuple[str, np.ndarray]], metadata: dict | None = None) -> None:
    """Write tensors to `path` one at a time (only one tensor in memory beyond the caller's)."""
    tensors = list(tensors)
    header: dict = {"__metadata__": metadata or {"format": "pt"}}
    offset = 0
    for name, array in tensors:
        if array.dtype not in DTYPE_NAMES:
            raise SafetensorsError(f"{path}: tensor {name!r} has dtype {array.dtype} with no safetensors name")
        nbytes = array.size * array.dtype.itemsize
        header[name] = {"dtype": DTYPE_NAMES[array.dtype], "shape": list(array.shape),
                        "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # data must start 8-byte aligned
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(encoded)))
        f.write(encoded)
        for _, array in tensors:
            f.write(np.ascontiguousarray(array).tobytes())
    os.replace(tmp, path)
