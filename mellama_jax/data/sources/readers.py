"""Format-level readers: pure-python generators of documents from files in their real formats.

Each reader takes one file path and a BadInputReport and yields documents as plain dicts
({"id", "text", ...}); problems that can be skipped (a malformed JSON line, a missing field, an empty
document, invalid UTF-8, a truncated gzip) are recorded in the report with the file and line and the
reader goes on. The tfds builders and the direct (TensorFlow-free) path both call these, so the
readers are testable without tfds.

Formats: pubmed_xml, text, jsonl, mimic_csv (MIMIC-III NOTEEVENTS / MIMIC-IV-Note, auto-detected
from the header), instruction_jsonl, prepared_clinical (output of `mellama_jax.cli.prepare_clinical`).
"""
from __future__ import annotations

import csv
import gzip
import io
import json
import os
import re
import sys
import zlib
from typing import Any, Callable, Iterator
import xml.etree.ElementTree as ET

from mellama_jax import fs
from mellama_jax.data.sources.report import BadInputReport, DataError
from mellama_jax.data.text_hygiene import strip_control_chars

__all__ = ["FORMATS", "format_from_name", "expand_paths", "read_file", "iter_documents", "open_binary",
           "source_scrubber"]

Doc = dict[str, Any]
_SURROGATE = re.compile("[\udc80-\udcff]")  # bytes that were not UTF-8, kept by surrogateescape
# EOFError: a gzip cut short; BadGzipFile / zlib.error / OSError: garbage inside the stream.
# fs.StorageError is an OSError too, but an object that stays unreadable after the retries is not a
# truncated file: _record_truncation raises it again (never a silent skip of a bucket's object).
_TRUNCATION_ERRORS = (EOFError, zlib.error, gzip.BadGzipFile, OSError)


def _record_truncation(report: BadInputReport, path: str, line: int | None, f: Any, err: BaseException) -> None:
    """Counted, located and measured: how far into the (compressed) file the reader got."""
    if isinstance(err, fs.StorageError):
        raise err
    raw = f
    for attr in ("buffer", "fileobj", "raw"):  # TextIOWrapper -> GzipFile -> file
        while getattr(raw, attr, None) is not None:
            raw = getattr(raw, attr)
    try:
        pos = raw.tell()
    except (OSError, ValueError, AttributeError):
        pos = 0
    try:
        size = fs.size(path)
    except OSError:
        size = 0
    kind = "gzip stream ends early" if isinstance(err, EOFError) else f"unreadable data ({type(err).__name__})"
    report.truncated(path, line, kind, min(pos, size) if size else pos, size)


def open_binary(path: str) -> io.BufferedIOBase:
    """Open a file or object for reading bytes, transparently gunzipping (by magic bytes, not by
    name); an object is read by ranged GETs (fs.open), each retried on its own."""
    f = fs.open(path, "rb")
    magic = f.peek(2)[:2] if hasattr(f, "peek") else b""
    if magic == b"\x1f\x8b":
        return gzip.GzipFile(fileobj=f, mode="rb")
    return f


def _open_text(path: str) -> io.TextIOWrapper:
    # surrogateescape: undecodable bytes survive as lone surrogates so we can report the line and skip it;
    # utf-8-sig: a BOM (Windows tools write one) is not part of the first record or the CSV header
    return io.TextIOWrapper(open_binary(path), encoding="utf-8-sig", errors="surrogateescape", newline="")


def _bad_utf8(s: str) -> bool:
    return _SURROGATE.search(s) is not None


# --- PubMed / MEDLINE XML ----------------------------------------------------------------------
def read_pubmed_xml(path: str, report: BadInputReport, **_: Any) -> Iterator[Doc]:
    """PubmedArticleSet baseline/update files: one document per article, title + abstract."""
    f = open_binary(path)
    try:
        context = ET.iterparse(f, events=("end",))
        for _, elem in context:
            if elem.tag != "PubmedArticle":
                continue
            pmid = (elem.findtext("MedlineCitation/PMID") or "").strip()
            title = _itertext(elem.find("MedlineCitation/Article/ArticleTitle"))
            parts = []
            for ab in elem.findall("MedlineCitation/Article/Abstract/AbstractText"):
                t = _itertext(ab)
                if not t:
                    continue
                label = ab.get("Label")
                parts.append(f"{label}: {t}" if label else t)
            elem.clear()
            if not pmid:
                report.skip("missing_field", path, None, "PubmedArticle without MedlineCitation/PMID")
                continue
            if not parts and not title:
                report.skip("empty_document", path, None, f"PMID {pmid} has no title or abstract")
                continue
            text = "\n".join([title] + parts) if title else "\n".join(parts)
            report.ok()
            yield {"id": f"pmid:{pmid}", "text": text}
    except ET.ParseError as e:
        line = e.position[0] if getattr(e, "position", None) else None
        report.skip("malformed_xml", path, line, str(e))
    except _TRUNCATION_ERRORS as e:
        _record_truncation(report, path, None, f, e)
    finally:
        f.close()


