"""Streaming readers for clinical note files and the prepared-corpus format.

Readers: MIMIC-III NOTEEVENTS.csv, MIMIC-IV-Note CSVs (discharge.csv, radiology.csv), any CSV
with a text column, and JSONL; each gzip-compressed or not, read row by row in bounded memory.
Bad rows are counted and located (file:line), never quoted: note text is PHI until scrubbed.

Prepared corpus (the format the data pipeline's `prepared_clinical` reader expects):
  DIR/notes-00000-of-000NN.jsonl.gz   {"id", "text", "note_type", "subject_id"} per line
  DIR/report.json                     counts only
  DIR/PREPARED.json                   marker, written last: tool, settings, input sha256/size
"""
from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import os
import sys
import zlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterator

from mellama_jax import fs
from mellama_jax.data.text_hygiene import strip_control_chars

# The producer every PREPARED.json names (the library module that writes the corpus): readers accept
# only this name, so it stays as outputs already on disk spell it.
TOOL_NAME = "mellama_jax.data.prepare_clinical"
FORMAT_VERSION = 1
MARKER = "PREPARED.json"
REPORT = "report.json"
FORMATS = ("auto", "mimic3", "mimic4", "csv", "jsonl")

# column role -> accepted header names (lower-cased), first match wins
_COLUMNS = {
    "mimic3": {"id": ("row_id",), "text": ("text",), "note_type": ("category",),
               "subject_id": ("subject_id",), "is_error": ("iserror",)},
    "mimic4": {"id": ("note_id",), "text": ("text",), "note_type": ("note_type",),
               "subject_id": ("subject_id",)},
    "csv": {"id": ("id", "note_id", "row_id"), "text": ("text", "note_text", "note", "body"),
            "note_type": ("note_type", "category", "type"), "subject_id": ("subject_id", "patient_id")},
}


@dataclass
class RawNote:
    id: str
    text: str
    note_type: str
    subject_id: str
    location: str  # "file:line", for error messages only
    is_error: bool = False


@dataclass
class InputStats:
    """Per-input accounting: bytes hashed while streaming, rows read, bad rows by reason."""

    path: str
    format: str = ""
    size_bytes: int = 0
    sha256: str = ""
    rows: int = 0
    bad_rows: Counter = field(default_factory=Counter)
    bad_locations: list[str] = field(default_factory=list)
    truncated: dict | None = None  # {"reason", "kind", "bytes_read", "file_bytes", "unread_fraction"}

    def bad(self, location: str, reason: str, keep: int = 20) -> None:
        self.bad_rows[reason] += 1
        if len(self.bad_locations) < keep:
            self.bad_locations.append(f"{location}: {reason}")

    def truncation_message(self) -> str:
        t = self.truncated or {}
        if not t:
            return ""
        corrupt = t.get("kind") == "corrupt"
        if corrupt and t["bytes_read"] >= t["file_bytes"]:
            # A CRC / length check at the end of the stream failed: the file is whole but altered.
            where = (f"all {t['file_bytes']} bytes were read, but the gzip check at the end failed, so some "
                     "of the decompressed data is wrong (the file is corrupt, not cut short)")
        elif corrupt:
            where = (f"corrupt data at byte ~{t['bytes_read']} of {t['file_bytes']}: the "
                     f"{t['unread_fraction']:.1%} of the file after it was not read")
        elif t["bytes_read"] >= t["file_bytes"]:
            where = (f"all {t['file_bytes']} bytes were read and the stream has no end marker, so the "
                     "end of the original file is missing (how much cannot be known)")
        else:
            where = (f"at byte ~{t['bytes_read']} of {t['file_bytes']}: {t['unread_fraction']:.1%} of the "
                     "file unread")
        return f"{self.path}: {t['reason']}; {where}; {self.rows} rows were read before it"

    def to_dict(self) -> dict:
        return {"path": self.path, "format": self.format, "size_bytes": self.size_bytes,
                "sha256": self.sha256, "rows": self.rows, "bad_rows": dict(self.bad_rows),
                "bad_row_locations": self.bad_locations, "truncated": self.truncated}


# Decompression / stream errors: the rest of the file cannot be read (RuntimeError: zlib's
# "Compressed file ended before the end-of-stream marker" surfaces as EOFError; garbage as
# BadGzipFile/zlib.error, both OSError or zlib.error).
_STREAM_ERRORS = (EOFError, zlib.error, gzip.BadGzipFile, OSError)


class _HashingReader(io.RawIOBase):
    """Wraps a binary file; hashes and counts every byte read, so inputs are fingerprinted in one pass."""

    def __init__(self, f):
        self._f = f
        self.sha = hashlib.sha256()
        self.size = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        n = self._f.readinto(b)
        if n:
            self.sha.update(memoryview(b)[:n])
            self.size += n
        return n or 0

    def close(self) -> None:
        self._f.close()
        super().close()


def _open_text(path: str) -> tuple[io.TextIOBase, _HashingReader]:
    raw = _HashingReader(open(path, "rb"))
    buf = io.BufferedReader(raw, buffer_size=1 << 20)
    with open(path, "rb") as probe:
        magic = probe.read(2)
    stream = gzip.GzipFile(fileobj=buf, mode="rb") if magic == b"\x1f\x8b" else buf
    return io.TextIOWrapper(stream, encoding="utf-8", errors="replace", newline=""), raw


