"""Format readers on fixtures in the real formats, and the bad-input accounting (file, line, reason)."""
import csv
import gzip
import io
import json
import os

import pytest

from mellama_jax.data.config import demo_data_config, source_config
from mellama_jax.data.sources.readers import iter_documents, read_file
from mellama_jax.data.sources.report import BadInputReport, DataError
from mellama_jax.data.sources.splits import is_eval

PUBMED = """<?xml version="1.0" encoding="utf-8"?>
<!DOCTYPE PubmedArticleSet PUBLIC "-//NLM//DTD PubMedArticle, 1st January 2024//EN" "https://dtd.nlm.nih.gov/ncbi/pubmed/out/pubmed_240101.dtd">
<PubmedArticleSet>
<PubmedArticle>
  <MedlineCitation Status="MEDLINE" Owner="NLM">
    <PMID Version="1">11111111</PMID>
    <Article PubModel="Print">
      <ArticleTitle>Metformin and lactic acidosis &amp; renal failure.</ArticleTitle>
      <Abstract>
        <AbstractText Label="BACKGROUND" NlmCategory="BACKGROUND">Metformin is first-line.</AbstractText>
        <AbstractText Label="RESULTS" NlmCategory="RESULTS">Risk was low in <i>vivo</i> (P &lt; 0.05).</AbstractText>
      </Abstract>
    </Article>
  </MedlineCitation>
  <PubmedData><ArticleIdList><ArticleId IdType="pubmed">11111111</ArticleId></ArticleIdList></PubmedData>
</PubmedArticle>
<PubmedArticle>
  <MedlineCitation><PMID Version="1">22222222</PMID>
    <Article><ArticleTitle>No abstract here.</ArticleTitle></Article></MedlineCitation>
</PubmedArticle>
<PubmedArticle>
  <MedlineCitation><PMID Version="1">33333333</PMID><Article><ArticleTitle></ArticleTitle></Article></MedlineCitation>
</PubmedArticle>
</PubmedArticleSet>
"""


def _read(path, fmt, **kw):
    rep = BadInputReport("src")
    docs = list(read_file("src", {"format": fmt, **kw}, str(path), rep))
    return docs, rep


def test_pubmed_xml_plain_and_gzipped(tmp_path):
    (tmp_path / "a.xml").write_text(PUBMED, encoding="utf-8")
    with gzip.open(tmp_path / "b.xml.gz", "wt", encoding="utf-8") as f:
        f.write(PUBMED)
    for name in ("a.xml", "b.xml.gz"):
        docs, rep = _read(tmp_path / name, "pubmed_xml")
        assert [d["id"] for d in docs] == ["pmid:11111111", "pmid:22222222"]
        assert docs[0]["text"] == ("Metformin and lactic acidosis & renal failure.\nBACKGROUND: Metformin is "
                                   "first-line.\nRESULTS: Risk was low in vivo (P < 0.05).")
        assert docs[1]["text"] == "No abstract here."
        assert rep.good == 2 and rep.bad == {"empty_document": 1}
        assert "PMID 33333333" in rep.examples[0] and name in rep.examples[0]


def test_truncated_gzip_and_malformed_xml_are_reported(tmp_path):
    data = gzip.compress(PUBMED.encode() * 1)
    (tmp_path / "cut.xml.gz").write_bytes(data[: len(data) - 40])
    docs, rep = _read(tmp_path / "cut.xml.gz", "pubmed_xml")
    assert rep.bad["truncated_gzip"] == 1 and "cut.xml.gz" in rep.examples[-1]
    (tmp_path / "bad.xml").write_text(PUBMED.replace("</ArticleTitle>", "</Title>", 1))
    docs, rep = _read(tmp_path / "bad.xml", "pubmed_xml")
    assert docs == [] and rep.bad == {"malformed_xml": 1}
    assert "bad.xml:8" in rep.examples[0]  # the line of the mismatched tag


def _noteevents(path, rows, gz=False):
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["ROW_ID", "SUBJECT_ID", "HADM_ID", "CHARTDATE", "CHARTTIME", "STORETIME", "CATEGORY",
                "DESCRIPTION", "CGID", "ISERROR", "TEXT"])
    for r in rows:
        w.writerow(r)
    data = buf.getvalue().encode()
    path.write_bytes(gzip.compress(data) if gz else data)


NOTE1 = 'Admission Date:  [**2150-3-2**]\n\nHPI: 67 y/o, "SOB", BP 140/90,\nstarted lasix.\n'
NOTE2 = "Chest x-ray: no acute process."


