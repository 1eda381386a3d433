"""Every benchmark loader on a fixture in its real format, and on malformed input (the error names
the file, the line and the missing field)."""
from __future__ import annotations

import json
import re

import pytest

import eval_fixtures as F
from mellama_jax.eval import prompts
from mellama_jax.eval.tasks import TASKS, FormatError, get_task, resolve_path
from mellama_jax.eval.tasks.classification import HOC_CHOICES, load_hoc, load_mtsamples
from mellama_jax.eval.tasks.diagnosis import load_cases
from mellama_jax.eval.tasks.ner import load_bio, load_i2b2, markup
from mellama_jax.eval.tasks.nli import load_bionli, load_mednli
from mellama_jax.eval.tasks.qa import load_emrqa, load_medmcqa, load_medqa, load_pubmedqa
from mellama_jax.eval.tasks.relation import load_ddi
from mellama_jax.eval.tasks.summarization import load_mimic_cxr, load_pubmed_sum


def _raises(fn, path, line, field_or_text):
    with pytest.raises(FormatError) as e:
        fn(str(path))
    msg = str(e.value)
    assert str(path) in msg
    if line is not None:
        assert f"{path}:{line}:" in msg, msg
    assert field_or_text in msg, msg


def test_pubmedqa_tsv_and_ori_pqal(tmp_path):
    F.write_pubmedqa_tsv(tmp_path / "p.tsv")
    ex = load_pubmedqa(str(tmp_path / "p.tsv"))
    assert [e.reference for e in ex] == ["yes", "no", "maybe"]
    assert ex[0].id == "1000" and ex[0].inputs["context"] == "Context one of 0. Results: it's fine."
    F.write_pubmedqa_json(tmp_path / "ori_pqal.json")
    ex = load_pubmedqa(str(tmp_path / "ori_pqal.json"))
    assert [e.id for e in ex] == ["2000", "2001", "2002"] and ex[1].reference == "no"
    assert ex[0].choices == ("yes", "no", "maybe")


def test_pubmedqa_malformed(tmp_path):
    F.write_pubmedqa_tsv(tmp_path / "p.tsv")
    lines = (tmp_path / "p.tsv").read_text().splitlines()
    cells = lines[2].split("\t")
    cells[1] = "not a list ["
    (tmp_path / "bad.tsv").write_text("\n".join([lines[0], lines[1], "\t".join(cells)]) + "\n")
    _raises(load_pubmedqa, tmp_path / "bad.tsv", 3, "CONTEXTS")
    (tmp_path / "short.tsv").write_text(lines[0] + "\n" + "\t".join(lines[1].split("\t")[:4]) + "\n")
    _raises(load_pubmedqa, tmp_path / "short.tsv", 2, "tab-separated fields")
    (tmp_path / "nohdr.tsv").write_text("QUESTION\tCONTEXTS\n")
    _raises(load_pubmedqa, tmp_path / "nohdr.tsv", 1, "final_decision")
    data = {"1": {"QUESTION": "q", "CONTEXTS": ["c"]}}
    (tmp_path / "o.json").write_text(json.dumps(data))
    _raises(load_pubmedqa, tmp_path / "o.json", None, "'final_decision'")


@pytest.mark.parametrize("n_options", [4, 5])
def test_medqa(tmp_path, n_options):
    F.write_medqa(tmp_path / "m.jsonl", n=3, options=n_options)
    ex = load_medqa(str(tmp_path / "m.jsonl"))
    assert len(ex[0].choices) == n_options
    assert ex[1].reference == "option b text 1" and ex[1].choices[1] == ex[1].reference
    assert "B. option b text 1" in ex[1].inputs["options"]


def test_medqa_malformed(tmp_path):
    F.write_medqa(tmp_path / "m.jsonl", n=2)
    lines = (tmp_path / "m.jsonl").read_text().splitlines()
    rec = json.loads(lines[1])
    del rec["options"]
    (tmp_path / "bad.jsonl").write_text(lines[0] + "\n" + json.dumps(rec) + "\n")
    _raises(load_medqa, tmp_path / "bad.jsonl", 2, "'options'")
    (tmp_path / "trunc.jsonl").write_text(lines[0] + "\n" + lines[1][:40] + "\n")
    _raises(load_medqa, tmp_path / "trunc.jsonl", 2, "invalid JSON")


