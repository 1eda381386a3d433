"""NER: i2b2 2012 (clinical; original XML with TEXT + EVENT spans, or BIO) and the biomedical corpora
BC5CDR (chemical, disease) and NCBI-disease (BIO text, or token/tag records from HF exports).

All become sentence examples of whitespace tokens with gold BIO tags; the model marks entities
in its output and parsing maps them back onto the same tokens, so seqeval scores equal-length
tag sequences.
"""
from __future__ import annotations

import os
import re
import xml.etree.ElementTree as ET

from mellama_jax import fs
from mellama_jax.data.sources.report import describe_value, label_repr
from mellama_jax.eval.tasks.common import (Example, FormatError, LoadReport, parse_xml, read_text, base_ext, first_of,
                                           read_records, strict_report)

__all__ = ["load_i2b2", "load_i2b2_xml", "load_bio", "load_ner", "load_ner_records", "DEFAULT_ENTITY_TYPES", "markup"]

# Me-LLaMA scored problems, treatments and tests (the clinically meaningful i2b2 2012 EVENT types).
DEFAULT_ENTITY_TYPES = ("problem", "treatment", "test")
_TAG = re.compile(r"^(O|[BI](-\S+)?)$")


def markup(tokens: list[str], tags: list[str]) -> str:
    """The sentence with entities wrapped as <span class="type">..</span> (the target of NER demos)."""
    out, i = [], 0
    while i < len(tokens):
        tag = tags[i]
        if tag == "O":
            out.append(tokens[i])
            i += 1
            continue
        etype = tag[2:]
        j = i + 1
        while j < len(tokens) and tags[j] == f"I-{etype}":
            j += 1
        out.append(f'<span class="{etype}">{" ".join(tokens[i:j])}</span>')
        i = j
    return " ".join(out)


def _example(ex_id: str, tokens: list[str], tags: list[str], types: tuple[str, ...]) -> Example:
    return Example(id=ex_id, inputs={"sentence": " ".join(tokens), "entity_types": ", ".join(types)},
                   reference=list(tags), choices=(), target_text=markup(tokens, tags),
                   meta={"tokens": list(tokens)})


def _norm_tag(tag: str, types: tuple[str, ...], bare_type: str | None, path, where) -> str:
    if not _TAG.match(tag):
        # label_repr: a token/tag swap puts a note's word in the tag field
        raise FormatError(path, where, f"tag {label_repr(tag)} is not O, B[-type] or I[-type]", "bad_tag")
    if tag == "O":
        return tag
    if len(tag) == 1 and bare_type is None:
        raise FormatError(path, where, f"untyped tag {tag if tag in ('B', 'I') else '?'}: this task needs typed tags (B-problem, ...); "
                                       "single-type corpora are tasks of their own (bc5cdr_chem, bc5cdr_disease, "
                                       "ncbi_disease)", "bad_tag")
    etype = tag[2:].lower() if len(tag) > 1 else bare_type
    return f"{tag[0]}-{etype}" if (etype in types or etype == bare_type) else "O"


def load_bio(path: str, types: tuple[str, ...] = DEFAULT_ENTITY_TYPES, report: LoadReport | None = None,
             bare_type: str | None = "entity") -> list[Example]:
    """Token-per-line BIO (token, whitespace, tag; blank line between sentences; gzip ok).

    Bare "B"/"I" tags (single-type corpora such as BLURB's BC5CDR-chem/-disease and NCBI-disease) get
    type `bare_type`; typed tags whose type is not in `types` become "O" so gold and prediction share
    one label set. A line without a tag or with an invalid tag makes its sentence a bad record.
    """
    report = strict_report(report)
    out, tokens, tags = [], [], []
    start, error = 1, None
    base = os.path.basename(path)

    def flush():
        nonlocal error
        if error is not None:
            with report.record():
                raise error
        elif tokens:
            out.append(_example(f"{base}:{start}", tokens[:], tags[:], types))
        tokens.clear()
        tags.clear()
        error = None

    for lineno, line in enumerate(read_text(path).split("\n"), 1):
        line = line.rstrip("\n").rstrip("\r")
        if not line.strip():
            flush()
            start = lineno + 1
            continue
        if line.startswith("-DOCSTART-"):
            continue
        if error is not None:
            continue
        parts = line.split("\t") if "\t" in line else line.split()
        try:
            if len(parts) < 2 or not parts[0].strip():
                raise FormatError(path, lineno, "expected 'token<TAB>tag', found no tag field", "no_tag")
            tag = _norm_tag(parts[-1].strip(), types, bare_type, path, lineno)
        except FormatError as e:
            error = e
            continue
        tokens.append(parts[0].strip())
        tags.append(tag)
    flush()
    return out


def _class_names(report: LoadReport, column: str) -> list[str] | None:
    return (report.notes.get("class_labels") or {}).get(column)


