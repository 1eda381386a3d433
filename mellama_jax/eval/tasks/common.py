"""Shared pieces of the benchmark loaders: the Example record, format errors, bad-record accounting
and readers for every file shape people download benchmarks in.

Readers accept gzip-compressed files (by magic bytes), JSON lines / JSON / parquet (Hugging Face
`datasets` exports), and delimited files whose quoting is detected rather than assumed: pandas'
`to_csv(sep="\\t")` quotes fields containing quotes/tabs/newlines (CSV quoting), older TSVs are
written raw. A delimited file may have a header, an unnamed index column (pandas' default) or no
header at all (then a task-declared column layout applies).

A record that does not fit its format raises FormatError (file, line or row, reason) inside
`LoadReport.record`: in strict mode (the default when a loader is called without a report) that
stops the load; the evaluation runner passes a lenient report that counts the record and keeps
the rest, then applies `config.max_bad_fraction` (the data pipeline's rule). Messages name the file,
line and field and describe a bad value by type and size, never quote it (benchmarks hold clinical
notes; report.describe_value / describe_keys).

Every parsed record has its control and invisible characters removed
(mellama_jax.data.text_hygiene.strip_control_chars_in), after parsing: a "\\u0000" JSON escape only
becomes a NUL once decoded, and benchmark text must be the text the training readers would produce.
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import gzip
import hashlib
import io
import json
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Sequence

from mellama_jax import fs
from mellama_jax.data.sources.report import BadInputReport, describe_keys
from mellama_jax.data.text_hygiene import strip_control_chars_in

__all__ = ["Example", "FormatError", "LoadReport", "read_jsonl", "read_json", "read_tsv", "read_csv",
           "read_delimited", "read_records", "read_text", "parse_xml", "looks_like_jsonl", "require", "sha256_file", "open_text",
           "base_ext", "first_of"]


@dataclass(frozen=True)
class Example:
    """One benchmark item: the fields its prompt needs, its gold reference and its answer choices.

    `reference` depends on the task family: a label string (choice tasks), a list of label
    strings (HoC), a list of answer strings (EmrQA), a list of BIO tags (NER), a reference text
    (summarization) or {"diagnosis", "synonyms"} (clinical cases). `choices` is empty for tasks
    whose answer is free text. `meta["option_letters"]` (MedQA/MedMCQA) lets a prompt set score
    option letters instead of option texts.
    """

    id: str
    inputs: Mapping[str, Any]
    reference: Any
    choices: tuple[str, ...] = ()
    target_text: str = ""  # the answer written as the model should write it (few-shot demos)
    meta: Mapping[str, Any] = field(default_factory=dict)


class FormatError(ValueError):
    """A benchmark file (or one record of it) that does not match its expected format."""

    def __init__(self, path: str, line: int | str | None, message: str, reason: str = "invalid_record"):
        where = f"{path}:{line}" if line is not None else path
        super().__init__(f"{where}: {message}")
        self.path, self.line, self.message, self.reason = path, line, message, reason


@dataclasses.dataclass
class LoadReport(BadInputReport):
    """Bad-record accounting for one task file; `notes` says how the file was read (format,
    quoting, header, known variants) and goes into results.json."""

    strict: bool = True
    notes: dict = dataclasses.field(default_factory=dict)

    @contextlib.contextmanager
    def record(self):
        """Run one record's conversion: a FormatError is re-raised (strict) or counted (lenient)."""
        try:
            yield
        except FormatError as e:
            if self.strict:
                raise
            self.skip(e.reason, e.path, e.line, e.message)

    def note(self, key: str, value: Any) -> None:
        self.notes[key] = value

    def count(self, key: str, n: int = 1) -> None:
        """Count a handled variant (e.g. DDI pair mentions) under notes['variants']."""
        v = self.notes.setdefault("variants", {})
        v[key] = v.get(key, 0) + n

    def to_dict(self) -> dict:
        return {"good": self.good, "bad": self.num_bad, "bad_fraction": round(self.bad_fraction, 6),
                "bad_reasons": dict(self.bad), "first_problems": list(self.examples), **self.notes}


