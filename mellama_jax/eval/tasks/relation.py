"""DDI 2013 drug-drug interaction classification: the masked TSV or the original corpus XML."""
from __future__ import annotations

import os
import xml.etree.ElementTree as ET

from mellama_jax import fs
from mellama_jax.data.sources.report import describe_value, label_repr
from mellama_jax.eval.tasks.common import (Example, FormatError, LoadReport, first_of, parse_xml, read_records,
                                          strict_report)
from mellama_jax.eval.tasks.release import is_release_record, release_inputs, release_label

__all__ = ["load_ddi", "DDI_CHOICES"]

DDI_CHOICES = ("DDI-false", "DDI-effect", "DDI-mechanism", "DDI-advise", "DDI-int")


def _example(ex_id: str, sentence: str, label: str) -> Example:
    return Example(id=ex_id, inputs={"sentence": sentence}, reference=label, choices=DDI_CHOICES,
                   target_text=label)


PAIR_MENTION = "@DRUG-DRUG$"  # both drugs of the pair are one mention (BLUE/BLURB DDI TSVs)


def _load_table(path: str, report: LoadReport) -> list[Example]:
    """Masked rows (index, sentence, label): BLUE/BLURB TSV with or without header, HF exports, or
    Me-LLaMA's query/answer/choices/gold set.

    A sentence must hold the masked pair: two @DRUG$ masks, or one @DRUG-DRUG$ mask where both drugs
    of the pair are one mention (the corpus annotates such pairs; the benchmark's own evaluation
    keeps and classifies them like any other pair, and so do we; results.json counts them)."""
    out = []
    for where, row in read_records(path, ("sentence", "label"), layouts=(("index", "sentence", "label"),),
                                   report=report):
        with report.record():
            if is_release_record(row):
                sentence = release_inputs("ddi", row, path, where)["sentence"]
                label = str(release_label(row, path, where)).strip()
            else:
                sentence = str(first_of(row, ("sentence", "text"), path, where))
                label = str(first_of(row, ("label", "labels"), path, where)).strip()
            if label not in DDI_CHOICES:
                raise FormatError(path, where, f"label {label_repr(label)} is not one of {DDI_CHOICES}", "bad_label")
            if PAIR_MENTION in sentence:
                report.count("pair_mention_@DRUG-DRUG$")
            elif sentence.count("@DRUG$") < 1:
                raise FormatError(path, where, "sentence has no @DRUG$ mask (expected the masked drug pair)",
                                  "no_drug_mask")
            ex_id = str(row.get("index") or row.get("id") or f"{os.path.basename(path)}:{where}")
            out.append(_example(ex_id, sentence, label))
    return out


def _span(offset: str, path: str, where: str) -> tuple[int, int]:
    """DDI charOffset "a-b" or discontinuous "a-b;c-d" (inclusive ends) -> [first, last+1)."""
    try:
        parts = [tuple(int(x) for x in p.split("-")) for p in offset.split(";")]
        return parts[0][0], parts[-1][1] + 1
    except (ValueError, IndexError):
        raise FormatError(path, None, f"{where}: charOffset ({describe_value(offset)}) is not 'start-end'") from None


def _load_xml(path: str) -> list[Example]:
    try:
        root = parse_xml(path)
    except ET.ParseError as e:
        raise FormatError(path, e.position[0], f"invalid XML ({e})") from None
    out = []
    for sent in root.iter("sentence"):
        sid = sent.attrib.get("id", "?")
        if "text" not in sent.attrib:
            raise FormatError(path, None, f"sentence {sid} missing attribute 'text'")
        text = sent.attrib["text"]
        ents = {}
        for ent in sent.iter("entity"):
            for attr in ("id", "charOffset"):
                if attr not in ent.attrib:
                    raise FormatError(path, None, f"sentence {sid}: entity missing attribute {attr!r}")
            ents[ent.attrib["id"]] = _span(ent.attrib["charOffset"], path, f"entity {ent.attrib['id']}")
        for pair in sent.iter("pair"):
            pid = pair.attrib.get("id", "?")
            for attr in ("e1", "e2", "ddi"):
                if attr not in pair.attrib:
                    raise FormatError(path, None, f"pair {pid} missing attribute {attr!r}")
            if pair.attrib["e1"] not in ents or pair.attrib["e2"] not in ents:
                raise FormatError(path, None, f"pair {pid} refers to an unknown entity")
            if pair.attrib["ddi"].lower() == "true":
                label = f"DDI-{pair.attrib.get('type', 'int').lower()}"
                if label not in DDI_CHOICES:
                    raise FormatError(path, None, f"pair {pid} type {label_repr(pair.attrib.get('type'))} is none of {DDI_CHOICES}")
            else:
                label = "DDI-false"
            masked = text
            # replace the later span first so the earlier offsets stay valid
            for s, e in sorted([ents[pair.attrib["e1"]], ents[pair.attrib["e2"]]], reverse=True):
                masked = masked[:s] + "@DRUG$" + masked[e:]
            out.append(_example(pid, masked, label))
    return out


def load_ddi(path: str, report: LoadReport | None = None) -> list[Example]:
    """DDI 2013 from the masked TSV (index, sentence, label; headed or not), HF/Me-LLaMA exports, one
    corpus XML file, or a directory of them."""
    report = strict_report(report)
    if fs.isdir(path):
        files = fs.glob(fs.join(path, "**", "*.xml"), files_only=True)
        if not files:
            raise FormatError(path, None, "directory holds no *.xml files (DDI 2013 XML expected)")
        return [ex for f in files for ex in _load_xml(f)]
    if path.endswith(".xml"):
        return _load_xml(path)
    return _load_table(path, report)
