"""Name lexicons for PHI scrubbing: bundled first/last-name lists and user-supplied names.

The lists come from the `philter-lite` package (BSD-3, a fork of UCSF Philter): ~97k first
names, ~161k last names and a ~195k-word "not a name" vocabulary (English plus clinical terms,
drug names, lab abbreviations). Philter's own pipeline needs NLTK tagger data that would have to
be downloaded, so we read only its data file and apply our own rules. If the package is missing,
the scrubber falls back to context rules alone (reported as `name_lexicon: "none"`).
"""
from __future__ import annotations

import functools
import importlib.util
import os
import re
import tomllib
import unicodedata
from dataclasses import dataclass


def fold_accents(s: str) -> str:
    return unicodedata.normalize("NFKD", s).encode("ascii", "ignore").decode("ascii")


@dataclass(frozen=True)
class NameLexicon:
    """Lower-cased name vocabularies; `names - not_names` is the set that flags a name on its own."""

    first: frozenset[str]
    last: frozenset[str]
    not_names: frozenset[str]
    source: str

    def is_name(self, token_lower: str) -> bool:
        if token_lower in self.first or token_lower in self.last:
            return True
        plain = fold_accents(token_lower) if not token_lower.isascii() else token_lower
        if plain != token_lower and (plain in self.first or plain in self.last):
            return True  # the lists are ASCII: Renée -> renee
        if "'" in plain or "-" in plain:  # O'Neill -> oneill; Al-Hassan -> hassan
            parts = [p for p in re.split(r"['\-]", plain) if len(p) > 2]
            joined = plain.replace("'", "").replace("-", "")
            return joined in self.last or (bool(parts) and all(p in self.last or p in self.first for p in parts))
        return False

    def is_strong_name(self, token_lower: str) -> bool:
        """A token that is a known name and not an ordinary or clinical word.

        Exact entries only: hyphenated tokens are mostly eponyms ("Mallory-Weiss", "Cheyne-Stokes"),
        so they may extend a name but never start one on the lexicon's word alone.
        """
        plain = fold_accents(token_lower) if not token_lower.isascii() else token_lower
        return (plain in self.first or plain in self.last) and plain not in self.not_names \
            and token_lower not in self.not_names

    def is_common_word(self, token_lower: str) -> bool:
        return token_lower in self.not_names


# Words that the bundled lists call names but that clinical notes use as ordinary words.
_CLINICAL_NOT_NAMES = frozenset(
    """
    admit admission allergies alert april assessment august bed blood brief care chief clinic
    course daily date day diet discharge exam family floor follow general given history home
    hospital impression instructions labs last lines major march may medical meds mental night
    normal note nurse nursing oral pain patient physical plan presents rehab review room service
    signed social stable status summary surgery unit vital vitals ward
    babinski mcburney meckel broca janeway sjogren ringer breslow killip trousseau chvostek
    kernig brudzinski romberg phalen tinel finkelstein lachman mcmurray spurling apley kehr
    virchow rovsing gleason glasgow apgar braden mallampati ranson cockcroft gault kussmaul
    cheyne lewy wilms ewing osler charcot horner raynaud cushing hashimoto kaposi addison whipple
    hodgkin parkinson alzheimer crohn wernicke korsakoff guillain barre foley ganz nissen roux
    trendelenburg valsalva heimlich epley hallpike colles bence mallory weiss wolff
    """.split()
)


CLINICAL_NOT_NAMES = _CLINICAL_NOT_NAMES


def _philter_set_path() -> str | None:
    # find_spec does not execute the package (which would import NLTK); we only want its data.
    spec = importlib.util.find_spec("philter_lite")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(list(spec.submodule_search_locations)[0], "filters", "set.toml")
    return path if os.path.exists(path) else None


@functools.lru_cache(maxsize=1)
def load_name_lexicon() -> NameLexicon | None:
    """Loads philter-lite's name lists once per process (~0.5 s); None if not installed."""
    path = _philter_set_path()
    if path is None:
        return None
    with open(path, "rb") as f:
        data = tomllib.load(f)
    try:
        first, last, nonames = data["firstnames"], data["lastnames"], data["nonames"]
    except KeyError as e:  # a future philter-lite with another layout
        raise ValueError(f"{path}: expected keys firstnames/lastnames/nonames, missing {e}") from e
    return NameLexicon(
        first=frozenset(w for w in first if w),
        last=frozenset(w for w in last if w),
        not_names=frozenset(w for w in nonames if w) | _CLINICAL_NOT_NAMES,
        source="philter-lite",
    )


# Equivalents of philter-lite's first-name context patterns, used when the package is missing.
_RIGHT_OF_FIRST = r"(?<!\,)(?<!\.)(?<!:)(?<![ ][A-Z])(?<![ ][A-Z]\.)([ ]+\b[A-Z][a-zA-Z]+\b([ ]+)?)"
_LEFT_OF_FIRST = r"(?<!\,)[ ]+\b[A-Z][a-zA-Z]+\b\,[ ]+"


@functools.lru_cache(maxsize=1)
def first_name_context_patterns() -> tuple[re.Pattern, re.Pattern]:
    """(right, left): philter-lite's `names_regex_context3` (a capitalised word after a first name;
    match at the first name's end) and `names_regex_context1` ("Word, " before a first name; match
    at the space before the word), read from its regex_context.toml so the rules stay Philter's."""
    right, left = _RIGHT_OF_FIRST, _LEFT_OF_FIRST
    path = _philter_set_path()
    if path is not None:
        ctx = os.path.join(os.path.dirname(path), "regex_context.toml")
        try:
            with open(ctx, "rb") as f:
                patterns = tomllib.load(f).get("regex_context", {})
            right = patterns.get("names_regex_context3", right)
            left = patterns.get("names_regex_context1", left)
        except (OSError, tomllib.TOMLDecodeError):
            pass
    return re.compile(right), re.compile(left)


def read_name_list(path: str) -> frozenset[str]:
    """Reads a user name list (one name per line, '#' comments) into lower-cased name tokens.

    Full names are split into tokens; tokens shorter than two characters are ignored.
    """
    tokens: set[str] = set()
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.split("#", 1)[0].strip()
            for tok in line.replace(",", " ").split():
                tok = tok.strip(".").lower()
                if len(tok) >= 2:
                    tokens.add(tok)
    return frozenset(tokens)
