"""The one normaliser for invisible characters in input text: `strip_control_chars(text)`.

Every reader through which text enters the project calls it before anything looks at the text
(PHI detection, filters, tokenisation): the clinical readers and the de-identifier
(data/clinical/io.py, PhiScrubber.scrub), the pretraining readers (data/sources/readers.py), the
SFT reader and the eval loaders.

What it removes, and why removal (not replacement by a space):
  * C0 controls U+0000-U+001F except TAB, LF and CR, DEL U+007F and C1 controls U+0080-U+009F.
    A NUL inside "617-555-\\x001234", "MRN 12\\x00345678" or "Jo\\x00hnathan" splits the token so
    that no PHI rule matches, and the NUL and the digits went through de-identification
    untouched. Removing the character rejoins the token the writer meant, so the phone, the MRN
    and the name are found; a space would keep them split ("Jo hnathan"). Form feed, vertical tab
    and NEL are removed too: a page break between two words joins them ("end.Next"), a small cost
    next to letting them split PHI.
  * Format characters (Unicode category Cf): zero-width space/joiners U+200B-U+200D, word joiner
    U+2060, BOM / zero-width no-break space U+FEFF, soft hyphen U+00AD, bidirectional marks and
    embeddings U+200E/F, U+202A-E, U+2066-9, and the rest of Cf. They are invisible, so a note
    that reads "John" to a person can hide "Jo\\u200bhn" from every regular expression, and they
    carry nothing a language model should learn. The cost: emoji ZWJ sequences fall apart into
    their parts and ZWNJ in Persian/Indic scripts is lost (the words stay readable); neither
    matters next to a leaked name in medical text.
The list of Cf characters is written out (Unicode 14) rather than read from `unicodedata`, so the
same input gives the same text on every Python version.
"""
from __future__ import annotations

import re
from typing import Any

__all__ = ["CONTROL_CHARS", "strip_control_chars", "strip_control_chars_in", "has_control_chars"]

_C0_C1 = "\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f"  # keeps \t \n \r
_FORMAT = ("\u00ad\u0600-\u0605\u061c\u06dd\u070f\u0890-\u0891\u08e2\u180e\u200b-\u200f\u202a-\u202e"
           "\u2060-\u2064\u2066-\u206f\ufeff\ufff9-\ufffb\U000110bd\U000110cd\U00013430-\U00013438"
           "\U0001bca0-\U0001bca3\U0001d173-\U0001d17a\U000e0001\U000e0020-\U000e007f")
CONTROL_CHARS = re.compile(f"[{_C0_C1}{_FORMAT}]")


def strip_control_chars(text: str) -> str:
    """`text` without C0/C1 control characters (except \\t \\n \\r) and format (Cf) characters."""
    return CONTROL_CHARS.sub("", text)


def strip_control_chars_in(value: Any) -> Any:
    """`value` with strip_control_chars applied to every string in it (dict values and keys, list and
    tuple items, recursively); other values unchanged. For parsed records (JSON, CSV rows)."""
    if isinstance(value, str):
        return strip_control_chars(value)
    if isinstance(value, dict):
        return {strip_control_chars_in(k): strip_control_chars_in(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(strip_control_chars_in(v) for v in value)
    return value


def has_control_chars(text: str) -> bool:
    return CONTROL_CHARS.search(text) is not None
