"""Bad-input accounting: what was skipped in which file and line, and the max-bad-fraction check.

Messages name the file and line and the reason, never the document text (clinical notes are PHI).
"""
from __future__ import annotations

import collections
import dataclasses
import logging
import re
from typing import Any, Iterable, Mapping

__all__ = ["DataError", "BadInputReport", "describe_value", "describe_keys", "label_repr"]

# Label-shaped: a single letter, or lower-case words (an upper-case prefix such as "DDI-" allowed).
_LABEL_SHAPE = re.compile(r"^(?:[A-Za-z]|(?:[A-Z]+[-_])?[a-z][a-z _.\-]*)$")

log = logging.getLogger("mellama_jax.data")


class DataError(ValueError):
    """Input data that cannot be used: names the source, file, line and what was expected."""


def describe_value(value: Any) -> str:
    """What a value is, never what it says: a field of a malformed record may hold note text (a
    swapped speaker/text pair puts the note where a label was expected), so messages name the field
    and describe its value by type and size."""
    if value is None:
        return "null"
    if isinstance(value, str):
        return f"a string of {len(value)} characters" if value else "an empty string"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, Mapping):
        return f"an object of {len(value)} field(s)"
    if isinstance(value, (list, tuple)):
        return f"a list of {len(value)} item(s)"
    return f"a {type(value).__name__}"


def label_repr(value: Any) -> str:
    """A bad label or speaker as a message shows it: quoted when it has the shape of a label
    vocabulary entry ("neutral", "cell cycle", "DDI-maybe", "robot", "F": at most 32 characters and
    3 words, lower-case apart from a single letter or an upper-case prefix, no digits), described
    otherwise. Note text put in a label field by swapped columns is longer, capitalises names and
    carries the digits of MRNs, phones, dates and ages, so it is described, never quoted."""
    if isinstance(value, str) and 0 < len(value) <= 32 and len(value.split()) <= 3 and _LABEL_SHAPE.match(value):
        return repr(value)
    return f"({describe_value(value)})"


def describe_keys(record: Mapping, known: Iterable[str]) -> str:
    """The record's keys that are expected field names, and a count of the others: an unexpected key
    is not quoted, since a record whose key is note text would otherwise put that text in a log. A
    key that differs from an expected name only in case or surrounding spaces is reported by the
    expected name it resembles."""
    known = list(dict.fromkeys(known))
    named = sorted(k for k in record if isinstance(k, str) and k in known)
    lowered = {k.lower(): k for k in known}
    near = sorted({lowered[k.strip().lower()] for k in record
                   if isinstance(k, str) and k not in known and k.strip().lower() in lowered})
    other = len(record) - len(named)
    text = f"has {named}" if named else "has none of them"
    if other:
        text += f" and {other} other field(s)"
        if near:
            text += f", of which {len(near)} differ from {near} only in case or spacing"
    return text