def test_medmcqa_cop_bases(tmp_path):
    F.write_medmcqa(tmp_path / "one.jsonl", n=4, one_based=True)
    F.write_medmcqa(tmp_path / "zero.jsonl", n=4, one_based=False)
    a, b = load_medmcqa(str(tmp_path / "one.jsonl")), load_medmcqa(str(tmp_path / "zero.jsonl"))
    assert [e.reference for e in a] == [e.reference for e in b] == ["ulnar", "radial", "median", "axillary"]
    F.write_medmcqa(tmp_path / "amb.jsonl", n=3, one_based=True)  # cop 1..3: ambiguous
    _raises(load_medmcqa, tmp_path / "amb.jsonl", None, "medmcqa_cop_base")
    assert load_medmcqa(str(tmp_path / "amb.jsonl"), cop_base="0")[0].reference == "radial"
    rec = {"question": "q", "opa": "a", "opb": "b", "opc": "c", "cop": 1}
    (tmp_path / "bad.jsonl").write_text(json.dumps(rec) + "\n")
    _raises(load_medmcqa, tmp_path / "bad.jsonl", 1, "'opd'")


def test_emrqa_squad_and_flat(tmp_path):
    F.write_emrqa(tmp_path / "e.json")
    ex = load_emrqa(str(tmp_path / "e.json"))
    assert ex[2].reference == ["aspirin 2 mg"] and ex[2].id == "q2"
    ctx = ex[0].inputs["context"]
    assert ctx[18:18 + len("aspirin 0 mg")] == "aspirin 0 mg"
    (tmp_path / "e.jsonl").write_text(json.dumps({"context": "c x", "question": "q", "answers": [{"text": "x", "answer_start": 2}]}) + "\n"
                                      + json.dumps({"context": "c", "question": "q"}) + "\n")
    _raises(load_emrqa, tmp_path / "e.jsonl", 2, "'answers'")
    (tmp_path / "bad.json").write_text(json.dumps({"data": [{"paragraphs": [{"context": "c", "qas": [{"question": "q", "answers": [{"answer_start": 0}]}]}]}]}))
    _raises(load_emrqa, tmp_path / "bad.json", None, "'text'")


def test_i2b2_xml_offsets_to_bio(tmp_path):
    (tmp_path / "note.xml").write_text(F.I2B2_XML)
    ex = load_i2b2(str(tmp_path / "note.xml"))
    assert [e.meta["tokens"] for e in ex][1] == "The patient had chest pain and fever .".split()
    assert ex[0].reference == ["O", "O", "O"]  # OCCURRENCE is not a scored type
    assert ex[1].reference == ["O", "O", "O", "B-problem", "I-problem", "O", "B-problem", "O"]
    assert ex[2].reference == ["B-test", "I-test", "O", "B-problem", "O", "O", "B-treatment", "O"]
    assert markup(ex[2].meta["tokens"], ex[2].reference).startswith('<span class="test">CT scan</span> showed')
    # a directory of XML files is read in sorted order
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "b.xml").write_text(F.I2B2_XML)
    assert len(load_i2b2(str(tmp_path / "dir"))) == 3
    bad = F.I2B2_XML.replace('start="34" end="44"', 'start="35" end="44"')
    (tmp_path / "bad.xml").write_text(bad)
    _raises(load_i2b2, tmp_path / "bad.xml", None, "E1")
    (tmp_path / "notags.xml").write_text(re.sub(r"<TAGS>.*</TAGS>", "", F.I2B2_XML, flags=re.S))
    _raises(load_i2b2, tmp_path / "notags.xml", None, "<TAGS>")