def load_ner_records(path: str, types: tuple[str, ...], report: LoadReport | None = None,
                     bare_type: str | None = "entity") -> list[Example]:
    """Sentence records with `tokens` and string tags (`ner_tags`/`tags`): HF `datasets` parquet
    (ClassLabel ids decoded with the label names stored in the file) or JSON lines with string tags."""
    report = strict_report(report)
    out = []
    for where, rec in read_records(path, ("tokens", "ner_tags"), report=report):
        with report.record():
            tokens = first_of(rec, ("tokens", "words"), path, where)
            tags = first_of(rec, ("ner_tags", "tags", "labels"), path, where, "ner_tags")
            if not isinstance(tokens, list) or not isinstance(tags, list) or len(tokens) != len(tags):
                raise FormatError(path, where, "tokens and ner_tags must be lists of equal length", "bad_value")
            if any(not isinstance(t, str) for t in tags):
                raise FormatError(path, where, "integer tags without label names (write string tags, or the "
                                               "HF parquet export that stores the ClassLabel names)", "bad_tag")
            norm = [_norm_tag(t, types, bare_type, path, where) for t in tags]
            ex_id = str(rec.get("id", f"{os.path.basename(path)}:{where}"))
            out.append(_example(ex_id, [str(t) for t in tokens], norm, types))
    return out


def load_ner(path: str, types: tuple[str, ...], report: LoadReport | None = None,
             bare_type: str | None = "entity") -> list[Example]:
    """A biomedical NER test set: BIO text (.tsv/.bio/.txt/.conll, gzip ok) or token/tag records."""
    if base_ext(path) in ("parquet", "jsonl", "json"):
        return load_ner_records(path, types, report, bare_type)
    return load_bio(path, types, report, bare_type)


def load_i2b2_xml(path: str, types: tuple[str, ...] = DEFAULT_ENTITY_TYPES) -> list[Example]:
    """One i2b2 2012 XML file: <TEXT> (one sentence per line, space-tokenized) and <TAGS><EVENT
    start end text type/>; offsets are 0-based, end-exclusive character offsets into TEXT."""
    try:
        root = parse_xml(path)
    except ET.ParseError as e:
        raise FormatError(path, e.position[0], f"invalid XML ({e})") from None
    text_el = root.find("TEXT")
    if text_el is None or text_el.text is None:
        raise FormatError(path, None, "missing element <TEXT>")
    text = text_el.text
    tags_el = root.find("TAGS")
    if tags_el is None:
        raise FormatError(path, None, "missing element <TAGS>")
    spans = []
    for ev in tags_el.iter("EVENT"):
        for attr in ("start", "end", "type"):
            if attr not in ev.attrib:
                raise FormatError(path, None, f"EVENT {ev.attrib.get('id', '?')} missing attribute {attr!r}")
        s, e = int(ev.attrib["start"]), int(ev.attrib["end"])
        if not 0 <= s < e <= len(text):
            raise FormatError(path, None, f"EVENT {ev.attrib.get('id', '?')} offsets {s}-{e} outside TEXT")
        if "text" in ev.attrib and " ".join(text[s:e].split()) != " ".join(ev.attrib["text"].split()):
            # neither text is quoted: both are note text
            raise FormatError(path, None, f"EVENT {ev.attrib.get('id', '?')}: TEXT[{s}:{e}] "
                                          f"({describe_value(text[s:e])}) differs from its attribute text "
                                          f"({describe_value(ev.attrib['text'])})")
        etype = ev.attrib["type"].lower()
        if etype in types:
            spans.append((s, e, etype))
    # character -> (tag type, is entity start)
    char_type: dict[int, tuple[str, int]] = {}
    for s, e, etype in sorted(spans):
        for c in range(s, e):
            char_type.setdefault(c, (etype, s))
    out = []
    base = os.path.basename(path)
    offset = 0
    for li, line in enumerate(text.split("\n")):
        tokens, tags = [], []
        prev_span = None
        for m in re.finditer(r"\S+", line):
            c0 = offset + m.start()
            hit = next((char_type[c] for c in range(c0, offset + m.end()) if c in char_type), None)
            tokens.append(m.group())
            if hit is None:
                tags.append("O")
                prev_span = None
            else:
                tags.append(("I-" if prev_span == hit else "B-") + hit[0])
                prev_span = hit
        if tokens:
            out.append(_example(f"{base}:{li}", tokens, tags, types))
        offset += len(line) + 1
    return out


def load_i2b2(path: str, types: tuple[str, ...] = DEFAULT_ENTITY_TYPES, report: LoadReport | None = None,
              ) -> list[Example]:
    """i2b2 2012 from a directory of XML files, one .xml file, or a BIO (.bio/.tsv/.txt/.conll) file."""
    if fs.isdir(path):
        files = fs.glob(fs.join(path, "*.xml"), files_only=True)
        if not files:
            raise FormatError(path, None, "directory holds no *.xml files (i2b2 2012 XML expected)")
        return [ex for f in files for ex in load_i2b2_xml(f, types)]
    if path.endswith(".xml"):
        return load_i2b2_xml(path, types)
    return load_ner(path, types, report, bare_type=None)