def detect_format(path: str) -> str:
    """jsonl by extension; for CSVs, mimic3 / mimic4 / csv by header."""
    base = path[:-3] if path.endswith(".gz") else path
    if base.endswith((".jsonl", ".json", ".ndjson")):
        return "jsonl"
    text, raw = _open_text(path)
    try:
        csv.field_size_limit(sys.maxsize)
        header = [h.strip().lower() for h in next(csv.reader(text), [])]
    except _STREAM_ERRORS as e:
        raise ValueError(f"{path}: cannot read the first line ({type(e).__name__}: corrupt or truncated "
                         f"gzip?)") from None
    except csv.Error as e:
        raise ValueError(f"{path}:1: malformed CSV header ({e.__class__.__name__})") from None
    finally:
        text.close()
    if "row_id" in header and "text" in header and "category" in header:
        return "mimic3"
    if "note_id" in header and "text" in header:
        return "mimic4"
    if any(h in header for h in _COLUMNS["csv"]["text"]):
        return "csv"
    # Never echo the row: without a header it is the first note (PHI). Count and shape only.
    raise ValueError(f"{path}: cannot tell the format from the first CSV row ({len(header)} fields, none "
                     f"named like a note column: is the header row missing?); expected MIMIC-III "
                     f"NOTEEVENTS (ROW_ID..TEXT), MIMIC-IV-Note (note_id..text) or a 'text' column; "
                     f"or pass --format")


def iter_notes(path: str, fmt: str = "auto", stats: InputStats | None = None) -> Iterator[RawNote]:
    """Streams notes from one file; fills `stats` (size, sha256 once exhausted, bad rows)."""
    stats = stats if stats is not None else InputStats(path)
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    fmt = detect_format(path) if fmt == "auto" else fmt
    stats.format = fmt
    text, raw = _open_text(path)
    try:
        try:
            if fmt == "jsonl":
                yield from _iter_jsonl(path, text, stats)
            else:
                yield from _iter_csv(path, text, fmt, stats)
        except _STREAM_ERRORS as e:
            # The rest of the file is unreadable: recorded (with the share unread), not raised here;
            # prepare() fails the run unless truncated inputs are allowed explicitly.
            file_bytes = os.path.getsize(path)
            # EOFError: the stream stops before its end marker (cut short); zlib.error / BadGzipFile
            # (CRC or length mismatch) / OSError: bytes that are there but wrong (corrupt).
            cut = isinstance(e, EOFError)
            detail = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
            reason = ("compressed stream ends early (file cut short)" if cut
                      else f"corrupt compressed data ({type(e).__name__}{': ' + detail if detail else ''})")
            stats.truncated = {"reason": reason, "kind": "truncated" if cut else "corrupt",
                               "bytes_read": raw.size, "file_bytes": file_bytes,
                               "unread_fraction": round(max(0.0, 1.0 - raw.size / max(file_bytes, 1)), 4)}
            return
        # Drain what the parser did not read so the hash covers the whole file.
        while raw.read(1 << 20):
            pass
    finally:
        stats.size_bytes, stats.sha256 = raw.size, raw.sha.hexdigest()
        text.close()


def _iter_csv(path: str, text, fmt: str, stats: InputStats) -> Iterator[RawNote]:
    csv.field_size_limit(sys.maxsize)
    reader = csv.reader(text)
    try:
        header = [h.strip().lower() for h in next(reader)]
    except StopIteration:
        return
    cols = {}
    for role, names in _COLUMNS[fmt].items():
        idx = next((header.index(n) for n in names if n in header), None)
        if idx is None and role in ("text",):
            raise ValueError(f"{path}:1: no text column; expected one of {names} in the header")
        cols[role] = idx
    prev_line = reader.line_num
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            raise ValueError(f"{path}:{reader.line_num}: malformed CSV ({e.__class__.__name__})") from None
        location = f"{path}:{prev_line + 1}"
        prev_line = reader.line_num
        stats.rows += 1
        if len(row) != len(header):
            stats.bad(location, f"expected {len(header)} columns, got {len(row)}")
            continue

        def get(role: str) -> str:
            i = cols.get(role)
            return row[i] if i is not None else ""

        note_text = strip_control_chars(get("text"))  # before anything reads it: a NUL splits PHI
        if not note_text.strip():
            stats.bad(location, "empty text")
            continue
        yield RawNote(id=get("id") or str(stats.rows), text=note_text, note_type=get("note_type"),
                      subject_id=get("subject_id"), location=location,
                      is_error=get("is_error").strip() not in ("", "0", "0.0"))