def _itertext(elem: ET.Element | None) -> str:
    if elem is None:
        return ""
    return " ".join(strip_control_chars("".join(elem.itertext())).split())  # inline markup (<i>, <sup>) flattened


# --- line-based formats --------------------------------------------------------------------------
def _iter_lines(path: str, report: BadInputReport) -> Iterator[tuple[int, str]]:
    """(line number, line) with invalid UTF-8 lines and gzip truncation recorded, not raised."""
    f = _open_text(path)
    lineno = 0
    try:
        for lineno, line in enumerate(f, start=1):
            if _bad_utf8(line):
                report.skip("invalid_utf8", path, lineno)
                continue
            yield lineno, line
    except _TRUNCATION_ERRORS as e:
        _record_truncation(report, path, lineno + 1, f, e)
    finally:
        f.close()


def _iter_json_objects(path: str, report: BadInputReport) -> Iterator[tuple[int, dict]]:
    for lineno, line in _iter_lines(path, report):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            report.skip("malformed_json", path, lineno, f"{e.msg} at column {e.colno}")
            continue
        except RecursionError:
            report.skip("malformed_json", path, lineno, "nested too deeply")
            continue
        if not isinstance(obj, dict):
            report.skip("malformed_json", path, lineno, f"expected a JSON object, got {type(obj).__name__}")
            continue
        yield lineno, obj


def read_jsonl(path: str, report: BadInputReport, text_field: str = "text", id_field: str = "id",
               **_: Any) -> Iterator[Doc]:
    """RedPajama-style JSONL (one object per line with a text field; PMC full text exported as JSONL)."""
    base = fs.basename(path)
    for lineno, obj in _iter_json_objects(path, report):
        text = obj.get(text_field)
        if not isinstance(text, str):
            report.skip("missing_field", path, lineno, f"no string field {text_field!r}")
            continue
        text = strip_control_chars(text)
        if not text.strip():
            report.skip("empty_document", path, lineno)
            continue
        doc_id = obj.get(id_field)
        report.ok()
        yield {"id": str(doc_id) if doc_id is not None else f"{base}:{lineno}", "text": text}


def read_instruction_jsonl(path: str, report: BadInputReport, **_: Any) -> Iterator[Doc]:
    """Instruction data: {"instruction", "input" (optional), "output"} per line."""
    base = fs.basename(path)
    for lineno, obj in _iter_json_objects(path, report):
        missing = [k for k in ("instruction", "output") if not isinstance(obj.get(k), str)]
        if missing:
            report.skip("missing_field", path, lineno, f"no string field(s) {missing}")
            continue
        obj["instruction"], obj["output"] = strip_control_chars(obj["instruction"]), strip_control_chars(obj["output"])
        if not obj["instruction"].strip() or not obj["output"].strip():
            report.skip("empty_document", path, lineno, "empty instruction or output")
            continue
        inp = obj.get("input") or ""
        if not isinstance(inp, str):
            report.skip("missing_field", path, lineno, "'input' is not a string")
            continue
        inp = strip_control_chars(inp)
        report.ok()
        yield {"id": str(obj.get("id", f"{base}:{lineno}")), "instruction": obj["instruction"],
               "input": inp, "output": obj["output"],
               "text": "\n".join(x for x in (obj["instruction"], inp, obj["output"]) if x)}


def read_text(path: str, report: BadInputReport, text_split: str = "file", **_: Any) -> Iterator[Doc]:
    """Plain text: one document per file ("file"), per blank-line-separated block ("paragraph")
    or per line ("line")."""
    if text_split not in ("file", "paragraph", "line"):
        raise DataError(f"{path}: text_split must be 'file', 'paragraph' or 'line', got {text_split!r}")
    base = fs.basename(path)
    buf: list[str] = []
    start = 1
    n = 0

    def flush() -> Iterator[Doc]:
        nonlocal n
        text = "".join(buf).strip("\n")
        if text.strip():
            n += 1
            report.ok()
            yield {"id": f"{base}:{start}", "text": text}
        elif text_split == "file":
            report.skip("empty_document", path, None)

    for lineno, line in _iter_lines(path, report):
        line = strip_control_chars(line)
        if text_split == "line":
            if line.strip():
                report.ok()
                yield {"id": f"{base}:{lineno}", "text": line.rstrip("\r\n")}
            continue
        if text_split == "paragraph" and not line.strip():
            yield from flush()
            buf, start = [], lineno + 1
            continue
        buf.append(line)
    if text_split != "line":
        yield from flush()