@dataclasses.dataclass
class BadInputReport:
    """Counts of good documents and of skipped problems (by reason) for one source."""

    source: str
    max_examples: int = 20
    good: int = 0
    bad: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    examples: list = dataclasses.field(default_factory=list)
    # Good documents left out on purpose (duplicates, excluded ids): not bad input, counted apart.
    dropped: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    # Files whose stream ended early or became unreadable: {"path", "line", "detail",
    # "bytes_read", "file_bytes", "unread_fraction"}. Any makes check() fail unless allowed.
    truncations: list = dataclasses.field(default_factory=list)
    allow_truncated: bool = False

    def ok(self, n: int = 1) -> None:
        self.good += n

    def skip(self, reason: str, path: str, line: int | None, detail: str = "") -> None:
        """Record one skipped item; the first few are logged with file:line."""
        self.bad[reason] += 1
        where = f"{path}:{line}" if line is not None else path
        msg = f"[{self.source}] {where}: {reason}" + (f" ({detail})" if detail else "")
        if len(self.examples) < self.max_examples:
            self.examples.append(msg)
            log.warning("skipping bad input: %s", msg)

    def drop(self, reason: str) -> None:
        self.dropped[reason] += 1

    def truncated(self, path: str, line: int | None, detail: str, bytes_read: int, file_bytes: int) -> None:
        """A file whose remainder cannot be read (cut-short or corrupt gzip): counted as one bad
        item AND recorded with the share of the file left unread, so check() can refuse it."""
        unread = max(0.0, 1.0 - bytes_read / file_bytes) if file_bytes else 0.0
        self.truncations.append({"path": path, "line": line, "detail": detail, "bytes_read": int(bytes_read),
                                 "file_bytes": int(file_bytes), "unread_fraction": round(unread, 4)})
        if bytes_read >= file_bytes:
            share = "file cut short: every byte was read and the compressed stream has no end marker"
        else:
            share = f"{unread:.1%} of the file unread (byte ~{bytes_read} of {file_bytes})"
        self.skip("truncated_gzip", path, line, f"{detail}; {share}")

    def truncation_summary(self) -> str:
        return "; ".join(f"{t['path']}: {t['detail']} ({t['unread_fraction']:.1%} unread)"
                         for t in self.truncations[:5])

    @property
    def num_bad(self) -> int:
        return sum(self.bad.values())

    @property
    def bad_fraction(self) -> float:
        total = self.good + self.num_bad
        return self.num_bad / total if total else 0.0

    def merge(self, other: "BadInputReport") -> None:
        self.good += other.good
        self.bad.update(other.bad)
        self.truncations.extend(other.truncations)
        self.dropped.update(other.dropped)
        self.examples.extend(other.examples[: max(0, self.max_examples - len(self.examples))])

    def check(self, max_bad_fraction: float) -> None:
        """Fail when more than `max_bad_fraction` of the source was bad, or nothing was good."""
        if self.truncations and not self.allow_truncated:
            raise DataError(
                f"source {self.source!r}: {len(self.truncations)} truncated or corrupt file(s): "
                f"{self.truncation_summary()}; the rest of each was not read. Set "
                f"data.sources.{self.source}.allow_truncated=True to keep what was read")
        if self.good == 0:
            raise DataError(f"source {self.source!r}: no usable documents were read "
                            f"(bad: {dict(self.bad) or 'none'}; first problems: {self.examples[:5]})")
        if self.bad_fraction > max_bad_fraction:
            raise DataError(
                f"source {self.source!r}: {self.num_bad} of {self.good + self.num_bad} items were bad "
                f"({self.bad_fraction:.1%} > data.max_bad_fraction={max_bad_fraction:.1%}); reasons "
                f"{dict(self.bad)}; first problems: {self.examples[:5]}")

    def to_dict(self) -> dict:
        return {"source": self.source, "good": self.good, "bad": dict(self.bad),
                "bad_fraction": self.bad_fraction, "examples": list(self.examples),
                "dropped": dict(self.dropped), "truncations": list(self.truncations),
                "allow_truncated": self.allow_truncated}

    @classmethod
    def from_dict(cls, d: dict) -> "BadInputReport":
        r = cls(source=d["source"])
        r.good = int(d["good"])
        r.bad.update(d.get("bad", {}))
        r.examples = list(d.get("examples", []))
        r.dropped.update(d.get("dropped", {}))
        r.truncations = list(d.get("truncations", []))
        r.allow_truncated = bool(d.get("allow_truncated", False))
        return r

    def summary(self) -> str:
        dropped = ("; dropped " + ", ".join(f"{k}={v}" for k, v in sorted(self.dropped.items()))
                   if self.dropped else "")
        if not self.num_bad:
            return f"[{self.source}] {self.good} documents, no problems{dropped}"
        return (f"[{self.source}] {self.good} documents; skipped {self.num_bad} "
                f"({self.bad_fraction:.2%}): " + ", ".join(f"{k}={v}" for k, v in sorted(self.bad.items()))
                + dropped)