@pytest.mark.parametrize("gz", [False, True])
def test_noteevents_csv_quoted_multiline(tmp_path, gz):
    path = tmp_path / ("NOTEEVENTS.csv.gz" if gz else "NOTEEVENTS.csv")
    _noteevents(path, [
        ["1", "10", "100", "2150-03-02", "", "", "Discharge summary", "Report", "", "", NOTE1],
        ["2", "11", "101", "2150-03-03", "", "", "Radiology", "CHEST", "", "1", "erroneous note"],
        ["3", "12", "102", "2150-03-04", "", "", "Radiology", "CHEST", "", "", NOTE2],
        ["4", "12", "102", "2150-03-04", "", "", "Nursing", "", "", "", "   "],
    ], gz=gz)
    docs, rep = _read(path, "mimic_csv")
    assert [(d["id"], d["note_type"], d["subject_id"], d["text"]) for d in docs] == [
        ("1", "Discharge summary", "10", NOTE1), ("3", "Radiology", "12", NOTE2)]
    assert rep.bad == {"iserror_note": 1, "empty_document": 1}
    # Row 2 starts on physical line 7 (header, then 5 lines of NOTE1 + its closing line).
    assert any(f"{path.name}:7: iserror_note" in e for e in rep.examples)
    assert not any("lasix" in e for e in rep.examples)  # note text never reaches the messages


def test_mimic4_note_csv_and_bad_header(tmp_path):
    p = tmp_path / "discharge.csv"
    p.write_text('note_id,subject_id,hadm_id,note_type,note_seq,charttime,storetime,text\n'
                 '10-DS-1,10,20,DS,1,2180-01-01,,"Name:  ___\nDischarge, stable."\n')
    docs, rep = _read(p, "mimic_csv")
    assert docs == [{"id": "10-DS-1", "text": "Name:  ___\nDischarge, stable.", "note_type": "DS",
                     "subject_id": "10"}]
    (tmp_path / "other.csv").write_text("a,b\n1,2\n")
    with pytest.raises(DataError, match=r"other.csv:1: first row .* MIMIC"):
        _read(tmp_path / "other.csv", "mimic_csv")


