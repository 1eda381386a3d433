"""Property-based fuzzing (inputs no hand-written test thinks of): readers on arbitrary bytes (plain, gzip, cut gzip), config
overrides with arbitrary numbers. Bounded examples by default; `-m slow` runs many more.

Properties: a reader either yields documents or raises the one documented error type (DataError
for the pipeline readers, ValueError for the clinical readers) -- never a traceback of another
kind, never RecursionError, never a hang; validation either accepts a value inside its rule's
range or names the key.
"""
from __future__ import annotations

import gzip
import math
import os
import sys
import tempfile

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from configs.pretrain import get_config  # noqa: E402
from mellama_jax.config_validation import ConfigRangeError, numeric_items, rule_for, validate_config  # noqa: E402
from mellama_jax.data.clinical.io import InputStats, iter_notes  # noqa: E402
from mellama_jax.data.sources.readers import FORMATS, read_file  # noqa: E402
from mellama_jax.data.sources.report import BadInputReport, DataError  # noqa: E402

FAST = settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
SLOW = settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))

# Bytes that look like the formats (so the parsers get past their first byte) or are random.
_SNIPPETS = [b'{"id": 1, "text": "a note"}\n', b"ROW_ID,SUBJECT_ID,CATEGORY,TEXT\n", b'"', b"\n", b",",
             b"<PubmedArticleSet><PubmedArticle><MedlineCitation><PMID>1</PMID>", b"[" * 50, b"{", b"\xff\xfe",
             b"note_id,subject_id,note_type,text\n", b'{"instruction": "x", "output": "y"}\n', b"\x00"]
payloads = st.one_of(
    st.binary(max_size=3000),
    st.lists(st.sampled_from(_SNIPPETS) | st.binary(max_size=40), max_size=60).map(b"".join),
)


@st.composite
def files(draw):
    data = draw(payloads)
    mode = draw(st.sampled_from(["plain", "gzip", "cut_gzip", "gzip_garbage"]))
    if mode == "gzip":
        data = gzip.compress(data)
    elif mode == "cut_gzip":
        z = gzip.compress(data)
        data = z[: draw(st.integers(0, max(len(z) - 1, 0)))]
    elif mode == "gzip_garbage":
        data = b"\x1f\x8b" + data
    return data


def _write(data: bytes, suffix: str) -> str:
    fd, path = tempfile.mkstemp(suffix=suffix)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return path


def _check_pipeline_readers(data: bytes) -> None:
    path = _write(data, ".dat")
    try:
        for fmt in sorted(FORMATS):
            report = BadInputReport("fuzz")
            try:
                for doc in read_file("fuzz", {"format": fmt}, path, report):
                    assert isinstance(doc["text"], str)
            except DataError:
                pass
            assert report.num_bad >= len(report.truncations)
    finally:
        os.remove(path)


def _check_clinical_readers(data: bytes) -> None:
    path = _write(data, ".csv")
    try:
        for fmt in ("auto", "mimic3", "mimic4", "csv", "jsonl"):
            try:
                for note in iter_notes(path, fmt, InputStats(path)):
                    assert isinstance(note.text, str) and note.text.strip()
            except ValueError:
                pass
    finally:
        os.remove(path)


@FAST
@given(files())
def test_pipeline_readers_never_crash(data):
    _check_pipeline_readers(data)


@FAST
@given(files())
def test_clinical_readers_never_crash(data):
    _check_clinical_readers(data)


@pytest.mark.slow
@SLOW
@given(files())
def test_readers_never_crash_many(data):
    _check_pipeline_readers(data)
    _check_clinical_readers(data)


# ------------------------------------------------------------------ config overrides
_KEYS = [k for k, _ in numeric_items(get_config("tiny"))]
numbers = st.one_of(
    st.integers(-10**12, 10**12),
    st.floats(allow_nan=True, allow_infinity=True, width=64),
    st.sampled_from([0, 1, -1, 2, 0.0, 1.0, -1e-9, 1e-9, 0.999999, 1.000001]),
)


def _check_override(key: str, value) -> None:
    c = get_config("tiny")
    *section, name = key.split(".")
    node = c
    for part in section:
        node = node[part]
    old = node[name]
    if isinstance(old, int) and not isinstance(value, int):
        if not (isinstance(value, float) and math.isfinite(value) and value == int(value)):
            return  # ml_collections refuses a float for an int field before validation runs
        value = int(value)
    node[name] = value
    rule = rule_for(key)
    try:
        validate_config(c)
    except ConfigRangeError as err:
        assert f"config.{key}" in str(err) or not rule.contains(value), str(err)
        return
    assert rule.contains(value), f"{key}={value!r} accepted although outside {rule.describe()}"


@FAST
@given(st.sampled_from(_KEYS), numbers)
def test_config_overrides_are_range_checked(key, value):
    _check_override(key, value)


@pytest.mark.slow
@SLOW
@given(st.sampled_from(_KEYS), numbers)
def test_config_overrides_are_range_checked_many(key, value):
    _check_override(key, value)