# --- MIMIC note CSVs ---------------------------------------------------------------------------
_MIMIC_COLUMNS = {
    # MIMIC-III NOTEEVENTS.csv
    "mimic3": {"id": "ROW_ID", "subject_id": "SUBJECT_ID", "note_type": "CATEGORY", "text": "TEXT"},
    # MIMIC-IV-Note discharge.csv / radiology.csv
    "mimic4": {"id": "note_id", "subject_id": "subject_id", "note_type": "note_type", "text": "text"},
}


def _detect_mimic(header: list[str], path: str) -> dict[str, str]:
    for cols in _MIMIC_COLUMNS.values():
        if all(c in header for c in cols.values()):
            return cols
    # The header is not echoed: without one, the first row is a note (PHI).
    raise DataError(f"{path}:1: first row ({len(header)} fields; is the header missing?) matches neither MIMIC-III NOTEEVENTS "
                    f"({list(_MIMIC_COLUMNS['mimic3'].values())}) nor MIMIC-IV-Note "
                    f"({list(_MIMIC_COLUMNS['mimic4'].values())}) columns")


def read_mimic_csv(path: str, report: BadInputReport, scrub: Callable[[str], str] | None = None,
                   **_: Any) -> Iterator[Doc]:
    """MIMIC-III NOTEEVENTS.csv or MIMIC-IV-Note CSV (quoted multi-line notes, optionally gzipped)."""
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    f = _open_text(path)
    reader = csv.reader(f)
    line = 1
    try:
        header = next(reader, None)
        if header is None:
            report.skip("empty_file", path, None)
            return
        cols = _detect_mimic(header, path)
        idx = {k: header.index(v) for k, v in cols.items()}
        iserror = header.index("ISERROR") if "ISERROR" in header else None
        while True:
            line = reader.line_num + 1  # first physical line of the next record
            try:
                row = next(reader)
            except StopIteration:
                break
            except csv.Error as e:
                report.skip("malformed_csv", path, line, str(e))
                continue
            if len(row) != len(header):
                report.skip("malformed_csv", path, line, f"{len(row)} fields, header has {len(header)}")
                continue
            if iserror is not None and row[iserror].strip() == "1":
                report.skip("iserror_note", path, line)
                continue
            text = row[idx["text"]]
            if _bad_utf8(text) or _bad_utf8(row[idx["id"]]):
                report.skip("invalid_utf8", path, line)
                continue
            text = strip_control_chars(text)  # before the scrubber too: a NUL splits PHI
            if not text.strip():
                report.skip("empty_document", path, line)
                continue
            if scrub is not None:
                text = scrub(text)
            report.ok()
            yield {"id": row[idx["id"]], "text": text, "note_type": row[idx["note_type"]],
                   "subject_id": row[idx["subject_id"]]}
    except _TRUNCATION_ERRORS as e:
        _record_truncation(report, path, line, f, e)
    finally:
        f.close()


# --- prepared clinical notes (output of mellama_jax.cli.prepare_clinical) ----------------------
def read_prepared_clinical(path: str, report: BadInputReport, **_: Any) -> Iterator[Doc]:
    """One `notes-*.jsonl.gz` file of a prepared directory ({"id","text","note_type","subject_id"})."""
    for lineno, obj in _iter_json_objects(path, report):
        text = obj.get("text")
        if not isinstance(text, str) or "id" not in obj:
            report.skip("missing_field", path, lineno, "expected string 'text' and an 'id'")
            continue
        text = strip_control_chars(text)
        if not text.strip():
            report.skip("empty_document", path, lineno)
            continue
        report.ok()
        yield {"id": str(obj["id"]), "text": text, "note_type": str(obj.get("note_type", "")),
               "subject_id": str(obj.get("subject_id", ""))}


FORMATS: dict[str, Callable[..., Iterator[Doc]]] = {
    "pubmed_xml": read_pubmed_xml,
    "jsonl": read_jsonl,
    "text": read_text,
    "mimic_csv": read_mimic_csv,
    "instruction_jsonl": read_instruction_jsonl,
    "prepared_clinical": read_prepared_clinical,
}
_RAW_CLINICAL = {"mimic_csv"}


_SUFFIX_FORMATS = {".xml": "pubmed_xml", ".jsonl": "jsonl", ".json": "jsonl", ".txt": "text", ".csv": "mimic_csv"}