def strict_report(report: LoadReport | None, source: str = "") -> LoadReport:
    return report if report is not None else LoadReport(source=source, strict=True)


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with fs.open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def require(record: Any, fields: Sequence[str], path: str, line: int | str | None) -> None:
    """Raise FormatError naming the first of `fields` that `record` lacks."""
    if not isinstance(record, Mapping):
        raise FormatError(path, line, f"expected a JSON object, got {type(record).__name__}", "not_an_object")
    for name in fields:
        if name not in record or record[name] is None:
            raise FormatError(path, line, f"missing field {name!r} (of {list(fields)} the record "
                                          f"{describe_keys(record, fields)})", "missing_field")


def first_of(record: Mapping, names: Sequence[str], path: str, line, what: str = "") -> Any:
    """The value of the first of `names` present (not None) in `record`; FormatError naming them all."""
    for n in names:
        if n in record and record[n] is not None:
            return record[n]
    label = what or names[0]
    raise FormatError(path, line, f"missing field {label!r} (any of {list(names)}; the record "
                                  f"{describe_keys(record, names)})", "missing_field")


def base_ext(path: str) -> str:
    """The extension that says the format, ignoring a trailing .gz ("x.tsv.gz" -> "tsv")."""
    name = os.path.basename(path).lower()
    if name.endswith(".gz"):
        name = name[:-3]
    return name.rsplit(".", 1)[-1] if "." in name else ""


def _is_gzip(path: str) -> bool:
    return fs.read_head(path, 2) == b"\x1f\x8b"


def parse_xml(path: str):
    """ElementTree of an XML file or object (ET.ParseError for invalid XML, as ET.parse)."""
    import xml.etree.ElementTree as ET
    if not fs.is_url(path):
        return ET.parse(path).getroot()
    with fs.open(path, "rb") as f:
        return ET.parse(f).getroot()


def _open_gzip(path: str):
    """A GzipFile over a local path or a remote object (read by ranged GETs, fs.open)."""
    return gzip.open(path, "rb") if not fs.is_url(path) else gzip.GzipFile(fileobj=fs.open(path, "rb"), mode="rb")


def open_text(path: str):
    """Open a text file (local or gs:// / s3://) for reading, transparently gunzipping it; a UTF-8
    BOM is dropped."""
    if _is_gzip(path):
        return io.TextIOWrapper(_open_gzip(path), encoding="utf-8-sig", newline="")
    return fs.open(path, "r", encoding="utf-8-sig", newline="")


def read_text(path: str) -> str:
    """The whole file as text (gunzipped); a byte that is not UTF-8 is an error naming its line."""
    try:
        if _is_gzip(path):
            with _open_gzip(path) as f:
                data = f.read()
        else:
            data = fs.read_bytes(path)
    except fs.StorageError:
        raise  # unreadable object (after retries), not a truncated file
    except (OSError, EOFError) as e:  # a truncated gzip file
        raise FormatError(path, None, f"unreadable ({e})", "unreadable") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise FormatError(path, line, f"not UTF-8 text ({e.reason} at byte {e.start}); re-save the file as "
                                      "UTF-8", "encoding") from None


def read_jsonl(path: str, report: LoadReport | None = None) -> Iterator[tuple[int, dict]]:
    """Yield (1-based line number, object) for each non-blank line of a JSON-lines file; a line that
    is not a JSON object is a bad record."""
    report = strict_report(report)
    for lineno, line in enumerate(read_text(path).split("\n"), 1):
        if not line.strip():
            continue
        obj = None
        with report.record():
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise FormatError(path, lineno, f"invalid JSON ({e.msg} at column {e.colno})", "invalid_json") from None
            if not isinstance(obj, dict):
                raise FormatError(path, lineno, f"expected a JSON object, got {type(obj).__name__}", "not_an_object")
        if isinstance(obj, dict):
            yield lineno, strip_control_chars_in(obj)


def read_json(path: str) -> Any:
    text = read_text(path)
    try:
        return strip_control_chars_in(json.loads(text))
    except json.JSONDecodeError as e:
        raise FormatError(path, e.lineno, f"invalid JSON ({e.msg} at column {e.colno})", "invalid_json") from None


def looks_like_jsonl(text: str) -> bool:
    """Two or more lines, the first of which is a whole JSON object (an indented JSON file's first
    line is just "{")."""
    lines = [ln for ln in text.split("\n") if ln.strip()]
    if len(lines) < 2 or not lines[0].lstrip().startswith("{"):
        return False
    try:
        return isinstance(json.loads(lines[0]), dict)
    except json.JSONDecodeError:
        return False