def test_jsonl_bad_lines_are_counted_with_line_numbers(tmp_path):
    lines = [json.dumps({"text": "good one", "id": "a"}).encode(),
             b'{"text": "broken',
             json.dumps({"body": "no text field"}).encode(),
             json.dumps({"text": "   "}).encode(),
             b'{"text": "bad \xff\xfe utf8"}',
             b"",
             json.dumps(["not", "an", "object"]).encode(),
             json.dumps({"text": "caf\u00e9 \u6771\u4eac"}, ensure_ascii=False).encode()]
    (tmp_path / "x.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    docs, rep = _read(tmp_path / "x.jsonl", "jsonl")
    assert docs == [{"id": "a", "text": "good one"}, {"id": "x.jsonl:8", "text": "café 東京"}]
    assert rep.bad == {"malformed_json": 2, "missing_field": 1, "empty_document": 1, "invalid_utf8": 1}
    joined = "\n".join(rep.examples)
    for where in ("x.jsonl:2: malformed_json", "x.jsonl:3: missing_field", "x.jsonl:4: empty_document",
                  "x.jsonl:5: invalid_utf8", "x.jsonl:7: malformed_json"):
        assert where in joined
    # A custom text field.
    (tmp_path / "y.jsonl").write_text(json.dumps({"content": "hi"}) + "\n")
    docs, _ = _read(tmp_path / "y.jsonl", "jsonl", text_field="content")
    assert docs[0]["text"] == "hi"


def test_text_and_instruction_formats(tmp_path):
    (tmp_path / "t.txt").write_text("Para one\nstill one\n\n\nPara two\n")
    docs, _ = _read(tmp_path / "t.txt", "text")
    assert [d["text"] for d in docs] == ["Para one\nstill one\n\n\nPara two"]
    docs, _ = _read(tmp_path / "t.txt", "text", text_split="paragraph")
    assert [d["text"] for d in docs] == ["Para one\nstill one", "Para two"]
    (tmp_path / "i.jsonl").write_text(
        json.dumps({"instruction": "Q?", "input": "ctx", "output": "A"}) + "\n"
        + json.dumps({"instruction": "Q2", "output": ""}) + "\n" + json.dumps({"input": "x"}) + "\n")
    docs, rep = _read(tmp_path / "i.jsonl", "instruction_jsonl")
    assert [(d["instruction"], d["input"], d["output"]) for d in docs] == [("Q?", "ctx", "A")]
    assert rep.bad == {"empty_document": 1, "missing_field": 1}


def test_prepared_clinical_dir(tmp_path):
    d = tmp_path / "prep"
    d.mkdir()
    notes = [{"id": "n1", "text": "Pt stable.", "note_type": "DS", "subject_id": "1"},
             {"id": "n2", "text": "", "note_type": "DS", "subject_id": "1"}]
    with gzip.open(d / "notes-00000-of-00001.jsonl.gz", "wt") as f:
        f.write("\n".join(json.dumps(n) for n in notes) + "\n")
    src = source_config([str(d)], "prepared_clinical")
    with pytest.raises(DataError, match="PREPARED.json"):
        list(iter_documents("clinical", src, BadInputReport("clinical")))
    from mellama_jax.data.clinical.io import FORMAT_VERSION, TOOL_NAME

    marker = {"tool": TOOL_NAME, "format_version": FORMAT_VERSION, "shards": ["notes-00000-of-00001.jsonl.gz"]}
    (d / "PREPARED.json").write_text(json.dumps({**marker, "tool": "something-else"}))
    with pytest.raises(DataError, match="expected tool="):
        list(iter_documents("clinical", src, BadInputReport("clinical")))
    (d / "PREPARED.json").write_text(json.dumps(marker))
    # A leftover shard from an interrupted run that the marker does not list is never read.
    with gzip.open(d / "notes-00001-of-00002.jsonl.gz", "wt") as f:
        f.write(json.dumps({"id": "stale", "text": "stale note", "note_type": "DS", "subject_id": "9"}) + "\n")
    rep = BadInputReport("clinical")
    docs = list(iter_documents("clinical", src, rep))
    assert docs == [notes[0]] and rep.bad == {"empty_document": 1}
    (d / "PREPARED.json").write_text(json.dumps({**marker, "shards": marker["shards"] + ["notes-x.jsonl.gz"]}))
    with pytest.raises(DataError, match=r"shard files missing: \['notes-x.jsonl.gz'\]"):
        list(iter_documents("clinical", src, BadInputReport("clinical")))


def test_mimic_csv_scrub_inline_replaces_phi(tmp_path):
    """scrub_inline runs the clinical scrubber on each raw note before it reaches the tokenizer."""
    csv_path = tmp_path / "NOTEEVENTS.csv"
    note = "Seen by Dr. Alan Whitmore on 03/14/2151. Call 617-555-0199 with questions. Metoprolol 25 mg."
    csv_path.write_text('ROW_ID,SUBJECT_ID,HADM_ID,CATEGORY,TEXT\n1,42,7,Discharge summary,"' + note + '"\n')
    src = source_config([str(csv_path)], "mimic_csv", scrub_inline=True, require_prepared=True)
    docs = list(iter_documents("clinical", src, BadInputReport("clinical")))
    text = docs[0]["text"]
    assert "617-555-0199" not in text and "03/14/2151" not in text and "Whitmore" not in text
    assert "[PHONE]" in text and "[DATE]" in text and "Metoprolol 25 mg" in text


def test_config_level_errors(tmp_path):
    with pytest.raises(DataError, match=r"data.sources.bio.paths: glob '.*nothing-\*.xml' matches no file"):
        list(iter_documents("bio", source_config([str(tmp_path / "nothing-*.xml")], "pubmed_xml"),
                            BadInputReport("bio")))
    (tmp_path / "n.csv").write_text("ROW_ID,SUBJECT_ID,CATEGORY,TEXT\n1,2,x,y\n")
    with pytest.raises(DataError, match="require_prepared"):
        list(iter_documents("clinical", source_config([str(tmp_path / "n.csv")], "mimic_csv",
                                                      require_prepared=True), BadInputReport("clinical")))
    with pytest.raises(DataError, match="format='weird'"):
        list(iter_documents("g", source_config([str(tmp_path / "n.csv")], "weird"), BadInputReport("g")))


def test_max_bad_fraction_check():
    rep = BadInputReport("general")
    rep.ok(97)
    for i in range(3):
        rep.skip("malformed_json", "f.jsonl", i + 1)
    rep.check(0.05)
    with pytest.raises(DataError, match=r"source 'general': 3 of 100 items were bad .*max_bad_fraction"):
        rep.check(0.01)
    with pytest.raises(DataError, match="no usable documents"):
        BadInputReport("empty").check(0.5)


def test_bundled_samples_read_cleanly_and_eval_split_is_deterministic():
    cfg = demo_data_config()
    for name, src in cfg.sources.items():
        rep = BadInputReport(name)
        docs = list(iter_documents(name, src, rep))
        assert len(docs) >= 40 and rep.num_bad == 0, (name, rep.summary())
        ids = [d["id"] for d in docs]
        assert len(set(ids)) == len(ids)
        held = [i for i in ids if is_eval(i, 0.05, name)]
        assert held == [i for i in ids if is_eval(i, 0.05, name)] and 0 < len(held) < len(ids) // 4
    total = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(os.path.dirname(cfg.tokenizer_path))
                for f in fs if not f.endswith((".py", ".pyc")))
    assert total < 1_000_000


def test_reads_real_prepare_clinical_output(tmp_path):
    """prepare_clinical run on the bundled NOTEEVENTS sample, read back by format prepared_clinical."""
    prep = pytest.importorskip("mellama_jax.cli.prepare_clinical")
    cfg = demo_data_config()
    out = tmp_path / "prepared"
    prep.main(["--in", cfg.sources.clinical.paths[0], "--out", str(out)])
    rep = BadInputReport("clinical")
    docs = list(iter_documents("clinical", source_config([str(out)], "prepared_clinical"), rep))
    assert docs and rep.num_bad == 0 and set(docs[0]) == {"id", "text", "note_type", "subject_id"}
    assert len(docs) <= 45 and all(d["text"].strip() for d in docs)