def _iter_jsonl(path: str, text, stats: InputStats) -> Iterator[RawNote]:
    for lineno, line in enumerate(text, start=1):
        if not line.strip():
            continue
        stats.rows += 1
        location = f"{path}:{lineno}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            stats.bad(location, f"invalid JSON at column {e.colno}")
            continue
        except RecursionError:
            stats.bad(location, "JSON nested too deeply")
            continue
        if not isinstance(obj, dict):
            stats.bad(location, "expected a JSON object")
            continue
        note_text = next((obj[k] for k in ("text", "TEXT", "note_text") if k in obj), None)
        if isinstance(note_text, str):
            note_text = strip_control_chars(note_text)  # before anything reads it: a NUL splits PHI
        if not isinstance(note_text, str) or not note_text.strip():
            stats.bad(location, "missing or empty 'text'")
            continue
        nid = next((obj[k] for k in ("id", "note_id", "ROW_ID", "row_id") if k in obj), stats.rows)
        yield RawNote(id=str(nid), text=note_text,
                      note_type=str(obj.get("note_type", obj.get("category", obj.get("CATEGORY", ""))) or ""),
                      subject_id=str(obj.get("subject_id", obj.get("SUBJECT_ID", "")) or ""),
                      location=location)


class ShardedWriter:
    """Writes prepared notes to gzip JSONL shards; names them `-of-N` once N is known."""

    def __init__(self, out_dir: str, notes_per_shard: int = 50_000):
        if notes_per_shard < 1:
            raise ValueError(f"notes_per_shard must be >= 1, got {notes_per_shard}")
        self.out_dir, self.per_shard = out_dir, notes_per_shard
        self._tmp: list[str] = []
        self._f = None
        self._in_shard = 0
        self.count = 0

    def write(self, note: dict) -> None:
        if self._f is None or self._in_shard >= self.per_shard:
            self._roll()
        self._f.write(json.dumps(note, ensure_ascii=False) + "\n")
        self._in_shard += 1
        self.count += 1

    def _roll(self) -> None:
        if self._f is not None:
            self._f.close()
        path = os.path.join(self.out_dir, f"notes-{len(self._tmp):05d}.jsonl.gz.tmp")
        self._tmp.append(path)
        self._f = gzip.open(path, "wt", encoding="utf-8", compresslevel=5)
        self._in_shard = 0

    def close(self) -> list[str]:
        """Finalises shard names; returns them (basenames). Writes one empty shard for no notes."""
        if self._f is None:
            self._roll()
        self._f.close()
        n = len(self._tmp)
        names = []
        for i, tmp in enumerate(self._tmp):
            name = f"notes-{i:05d}-of-{n:05d}.jsonl.gz"
            os.replace(tmp, os.path.join(self.out_dir, name))
            names.append(name)
        return names


def read_marker(path: str) -> dict:
    """PREPARED.json of a prepared directory (local or a gs:// / s3:// prefix); ValueError naming
    what is missing or wrong, fs.StorageError when the bucket cannot be read."""
    remote = fs.is_url(path)
    marker = fs.join(path, MARKER)
    if not fs.isfile(marker):
        raise ValueError(f"{path}: not a prepared clinical corpus (no {MARKER}); run "
                         f"`python -m mellama_jax.cli.prepare_clinical --in NOTES --out {path}`")
    try:
        meta = json.loads(fs.read_text(marker))
    except json.JSONDecodeError as e:
        raise ValueError(f"{marker}: invalid JSON ({e})") from None
    if not isinstance(meta, dict) or meta.get("tool") != TOOL_NAME or meta.get("format_version") != FORMAT_VERSION:
        meta = meta if isinstance(meta, dict) else {}
        raise ValueError(f"{marker}: expected tool={TOOL_NAME!r} format_version={FORMAT_VERSION}, got "
                         f"tool={meta.get('tool')!r} format_version={meta.get('format_version')!r}")
    shards = meta.get("shards", [])
    base = None if remote else os.path.realpath(path)
    for s in shards if isinstance(shards, list) else [shards]:
        # A shard name must be a plain file name of this directory: never /etc/hostname or ../x.
        plain = isinstance(s, str) and (not remote or (s not in ("", ".", "..") and "/" not in s))
        if not plain or (not remote and (
                os.path.isabs(s) or os.path.dirname(os.path.normpath(s))
                or os.path.commonpath([base, os.path.realpath(os.path.join(path, s))]) != base)):
            raise ValueError(f"{marker}: shard name {s!r} is not a file of {path}")
    if remote:  # one listing instead of a request per shard
        present = set(fs.listdir(path))
        missing = [s for s in shards if s not in present]
    else:
        missing = [s for s in shards if not os.path.isfile(os.path.join(path, s))]
    if missing or not meta.get("shards"):
        raise ValueError(f"{marker}: shard files missing: {missing[:5] or 'none listed'}")
    return meta


def is_prepared_dir(path: str) -> bool:
    """True if `path` holds a complete output of prepare_clinical (marker valid, shards present)."""
    try:
        read_marker(path)
        return True
    except (ValueError, OSError):
        return False


def iter_prepared_notes(path: str) -> Iterator[dict]:
    """Streams the notes of a prepared directory in shard order."""
    meta = read_marker(path)
    for shard in meta["shards"]:
        with fs.open(fs.join(path, shard), "rb") as raw, gzip.open(raw, "rt", encoding="utf-8") as f:
            for line in f:
                yield json.loads(line)