def _class_labels(schema) -> dict[str, list[str]]:
    """column -> ClassLabel names, from the `huggingface` schema metadata `datasets` writes into parquet."""
    meta = (schema.metadata or {}).get(b"huggingface")
    if not meta:
        return {}
    try:
        feats = json.loads(meta)["info"]["features"]
    except (ValueError, KeyError, TypeError):
        return {}
    out = {}
    for col, feat in feats.items():
        inner = feat.get("feature", feat) if isinstance(feat, dict) else {}
        if isinstance(inner, dict) and inner.get("_type") == "ClassLabel" and inner.get("names"):
            out[col] = list(inner["names"])
    return out


def _decode(value, names: list[str]):
    if isinstance(value, list):
        return [_decode(v, names) for v in value]
    return names[value] if isinstance(value, int) and 0 <= value < len(names) else value


def read_parquet(path: str, report: LoadReport | None = None) -> Iterator[tuple[str, dict]]:
    """Rows of a parquet file (pyarrow; nested columns come back as dicts/lists) as ("row i", dict).
    ClassLabel columns of a `datasets` export are decoded to their label names."""
    try:
        import pyarrow.parquet as pq
    except ImportError:  # pragma: no cover - pyarrow is a pinned requirement
        raise FormatError(path, None, "reading parquet needs pyarrow (pip install -r requirements.txt)") from None
    try:
        with fs.open(path, "rb") as f:  # a local file, or an object through ranged GETs
            table = pq.read_table(f)
    except fs.StorageError:
        raise
    except Exception as e:  # pyarrow raises several types for a bad file
        raise FormatError(path, None, f"not a readable parquet file ({e})", "unreadable") from None
    labels = _class_labels(table.schema)
    if labels and report is not None:
        report.note("class_labels", labels)
    for i, rec in enumerate(table.to_pylist()):
        rec = strip_control_chars_in(rec)
        for col, names in labels.items():
            if col in rec:
                rec[col] = _decode(rec[col], names)
        yield f"row {i}", rec


def _raise_field_limit() -> None:
    # Abstracts and transcriptions exceed csv's 128 KiB default field limit.
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))


def _parse(text: str, delimiter: str, quoted: bool) -> list[tuple[int, list[str]]]:
    """(start line, fields) per non-blank record; raises csv.Error on malformed quoting (strict)."""
    kw = dict(delimiter=delimiter, strict=True) if quoted else dict(delimiter=delimiter, quoting=csv.QUOTE_NONE)
    reader = csv.reader(io.StringIO(text), **kw)
    rows, prev_end = [], 0
    for row in reader:
        start, prev_end = prev_end + 1, reader.line_num
        if not any(cell.strip() for cell in row):
            continue
        rows.append((start, row))
    return rows


INDEX_NAMES = ("", "Unnamed: 0", "index_col")


def _header(first: list[str], columns: Sequence[str], layouts: Sequence[Sequence[str]]):
    """(column names, whether row 1 is a header, index column present) or None."""
    names = [c.strip() for c in first]
    if all(c in names for c in columns) and columns:
        return names, True, bool(names) and names[0] in INDEX_NAMES
    for layout in layouts:
        if len(first) == len(layout):
            return list(layout), False, False
        if len(first) == len(layout) + 1 and first[0].strip().isdigit():
            return [""] + list(layout), False, True
    return None


