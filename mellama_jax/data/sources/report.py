"""Bad-input accounting: what was skipped in which file and line, and the max-bad-fraction check.

Messages name the file and line and the reason, never the document text (clinical notes are PHI).
"""
from __future__ import annotations

import collections
import dataclasses
import logging

__all__ = ["DataError", "BadInputReport"]

log = logging.getLogger("mellama_jax.data")


class DataError(ValueError):
    """Input data that cannot be used: names the source, file, line and what was expected."""


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
        self.dropped.update(other.dropped)
        self.examples.extend(other.examples[: max(0, self.max_examples - len(self.examples))])

    def check(self, max_bad_fraction: float) -> None:
        """Fail when more than `max_bad_fraction` of the source was bad, or nothing was good."""
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
                "dropped": dict(self.dropped)}

    @classmethod
    def from_dict(cls, d: dict) -> "BadInputReport":
        r = cls(source=d["source"])
        r.good = int(d["good"])
        r.bad.update(d.get("bad", {}))
        r.examples = list(d.get("examples", []))
        r.dropped.update(d.get("dropped", {}))
        return r

    def summary(self) -> str:
        dropped = ("; dropped " + ", ".join(f"{k}={v}" for k, v in sorted(self.dropped.items()))
                   if self.dropped else "")
        if not self.num_bad:
            return f"[{self.source}] {self.good} documents, no problems{dropped}"
        return (f"[{self.source}] {self.good} documents; skipped {self.num_bad} "
                f"({self.bad_fraction:.2%}): " + ", ".join(f"{k}={v}" for k, v in sorted(self.bad.items()))
                + dropped)
