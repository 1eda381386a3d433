"""Control characters cannot carry PHI through de-identification: a NUL, a C1 control or a
zero-width/format character inside a phone number, an MRN or a name used to split it so that no
rule matched, and the value went through untouched. Every PHI type the de-identifier knows is tried
with every kind of invisible character at several positions; prepare() and the pipeline readers
are run on files holding such notes, and their outputs and messages are scanned."""
from __future__ import annotations

import csv
import gzip
import io
import json
import logging
import os

import pytest

from mellama_jax.data.clinical import phi, scrub_text
from mellama_jax.data.clinical.quality import QualityConfig
from mellama_jax.data.prepare_clinical import PrepareConfig, prepare
from mellama_jax.data.sources.readers import iter_documents, read_file
from mellama_jax.data.sources.report import BadInputReport
from mellama_jax.data.text_hygiene import has_control_chars, strip_control_chars, strip_control_chars_in

# (type, note, the PHI value in it); the clean note is fully scrubbed (checked below).
EXAMPLES = [
    ("NAME", "Seen by Dr. Johnathan Qorvath today.", "Johnathan Qorvath"),
    ("NAME", "Patient: Jane Roe, admitted.", "Jane Roe"),
    ("PHONE", "Call 617-555-1234 today.", "617-555-1234"),
    ("ID", "MRN 12345678 on file.", "12345678"),
    ("ID", "SSN 123-45-6789 noted.", "123-45-6789"),
    ("EMAIL", "Email jane.doe@example.org now.", "jane.doe@example.org"),
    ("URL", "Portal https://portal.example.org/chart here.", "portal.example.org/chart"),
    ("IP", "Logged from 192.168.10.42 today.", "192.168.10.42"),
    ("DATE", "DOB 03/14/1931 noted.", "03/14/1931"),
    ("DATE", "Admitted March 3rd, 2021 via ED.", "March 3rd, 2021"),
    ("ZIP", "Salem, MA 01970 resident.", "01970"),
    ("ADDRESS", "Lives at 12 Maple Street with wife.", "12 Maple Street"),
    ("LOCATION", "Moved from Springfield, Illinois last year.", "Springfield"),
    ("AGE", "A 92 year old woman.", "92"),
    ("HOSPITAL", "Transferred from Mercy General Hospital yesterday.", "Mercy General Hospital"),
]
# NUL, other C0, DEL, C1 (NEL included), and format characters: zero-width space/non-joiner/joiner,
# word joiner, BOM, soft hyphen, bidi marks and overrides.
INVISIBLE = ["\x00", "\x01", "\x08", "\x0b", "\x0c", "\x1b", "\x1f", "\x7f", "\x85", "\x9f",
             "\u200b", "\u200c", "\u200d", "\u2060", "\ufeff", "\u00ad", "\u200e", "\u202e", "\u2066"]