def read_delimited(path: str, columns: Sequence[str], layouts: Sequence[Sequence[str]] = (),
                   delimiter: str | None = None, report: LoadReport | None = None,
                   ) -> Iterator[tuple[int, dict]]:
    """Yield (start line, row dict) for a TSV/CSV, detecting its quoting, header and index column.

    Detection (recorded in report.notes): the file is parsed both CSV-quoted (strict) and, for TSV,
    raw; CSV quoting is chosen when it parses and gives every record the header's width, raw when
    only raw does. When neither fits every record, the one that does not break is kept and the
    records of the wrong width are bad records (file:line). `layouts` are the task's known
    headerless column orders (a leading integer column is taken as an index).
    """
    report = strict_report(report)
    _raise_field_limit()
    text = read_text(path)
    if not text.strip():
        raise FormatError(path, 1, "empty file (expected a header line)", "empty_file")
    if delimiter is None:
        ext = base_ext(path)
        first_line = text.split("\n", 1)[0]
        delimiter = "," if ext == "csv" else "\t" if (ext == "tsv" or "\t" in first_line) else ","
    try:
        quoted, quoted_error = _parse(text, delimiter, True), None
    except csv.Error as e:
        quoted, quoted_error = None, str(e)
    raw = _parse(text, delimiter, False) if delimiter == "\t" else None

    def fits(rows):
        if not rows:
            return None
        head = _header(rows[0][1], columns, layouts)
        if head is None:
            return None
        width = len(head[0])
        body = rows[1:] if head[1] else rows
        return head, sum(len(r) != width for _, r in body)

    fq = fits(quoted) if quoted is not None else None
    fr = fits(raw) if raw is not None else None
    if fq is not None and (fq[1] == 0 or fr is None or fq[1] <= fr[1]):
        rows, (head, _), mode = quoted, fq, "csv"
        if raw is not None and [r for _, r in raw] == [r for _, r in quoted]:
            mode = "none needed (no quoted field)"
    elif fr is not None:
        rows, (head, _), mode = raw, fr, "none (quote characters kept as text)"
    else:
        first = (quoted or raw or [(1, [])])[0][1]
        if quoted is None and raw is None:
            raise FormatError(path, None, f"cannot parse as {'TSV' if delimiter == chr(9) else 'CSV'} ({quoted_error})",
                              "unparseable")
        # the first row is not quoted: without a header it is a record (note text)
        raise FormatError(path, 1, f"header lacks column(s) {[c for c in columns if c not in first]} "
                                   f"(of {list(columns)} the first row "
                                   f"{describe_keys(dict.fromkeys(c.strip() for c in first), columns)})",
                          "bad_header")
    names, has_header, has_index = head
    report.note("format", "tsv" if delimiter == "\t" else "csv")
    report.note("quoting", mode)
    report.note("header", "yes" if has_header else f"no (layout {[n for n in names if n]})")
    if has_index:
        report.note("index_column", True)
    if _is_gzip(path):
        report.note("compression", "gzip")
    names = ["" if n in INDEX_NAMES else n for n in names]
    sep = "tab-separated" if delimiter == "\t" else "comma-separated"
    for start, row in (rows[1:] if has_header else rows):
        ok = False
        with report.record():
            if len(row) != len(names):
                raise FormatError(path, start, f"expected {len(names)} {sep} fields ({names}), got {len(row)}",
                                  "wrong_field_count")
            ok = True
        if ok:
            yield start, dict(zip(names, strip_control_chars_in(row)))


def read_tsv(path: str, columns: Sequence[str], layouts: Sequence[Sequence[str]] = (),
             report: LoadReport | None = None) -> Iterator[tuple[int, dict]]:
    return read_delimited(path, columns, layouts, delimiter="\t", report=report)


def read_csv(path: str, columns: Sequence[str], layouts: Sequence[Sequence[str]] = (),
             report: LoadReport | None = None) -> Iterator[tuple[int, dict]]:
    return read_delimited(path, columns, layouts, delimiter=",", report=report)


def read_records(path: str, columns: Sequence[str] = (), layouts: Sequence[Sequence[str]] = (),
                 report: LoadReport | None = None) -> Iterator[tuple[Any, dict]]:
    """(line or row, dict) from any tabular distribution: JSON lines, a JSON list of objects (or
    JSON lines named .json, as `datasets.Dataset.to_json` writes), parquet, TSV or CSV; gzip ok."""
    report = strict_report(report)
    ext = base_ext(path)
    if _is_gzip(path):
        report.note("compression", "gzip")
    if ext == "parquet":
        report.note("format", "parquet")
        yield from read_parquet(path, report)
        return
    if ext in ("tsv", "csv", "txt"):
        yield from read_delimited(path, columns, layouts, report=report)
        return
    if ext == "json":
        text = read_text(path)
        if looks_like_jsonl(text):
            report.note("format", "jsonl")
            yield from read_jsonl(path, report)
            return
        data = read_json(path)
        if isinstance(data, dict) and isinstance(data.get("data"), list):
            data = data["data"]
        elif isinstance(data, dict):  # one record on one line (a one-row `to_json` export)
            data = [data]
        if not isinstance(data, list):
            raise FormatError(path, None, "expected a JSON list of records (or JSON lines)", "bad_structure")
        report.note("format", "json")
        for i, rec in enumerate(data):
            if isinstance(rec, dict):
                yield f"record {i}", rec
            else:
                with report.record():
                    raise FormatError(path, f"record {i}", f"expected an object, got {type(rec).__name__}",
                                      "not_an_object")
        return
    report.note("format", "jsonl")
    yield from read_jsonl(path, report)