def test_bio_files(tmp_path):
    (tmp_path / "x.bio").write_text(F.BIO_TEXT)
    ex = load_bio(str(tmp_path / "x.bio"))
    assert len(ex) == 3 and ex[1].reference == ["O", "B-treatment", "O", "B-test", "I-test"]
    assert ex[2].reference == ["O", "O"]  # a sentence without entities
    # bare B/I tags (single-type corpora such as the BC5CDR sample) take the task's type...
    (tmp_path / "bare.tsv").write_text("Aspirin\tB\ntoxicity\tO\n")
    assert load_bio(str(tmp_path / "bare.tsv"), ("chemical",), bare_type="chemical")[0].reference == ["B-chemical", "O"]
    # ...and are an error for i2b2, whose tags are typed (not silently turned into one made-up type)
    _raises(load_i2b2, tmp_path / "bare.tsv", 1, "bc5cdr_chem")
    (tmp_path / "bad.bio").write_text("The\tO\npatient\n")
    _raises(load_bio, tmp_path / "bad.bio", 2, "no tag field")
    (tmp_path / "bad2.bio").write_text("The\tO\nchest\tX-problem\n")
    _raises(load_bio, tmp_path / "bad2.bio", 2, "X-problem")


def test_ddi_tsv_and_xml(tmp_path):
    F.write_ddi_tsv(tmp_path / "d.tsv")
    ex = load_ddi(str(tmp_path / "d.tsv"))
    assert [e.reference for e in ex] == ["DDI-effect", "DDI-mechanism", "DDI-advise", "DDI-false"]
    assert ex[0].id == "DDI-DrugBank.d1.s0.p0"
    (tmp_path / "d.xml").write_text(F.DDI_XML)
    ex = load_ddi(str(tmp_path / "d.xml"))
    assert [e.reference for e in ex] == ["DDI-effect", "DDI-false", "DDI-int"]
    assert ex[0].inputs["sentence"] == "@DRUG$ may increase the effect of @DRUG$ and heparin."
    assert ex[2].inputs["sentence"] == "Aspirin may increase the effect of @DRUG$ and @DRUG$."
    (tmp_path / "bad.tsv").write_text("index\tsentence\tlabel\nx\t@DRUG$ and @DRUG$\tDDI-maybe\n")
    _raises(load_ddi, tmp_path / "bad.tsv", 2, "DDI-maybe")
    (tmp_path / "bad.xml").write_text(F.DDI_XML.replace(' ddi="false"', ""))
    _raises(load_ddi, tmp_path / "bad.xml", None, "'ddi'")


def test_hoc(tmp_path):
    F.write_hoc(tmp_path / "h.tsv")
    ex = load_hoc(str(tmp_path / "h.tsv"))
    assert ex[0].reference == ["sustaining proliferative signaling", "resisting cell death"]
    assert ex[1].reference == [] and ex[1].target_text == "none"
    assert ex[0].choices == HOC_CHOICES
    (tmp_path / "bad.tsv").write_text("pmid\ttext\tlabels\n1\tt\tcell cycle\n")
    _raises(load_hoc, tmp_path / "bad.tsv", 2, "cell cycle")


def test_mtsamples_csv(tmp_path):
    F.write_mtsamples(tmp_path / "mt.csv")
    ex = load_mtsamples(str(tmp_path / "mt.csv"))
    assert [e.id for e in ex] == ["0", "1", "3"]  # the row without transcription is skipped
    assert ex[0].inputs["text"] == 'HISTORY: chest pain,\n"sharp".'  # quoted multi-line field
    assert ex[0].choices == ("Cardiovascular / Pulmonary", "Orthopedic")
    (tmp_path / "bad.csv").write_text("description,transcription\nx,y\n")
    _raises(load_mtsamples, tmp_path / "bad.csv", 1, "medical_specialty")