def _variants(note: str, value: str):
    start = note.index(value)
    for ch in INVISIBLE:
        for k in sorted({1, len(value) // 2, len(value) - 1}):
            yield ch, note[:start + k] + ch + note[start + k:]


def test_examples_cover_every_phi_type_the_scrubber_knows():
    known = {r.type for r in phi._RULES} | {"NAME"}
    assert known <= {t for t, _, _ in EXAMPLES}, known - {t for t, _, _ in EXAMPLES}
    for _, note, value in EXAMPLES:
        assert value not in scrub_text(note)[0], note


@pytest.mark.parametrize("kind,note,value", EXAMPLES, ids=[f"{t}-{i}" for i, (t, _, _) in enumerate(EXAMPLES)])
def test_every_invisible_character_variant_is_scrubbed(kind, note, value):
    clean_out, clean_counts = scrub_text(note)
    for ch, variant in _variants(note, value):
        out, counts = scrub_text(variant)
        assert (out, counts) == (clean_out, clean_counts), (kind, repr(ch), variant)
        assert not has_control_chars(out)


def test_normaliser_keeps_tabs_newlines_and_ordinary_text():
    text = "Line one\tcol\r\nLine two: café, naïve, 45 mg — ok\n"
    assert strip_control_chars(text) == text
    assert strip_control_chars("Jo\x00hn\u200b \ufeffS\u00admith\x85") == "John Smith"
    rec = {"te\x00xt": ["a\u200bb", ("c\x01", 3)], "n": 1.5, "ok": None}
    assert strip_control_chars_in(rec) == {"text": ["ab", ("c", 3)], "n": 1.5, "ok": None}


def _issue_notes() -> list[str]:
    return ["Pt called from 617-555-\x001234 about refill.", "MRN 12\x00345678 seen in clinic.",
            "Spoke with Jo\x00hnathan Qorvath regarding plan."] + [v for _, n, val in EXAMPLES
                                                                  for _, v in list(_variants(n, val))[::25]]


SECRETS = ["617-555-1234", "5551234", "12345678", "Johnathan", "hnathan", "Qorvath"] + [v for _, _, v in EXAMPLES
                                                                                       if len(v) > 3]


def _leaks(text: str) -> list[str]:
    flat = strip_control_chars(text)
    return [s for s in SECRETS if s in flat] + (["\x00"] if "\x00" in text else [])


def _csv_bytes(rows) -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(("ROW_ID", "SUBJECT_ID", "CATEGORY", "TEXT"))
    w.writerows(rows)
    return buf.getvalue().encode()


def test_prepare_clinical_scrubs_control_character_phi_and_no_message_quotes_it(tmp_path, capfd, caplog):
    caplog.set_level(logging.DEBUG)
    notes = _issue_notes()
    rows = [(i, 100 + i, "Nursing", n + " Stable, follow up in two weeks, continue aspirin daily.")
            for i, n in enumerate(notes)]
    (tmp_path / "notes.csv").write_bytes(_csv_bytes(rows) + b'999,1,Nursing,"bad row ' +
                                         "617-555-\x001234 Jo\x00hnathan".encode() + b'",extra\n')
    (tmp_path / "notes.jsonl").write_text("".join(json.dumps({"id": f"j{i}", "text": r[3]}) + "\n"
                                                  for i, r in enumerate(rows)))
    messages = []
    for name in ("notes.csv", "notes.jsonl"):
        out = tmp_path / f"out-{name}"
        report = prepare([str(tmp_path / name)], str(out), config=PrepareConfig(max_bad_fraction=1.0, quality=QualityConfig(enabled=False)),
                         log=io.StringIO())
        messages.append(json.dumps(report))
        texts = []
        for shard in sorted(out.glob("notes-*.jsonl.gz")):
            with gzip.open(shard, "rt", encoding="utf-8") as f:
                texts += [json.loads(line)["text"] for line in f]
        assert texts, name
        for t in texts:
            assert not _leaks(t) and not has_control_chars(t), (name, t)
        messages += [(out / m).read_text() for m in ("report.json", "PREPARED.json")]
    captured = capfd.readouterr()
    messages += [captured.out, captured.err] + [r.getMessage() for r in caplog.records]
    assert not _leaks("\n".join(messages)), _leaks("\n".join(messages))


def test_pipeline_readers_strip_control_characters_before_scrubbing(tmp_path):
    notes = _issue_notes()
    rows = [(i, 100 + i, "Nursing", n) for i, n in enumerate(notes)]
    csv_path = tmp_path / "NOTEEVENTS.csv"
    csv_path.write_bytes(_csv_bytes(rows))
    docs = list(iter_documents("clinical", {"paths": [str(csv_path)], "format": "mimic_csv", "scrub_inline": True},
                               BadInputReport("clinical")))
    assert len(docs) == len(notes)
    for d in docs:
        assert not _leaks(d["text"]) and not has_control_chars(d["text"]), d["text"]
    # Pretraining formats: the text comes out without the invisible characters (nothing scrubs it).
    jl = tmp_path / "docs.jsonl"
    jl.write_text(json.dumps({"id": "a", "text": "Jo\x00hn\u200bny \ufeffwent\x85 home"}) + "\n"
                  + json.dumps({"id": "b", "text": "\x00\u200b\x01"}) + "\n")
    report = BadInputReport("general")
    assert [d["text"] for d in read_file("general", {"format": "jsonl"}, str(jl), report)] == ["Johnny went home"]
    assert report.to_dict()["bad"] == {"empty_document": 1}  # only invisible characters: empty
    txt = tmp_path / "a.txt"
    txt.write_text("first\x00 line\nsecond\u200d line\n")
    assert [d["text"] for d in read_file("general", {"format": "text", "text_split": "line"}, str(txt),
                                         BadInputReport("general"))] == ["first line", "second line"]
    ins = tmp_path / "ins.jsonl"
    ins.write_text(json.dumps({"instruction": "Sum\x00marise", "input": "a\u200bb", "output": "o\x7fk"}) + "\n")
    d, = read_file("qa", {"format": "instruction_jsonl"}, str(ins), BadInputReport("qa"))
    assert (d["instruction"], d["input"], d["output"]) == ("Summarise", "ab", "ok")
    prep = tmp_path / "prep.jsonl"
    prep.write_text(json.dumps({"id": "p", "text": "old\x00 corpus"}) + "\n")
    d, = read_file("clinical", {"format": "prepared_clinical"}, str(prep), BadInputReport("clinical"))
    assert d["text"] == "old corpus"
    xml = tmp_path / "pubmed.xml"
    xml.write_text("<PubmedArticleSet><PubmedArticle><MedlineCitation><PMID>1</PMID><Article>"
                   "<ArticleTitle>Ti\u200btle</ArticleTitle><Abstract><AbstractText>Ab\u00adstract</AbstractText>"
                   "</Abstract></Article></MedlineCitation></PubmedArticle></PubmedArticleSet>")
    d, = read_file("biomedical", {"format": "pubmed_xml"}, str(xml), BadInputReport("biomedical"))
    assert d["text"] == "Title\nAbstract"


def test_eval_readers_strip_control_characters_after_parsing(tmp_path):
    """Benchmark records lose their control characters once parsed (a JSON "\\u0000" escape is a NUL
    only after json.loads), in every reader shape: JSON lines, JSON, parquet, TSV/CSV."""
    import pandas as pd

    from mellama_jax.eval.tasks import common, get_task
    from mellama_jax.eval.tasks.qa import load_medqa

    dirty = {"question": "Call 617-555-\x001234 re: Jo\u200bhnathan?", "note": "MRN 12\x00345678\u00ad"}
    clean = {"question": "Call 617-555-1234 re: Johnathan?", "note": "MRN 12345678"}
    (tmp_path / "r.jsonl").write_text(json.dumps(dirty) + "\n" + json.dumps(dirty, ensure_ascii=False) + "\n")
    assert "\\u0000" in (tmp_path / "r.jsonl").read_text()
    assert [r for _, r in common.read_jsonl(str(tmp_path / "r.jsonl"))] == [clean, clean]
    with open(tmp_path / "r.json", "w", encoding="utf-8") as f:
        json.dump([dirty], f)
    assert common.read_json(str(tmp_path / "r.json")) == [clean]
    pd.DataFrame([dirty]).to_parquet(tmp_path / "r.parquet")
    assert [r for _, r in common.read_parquet(str(tmp_path / "r.parquet"))] == [clean]
    pd.DataFrame([dirty]).to_csv(tmp_path / "r.tsv", sep="\t", index=False)
    assert [r for _, r in common.read_delimited(str(tmp_path / "r.tsv"), ("question", "note"))] == [clean]
    # through a task's own loader: the prompt field is what the training readers would produce
    opts = {"A": "Jo\x00hn", "B": "b"}
    (tmp_path / "medqa.jsonl").write_text(json.dumps({"question": dirty["question"], "options": opts,
                                                      "answer_idx": "A"}) + "\n")
    (ex,) = load_medqa(str(tmp_path / "medqa.jsonl"))
    assert ex.inputs["question"] == clean["question"] and ex.reference == "John" and "\x00" not in ex.inputs["options"]
    assert get_task("medqa").load is load_medqa


def test_no_eval_loader_message_quotes_record_text(tmp_path, caplog):
    """A note where a field name, label or tag belongs (swapped columns) is described, never quoted,
    by the benchmark loaders: every PHI type the de-identifier knows, with control characters inside."""
    from mellama_jax.eval.tasks.classification import load_hoc
    from mellama_jax.eval.tasks.common import FormatError, LoadReport
    from mellama_jax.eval.tasks.ner import load_bio
    from mellama_jax.eval.tasks.nli import load_mednli
    from mellama_jax.eval.tasks.qa import load_medqa
    from mellama_jax.eval.tasks.relation import load_ddi

    caplog.set_level(logging.DEBUG)
    notes = ["Pt Jane Roe MRN 4455667 DOB 03/14/1931 called from 617-555-1234"] + _issue_notes()
    notes += [v for _, n, val in EXAMPLES for _, v in list(_variants(n, val))[::4]]
    cases = {
        "medqa.jsonl": (load_medqa, lambda n: [{n: "x", "answer_idx": "A"},
                                               {"question": "q", "options": {"A": "a", "B": "b"}, "answer_idx": n}]),
        "mednli.jsonl": (load_mednli, lambda n: [{"sentence1": "p", "sentence2": "h", "gold_label": n},
                                                 {"sentence1": "p", n: "h", "gold_label": "neutral"}]),
        "hoc.jsonl": (load_hoc, lambda n: [{"text": "t", "labels": [n]}, {"text": "t", n: []}]),
        "ddi.jsonl": (load_ddi, lambda n: [{"sentence": "@DRUG$ and @DRUG$", "label": n}]),
    }
    messages = []
    for name, (load, records) in cases.items():
        path = tmp_path / name
        path.write_text("".join(json.dumps(r) + "\n" for n in notes for r in records(n)))
        report = LoadReport(source=name, strict=False, max_examples=10**6)
        load(str(path), report=report)
        assert report.num_bad == len(notes) * len(records("x")), (name, report.bad)
        messages += report.examples + [json.dumps(report.to_dict()), report.summary()]
        try:
            load(str(path))  # strict: the first error raised
        except FormatError as err:
            messages.append(str(err))
    bio = tmp_path / "x.bio"
    bio.write_text("".join(f"The\tO\npatient\t{n}\n\n" for n in notes))
    report = LoadReport(source="bio", strict=False, max_examples=10**6)
    load_bio(str(bio), report=report)
    assert report.num_bad == len(notes)
    messages += report.examples
    messages += [r.getMessage() for r in caplog.records]
    everything = "\n".join(messages)
    assert "bad_label" in everything and "missing_field" in everything and "bad_tag" in everything
    assert not _leaks(everything) and not has_control_chars(everything), _leaks(everything)[:5]
    assert "other field(s)" in everything  # the unexpected keys are counted