def format_from_name(source: str, path: str) -> str:
    """Format of one file of an `auto` source, from its suffix (a trailing .gz ignored)."""
    name = path[:-3] if path.endswith(".gz") else path
    fmt = _SUFFIX_FORMATS.get(os.path.splitext(name)[1].lower())
    if fmt is None:
        raise DataError(f"data.sources.{source}.format='auto' cannot tell the format of {path} from its "
                        f"name; expected one of {sorted(_SUFFIX_FORMATS)} (optionally .gz) or set format")
    return fmt


def expand_paths(source: str, patterns: list[str], fmt: str) -> list[str]:
    """Sorted files matched by the source's globs (local paths or gs:// / s3:// URLs); a glob that
    matches nothing, or names a bucket that does not exist, is an error."""
    if isinstance(patterns, str):
        patterns = [patterns]
    if not patterns:
        raise DataError(f"data.sources.{source}.paths is empty: give at least one file glob")
    files: list[str] = []
    for pat in patterns:
        remote = fs.is_url(pat)
        try:
            # An object store's listing says which matches are objects: no request per match.
            matched = fs.glob(pat, files_only=fmt != "prepared_clinical") if remote else \
                fs.glob(os.path.expanduser(pat))
        except fs.StorageError as err:
            raise DataError(f"data.sources.{source}.paths: glob {pat!r}: {err}") from err
        if not matched:
            raise DataError(f"data.sources.{source}.paths: glob {pat!r} matches no file")
        if fmt == "prepared_clinical":
            matched = _prepared_files(source, matched)
        files.extend(p for p in matched if fs.is_url(p) or os.path.isfile(p))
    if not files:
        raise DataError(f"data.sources.{source}.paths {list(patterns)}: no regular files matched")
    return sorted(dict.fromkeys(files))


def _prepared_files(source: str, dirs: list[str]) -> list[str]:
    """The shards a prepare_clinical run listed in its PREPARED.json marker (version-checked, all
    present), so leftovers of an interrupted run are never read."""
    from mellama_jax.data.clinical.io import read_marker

    out = []
    for d in dirs:
        if not fs.isdir(d):
            d = fs.dirname(d)
        try:
            meta = read_marker(d)
        except ValueError as err:
            raise DataError(f"data.sources.{source}: {err}") from None
        out.extend(fs.join(d, shard) for shard in meta["shards"])
    return out


def source_scrubber(source: str, src_cfg: Any) -> Callable[[str], str] | None:
    fmt = src_cfg["format"]
    if fmt == "auto":
        from mellama_jax.data.config import source_paths
        fmt = "mimic_csv" if any(str(p).endswith((".csv", ".csv.gz")) for p in source_paths(src_cfg)) else fmt
    scrub_inline = bool(src_cfg.get("scrub_inline", False))
    if fmt in _RAW_CLINICAL and bool(src_cfg.get("require_prepared", False)) and not scrub_inline:
        raise DataError(
            f"data.sources.{source}: raw clinical input (format {fmt!r}) refused because require_prepared "
            "is True; prepare it with `python -m mellama_jax.cli.prepare_clinical` and use format "
            "'prepared_clinical', or set scrub_inline=True")
    if not scrub_inline:
        return None
    from mellama_jax.data.clinical import scrub_text

    return lambda text: scrub_text(text)[0]


def read_file(source: str, src_cfg: Any, path: str, report: BadInputReport,
              scrub: Callable[[str], str] | None = None) -> Iterator[Doc]:
    """Documents of one file of a configured source (dispatch on `format`)."""
    fmt = src_cfg["format"]
    if fmt == "auto":
        fmt = format_from_name(source, path)
    if fmt not in FORMATS:
        raise DataError(f"data.sources.{source}.format={fmt!r}: expected one of {sorted(FORMATS)}")
    kwargs = {k: src_cfg[k] for k in ("text_field", "id_field", "text_split") if k in src_cfg}
    if not fs.isfile(path):
        raise DataError(f"data.sources.{source}: file {path} does not exist")
    return FORMATS[fmt](path, report, scrub=scrub, **kwargs)


def iter_documents(source: str, src_cfg: Any, report: BadInputReport) -> Iterator[Doc]:
    """All documents of a configured source, file by file in sorted order (deterministic)."""
    from mellama_jax.data.config import source_paths
    from mellama_jax.data.doc_filters import filter_documents

    files = expand_paths(source, list(source_paths(src_cfg)), src_cfg["format"])
    scrub = source_scrubber(source, src_cfg)
    report.allow_truncated = bool(src_cfg.get("allow_truncated", False))
    docs = (doc for path in files for doc in read_file(source, src_cfg, path, report, scrub))
    # exclude_ids / dedup (mellama_jax.data.doc_filters); a no-op unless the source sets them
    yield from filter_documents(source, src_cfg, docs, report)