def test_summarization_jsonl_release_and_parquet(tmp_path):
    F.write_pubmedsum(tmp_path / "p.jsonl")
    ex = load_pubmed_sum(str(tmp_path / "p.jsonl"))
    assert ex[1].reference == "fever 1 treated ." and ex[1].inputs["text"].startswith("the patient")
    rel = {"query": "q", "answer": "abs", "text": "art", "id": "pubmed0"}
    (tmp_path / "rel.jsonl").write_text(json.dumps(rel) + "\n")
    ex = load_pubmed_sum(str(tmp_path / "rel.jsonl"))
    assert (ex[0].id, ex[0].inputs["text"], ex[0].reference) == ("pubmed0", "art", "abs")
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"article": ["a1", "a2"], "abstract": ["s1", "s2"]}), tmp_path / "p.parquet")
    assert [e.reference for e in load_pubmed_sum(str(tmp_path / "p.parquet"))] == ["s1", "s2"]
    (tmp_path / "bad.jsonl").write_text(json.dumps({"article": "x"}) + "\n")
    _raises(load_pubmed_sum, tmp_path / "bad.jsonl", 1, "'abstract'")
    F.write_mimic(tmp_path / "m.jsonl")
    assert load_mimic_cxr(str(tmp_path / "m.jsonl"))[0].reference == "No acute process."
    (tmp_path / "badm.jsonl").write_text(json.dumps({"findings": "x"}) + "\n")
    _raises(load_mimic_cxr, tmp_path / "badm.jsonl", 1, "'impression'")


def test_nli(tmp_path):
    F.write_bionli(tmp_path / "b.jsonl")
    F.write_mednli(tmp_path / "m.jsonl")
    assert [e.reference for e in load_bionli(str(tmp_path / "b.jsonl"))] == ["entailment", "contradiction"]
    ex = load_mednli(str(tmp_path / "m.jsonl"))
    assert [e.reference for e in ex] == ["entailment", "contradiction", "neutral"] and ex[0].id == "p0"
    (tmp_path / "bad.jsonl").write_text(json.dumps({"sentence1": "a", "gold_label": "neutral"}) + "\n")
    _raises(load_mednli, tmp_path / "bad.jsonl", 1, "'sentence2'")
    (tmp_path / "bad2.jsonl").write_text(json.dumps({"premise": "a", "hypothesis": "b", "label": "neutral"}) + "\n")
    _raises(load_bionli, tmp_path / "bad2.jsonl", 1, "neutral")


def test_cases(tmp_path):
    F.write_cases(tmp_path / "c.jsonl")
    ex = load_cases(str(tmp_path / "c.jsonl"))
    assert ex[0].reference == {"diagnosis": "Myocardial infarction", "synonyms": ["heart attack", "MI"]}
    assert ex[1].reference["synonyms"] == []
    (tmp_path / "bad.jsonl").write_text(json.dumps({"case": "x"}) + "\n")
    _raises(load_cases, tmp_path / "bad.jsonl", 1, "'diagnosis'")


def test_every_task_resolves_its_default_file_and_renders_a_prompt(tmp_path):
    paths = F.write_all(str(tmp_path))
    assert set(paths) == set(TASKS)
    v1 = prompts.load_prompt_set("mellama-v1")
    for name, spec in TASKS.items():
        path = resolve_path(spec, str(tmp_path), None)
        assert path == paths[name]
        exs = spec.load(path)
        text = prompts.render(v1.get(name), exs[0], exs[1:2])
        assert text.startswith("\n***TASK***\n") and text.endswith("\nOutput:\n")
        assert text.count("\nInput: ") == 2  # one demonstration + the example
        assert "{" not in text.split("***EXAMPLES***")[0]
    with pytest.raises(FileNotFoundError, match="task_paths.hoc"):
        resolve_path(get_task("hoc"), str(tmp_path / "nowhere"), None)


def test_pubmed_template_reproduces_the_released_query(tmp_path):
    """Me-LLaMA's PubMed summarization release carries its query; both prompt sets rebuild it exactly."""
    article = "mast cells ( mcs ) belong to the innate - compartment of the immune system . "
    query = ("\n***TASK***\nthe task is to summarize an input biomedical literature in six sentences\n\n"
             "***INPUT***\nthe input is a biomedical literature\n\n***OUTPUT***\nthe output is the summary of "
             "an input biomedical literature in six sentences\n\n***DOCUMENTATION***\n\n***EXAMPLES***\n\n"
             f"Input: {article}\nOutput:\n")
    (tmp_path / "r.jsonl").write_text(json.dumps({"query": query, "answer": "s", "text": article, "id": "pubmed0"}) + "\n")
    ex = load_pubmed_sum(str(tmp_path / "r.jsonl"))[0]
    for name in ("mellama-v1", "mellama-release"):
        assert prompts.render(prompts.get_template("pubmedsum", name), ex) == query
