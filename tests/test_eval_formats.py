"""Benchmark files as people download them, written here by the tools that write the real ones:
pandas `to_csv(sep="\\t")` (CSV-quoted fields), raw TSVs, CSVs with/without header and with an
unnamed index column, Hugging Face `datasets`-style parquet / JSON lines, gzip; DDI pair mentions;
bad records counted (reason, file:line) under config.max_bad_fraction; data cards; every task file
validated before the model is loaded."""
from __future__ import annotations

import gzip
import shutil

import pytest

import eval_fixtures as F
from mellama_jax.eval.tasks import CARDS, TASKS, get_task, resolve_path
from mellama_jax.eval.tasks.cards import size_warning
from mellama_jax.eval.tasks.common import LoadReport

pd = pytest.importorskip("pandas")

# Texts with the characters that make pandas quote a field (quotes; a tab or newline would too).
QUOTED_TEXTS = ['He said "stop" and the "tumour" shrank.', "Plain text, no quotes.", 'A ""doubled"" quote.']


def _config(**kw):
    from configs.eval import get_config

    c = get_config()
    c.show_progress = False
    for k, v in kw.items():
        setattr(c, k, v)
    return c


def _pubmedqa_frame(n=6):
    rows = []
    for i in range(n):
        contexts = [f'Patients said "it {i} helps".', "It's 5\" long."] if i % 2 else [f"Plain {i}."]
        rows.append({"QUESTION": f'Does "drug {i}" work?', "CONTEXTS": repr(contexts), "LABELS": "['A']",
                     "MESHES": "[]", "YEAR": 2001, "reasoning_required_pred": "yes", "reasoning_free_pred": "yes",
                     "final_decision": ["yes", "no", "maybe"][i % 3], "LONG_ANSWER": 'x "y"', "pmid": 100 + i})
    return pd.DataFrame(rows), rows


def test_pubmedqa_pandas_quoted_tsv_loads_every_row(tmp_path):
    df, rows = _pubmedqa_frame()
    df.to_csv(tmp_path / "test.tsv", sep="\t", index=False)
    raw = (tmp_path / "test.tsv").read_text()
    assert '\t"[' in raw  # pandas CSV-quoted the CONTEXTS fields holding quotes (as the public file)
    report = LoadReport(source="pubmedqa", strict=False)
    ex = TASKS["pubmedqa"].load(str(tmp_path / "test.tsv"), report=report)
    assert len(ex) == 6 and report.num_bad == 0 and report.notes["quoting"] == "csv"
    for e, r in zip(ex, rows):
        assert e.inputs["question"] == r["QUESTION"] and e.id == str(r["pmid"])
        assert e.inputs["context_lines"].split("\n") == eval(r["CONTEXTS"])  # noqa: S307 - test data
    # and a raw (unquoted) TSV of the same rows reads the same
    with open(tmp_path / "raw.tsv", "w") as f:
        f.write("\t".join(df.columns) + "\n")
        for r in rows:
            f.write("\t".join(str(r[c]) for c in df.columns) + "\n")
    report = LoadReport(source="pubmedqa", strict=False)
    assert TASKS["pubmedqa"].load(str(tmp_path / "raw.tsv"), report=report) == ex
    assert report.notes["quoting"].startswith("none")


def test_hoc_pandas_quotes_are_not_kept_as_text_and_raw_quotes_are(tmp_path):
    df = pd.DataFrame({"pmid": [1, 2, 3], "text": QUOTED_TEXTS,
                       "labels": ["resisting cell death", "", "inducing angiogenesis;evading growth suppressors"]})
    df.to_csv(tmp_path / "hoc.tsv", sep="\t", index=False)
    ex = TASKS["hoc"].load(str(tmp_path / "hoc.tsv"))
    assert [e.inputs["text"] for e in ex] == QUOTED_TEXTS  # no literal CSV quotes, no doubled ""
    assert ex[1].reference == [] and ex[2].reference == ["evading growth suppressors", "inducing angiogenesis"]
    # a raw TSV whose text starts with a quote that is not CSV quoting keeps it as written
    text = '"Hallmarks" are discussed here'
    (tmp_path / "raw.tsv").write_text(f"pmid\ttext\tlabels\n1\t{text}\t\n2\tplain\tresisting cell death\n")
    report = LoadReport(source="hoc", strict=False)
    ex = TASKS["hoc"].load(str(tmp_path / "raw.tsv"), report=report)
    assert ex[0].inputs["text"] == text and report.notes["quoting"].startswith("none (quote")


@pytest.mark.parametrize("header,index", [(True, True), (False, True), (False, False), (True, False)])
def test_mtsamples_csv_with_or_without_header_and_index(tmp_path, header, index):
    df = pd.DataFrame({"description": [" Chest pain.", " Knee."], "medical_specialty": [" Surgery", " Orthopedic"],
                       "sample_name": ["a", "b"], "transcription": ['HISTORY: "sharp",\nchest pain.', "Knee pain."],
                       "keywords": ["chest", None]})
    df.to_csv(tmp_path / "mt.csv", header=header, index=index)
    report = LoadReport(source="mtsamples", strict=False)
    ex = TASKS["mtsamples"].load(str(tmp_path / "mt.csv"), report=report)
    assert [e.reference for e in ex] == ["Surgery", "Orthopedic"]
    assert ex[0].inputs["text"] == 'HISTORY: "sharp",\nchest pain.'
    assert report.notes["header"] == ("yes" if header else "no (layout ['description', 'medical_specialty', "
                                      "'sample_name', 'transcription', 'keywords'])")
    if index:
        assert [e.id for e in ex] == ["0", "1"] and report.notes.get("index_column")


def test_ddi_pair_mentions_kept_and_counted_headerless_ok(tmp_path):
    rows = [("DDI-MedLine.d1.s0.p0", "@DRUG$ inhibits the metabolism of @DRUG$.", "DDI-mechanism"),
            ("DDI-MedLine.d1.s1.p0", "Both @DRUG-DRUG$ were well tolerated.", "DDI-false"),
            ("DDI-MedLine.d1.s2.p0", 'Avoid "@DRUG$" with @DRUG$.', "DDI-advise")]
    df = pd.DataFrame(rows, columns=["index", "sentence", "label"])
    for name, header in (("headed.tsv", True), ("headerless.tsv", False)):
        df.to_csv(tmp_path / name, sep="\t", index=False, header=header)
        report = LoadReport(source="ddi", strict=False)
        ex = TASKS["ddi"].load(str(tmp_path / name), report=report)
        assert [(e.id, e.inputs["sentence"], e.reference) for e in ex] == rows
        assert report.num_bad == 0 and report.notes["variants"] == {"pair_mention_@DRUG-DRUG$": 1}
    (tmp_path / "nomask.tsv").write_text("index\tsentence\tlabel\nx\tno masks here\tDDI-false\n")
    with pytest.raises(Exception, match=r"nomask.tsv:2: .*@DRUG\$"):
        TASKS["ddi"].load(str(tmp_path / "nomask.tsv"))


def test_hf_parquet_and_jsonl_exports(tmp_path):
    """Column names of the Hugging Face exports, written the way `datasets` writes them."""
    datasets = pytest.importorskip("datasets")
    medqa = [{"question": "Which drug?", "answer": "Heparin", "answer_idx": "B", "meta_info": "step1",
              "options": [{"key": k, "value": v} for k, v in zip("ABCD", ["Aspirin", "Heparin", "Statin", "None"])]}]
    datasets.Dataset.from_list(medqa).to_parquet(str(tmp_path / "medqa.parquet"))
    ex = TASKS["medqa"].load(str(tmp_path / "medqa.parquet"))
    assert ex[0].reference == "Heparin" and ex[0].meta["option_letters"] == ("A", "B", "C", "D")
    pqa = [{"pubid": 7, "question": "Q?", "context": {"contexts": ["a.", "b."], "labels": ["X", "Y"], "meshes": []},
            "long_answer": "x", "final_decision": "maybe"}]
    datasets.Dataset.from_list(pqa).to_json(str(tmp_path / "pubmedqa.json"))  # JSON lines named .json
    ex = TASKS["pubmedqa"].load(str(tmp_path / "pubmedqa.json"))
    assert (ex[0].id, ex[0].inputs["context"], ex[0].reference) == ("7", "a. b.", "maybe")
    mcq = [{"id": "u1", "question": "Nerve?", "opa": "a", "opb": "b", "opc": "c", "opd": "d", "cop": 0,
            "choice_type": "single", "exp": None, "subject_name": "Anatomy", "topic_name": None}]
    datasets.Dataset.from_list(mcq).to_parquet(str(tmp_path / "medmcqa.parquet"))
    assert TASKS["medmcqa"].load(str(tmp_path / "medmcqa.parquet"))[0].reference == "a"
    hoc = [{"document_id": "d1", "text": "Angiogenesis.", "labels": ["inducing angiogenesis"]}]
    datasets.Dataset.from_list(hoc).to_parquet(str(tmp_path / "hoc.parquet"))
    assert TASKS["hoc"].load(str(tmp_path / "hoc.parquet"))[0].reference == ["inducing angiogenesis"]
    # NER with ClassLabel ids: the label names stored in the parquet file decode them
    feats = datasets.Features({"id": datasets.Value("string"), "tokens": datasets.Sequence(datasets.Value("string")),
                               "ner_tags": datasets.Sequence(datasets.ClassLabel(names=["O", "B-Disease", "I-Disease"]))})
    ds = datasets.Dataset.from_dict({"id": ["0"], "tokens": [["Colorectal", "cancer", "risk"]], "ner_tags": [[1, 2, 0]]},
                                    features=feats)
    ds.to_parquet(str(tmp_path / "ncbi.parquet"))
    ex = TASKS["ncbi_disease"].load(str(tmp_path / "ncbi.parquet"))
    assert ex[0].reference == ["B-disease", "I-disease", "O"]


def test_ner_tasks_of_their_own(tmp_path):
    (tmp_path / "chem.tsv").write_text(F.BC5CDR_CHEM_BIO)
    ex = TASKS["bc5cdr_chem"].load(str(tmp_path / "chem.tsv"))
    assert ex[1].reference == ["B-chemical", "O", "B-chemical", "O"] and ex[0].inputs["entity_types"] == "chemical"
    typed = "Naloxone\tB-Chemical\nreverses\tO\nclonidine\tB-Chemical\nhypotension\tB-Disease\n"
    (tmp_path / "both.tsv").write_text(typed)
    assert TASKS["bc5cdr_chem"].load(str(tmp_path / "both.tsv"))[0].reference == ["B-chemical", "O", "B-chemical", "O"]
    assert TASKS["bc5cdr_disease"].load(str(tmp_path / "both.tsv"))[0].reference == ["O", "O", "O", "B-disease"]
    # seqeval scores them: a perfect prediction is 1.0, a missed mention lowers recall
    from mellama_jax.eval.metrics import ner_metrics

    gold = [e.reference for e in TASKS["ncbi_disease"].load(str(_write(tmp_path / "n.tsv", F.NCBI_DISEASE_BIO)))]
    assert ner_metrics(gold, gold)["f1"] == 1.0
    assert ner_metrics([["O"] * len(gold[0]), gold[1]], gold)["recall"] == 0.5


def _write(path, text):
    path.write_text(text)
    return path


def test_gzip_files_resolve_and_load(tmp_path):
    F.write_medqa(tmp_path / "plain.jsonl")
    F.write_hoc(tmp_path / "plain.tsv")
    (tmp_path / "d").mkdir()
    for src, dst in (("plain.jsonl", "medqa.jsonl.gz"), ("plain.tsv", "hoc.tsv.gz")):
        with open(tmp_path / src, "rb") as f, gzip.open(tmp_path / "d" / dst, "wb") as g:
            shutil.copyfileobj(f, g)
    for task, plain in (("medqa", "plain.jsonl"), ("hoc", "plain.tsv")):
        path = resolve_path(get_task(task), str(tmp_path / "d"), None)
        assert path.endswith(".gz")
        report = LoadReport(source=task, strict=False)
        key = lambda exs: [(e.inputs, e.reference, e.choices) for e in exs]  # ids name the file
        assert key(TASKS[task].load(path, report=report)) == key(TASKS[task].load(str(tmp_path / plain)))
        assert report.notes["compression"] == "gzip"


def _hoc_with_bad_rows(path, n_good, n_bad):
    lines = ["pmid\ttext\tlabels"] + [f"{i}\tabstract {i}\tresisting cell death" for i in range(n_good)]
    lines += [f"{1000 + i}\tabstract\tnot a hallmark" for i in range(n_bad)]
    path.write_text("\n".join(lines) + "\n")


def test_bad_records_are_counted_below_the_threshold_and_fail_above(tmp_path):
    from mellama_jax.eval.runner import load_task_file

    _hoc_with_bad_rows(tmp_path / "hoc.tsv", 199, 1)
    ex, report = load_task_file(get_task("hoc"), str(tmp_path / "hoc.tsv"), _config(max_bad_fraction=0.01))
    assert len(ex) == 199 and report.num_bad == 1 and report.bad == {"bad_label": 1}
    assert report.to_dict()["first_problems"] == [f"[hoc] {tmp_path / 'hoc.tsv'}:201: bad_label "
                                                 "(label 'not a hallmark' is not a hallmark of cancer "
                                                 f"{TASKS['hoc'].load.__globals__['HOC_CHOICES']})"]
    _hoc_with_bad_rows(tmp_path / "worse.tsv", 195, 5)
    with pytest.raises(ValueError, match=r"5 of 200 items were bad .*config.max_bad_fraction") as e:
        load_task_file(get_task("hoc"), str(tmp_path / "worse.tsv"), _config(max_bad_fraction=0.01))
    assert "worse.tsv:197" in str(e.value)
    # a truncated JSON line is a bad record too, and N=0 is an error
    F.write_medqa(tmp_path / "m.jsonl", n=3)
    text = (tmp_path / "m.jsonl").read_text().splitlines()
    (tmp_path / "m.jsonl").write_text("\n".join(text[:2] + [text[2][:30]]) + "\n")
    with pytest.raises(ValueError, match=r"m.jsonl:3: invalid_json"):
        load_task_file(get_task("medqa"), str(tmp_path / "m.jsonl"), _config(max_bad_fraction=0.01))
    ex, report = load_task_file(get_task("medqa"), str(tmp_path / "m.jsonl"), _config(max_bad_fraction=0.5))
    assert len(ex) == 2 and report.bad == {"invalid_json": 1}
    (tmp_path / "empty.tsv").write_text("pmid\ttext\tlabels\n")
    with pytest.raises(ValueError, match="no usable"):
        load_task_file(get_task("hoc"), str(tmp_path / "empty.tsv"), _config())


def test_data_cards_and_size_warning(tmp_path):
    assert set(CARDS) == set(TASKS)
    for name, card in CARDS.items():
        assert card.files and card.labels and card.size_note, name
    F.write_pubmedqa_tsv(tmp_path / "p.tsv")
    w = size_warning("pubmedqa", TASKS["pubmedqa"].load(str(tmp_path / "p.tsv")))
    assert w["count"] == 3 and w["official_test_size"] == 500 and "partial file" in w["warning"]
    (tmp_path / "n.tsv").write_text(F.NCBI_DISEASE_BIO)
    w = size_warning("ncbi_disease", TASKS["ncbi_disease"].load(str(tmp_path / "n.tsv")))
    assert (w["unit"], w["count"]) == ("entity mentions", 2)


def test_every_task_file_is_validated_before_the_model_loads(tmp_path):
    from mellama_jax.eval.runner import run

    F.write_all(str(tmp_path / "data"))
    (tmp_path / "data" / "hoc.tsv").write_text("pmid\ttext\tlabels\n")  # N = 0
    c = _config(checkpoint=str(tmp_path / "no-such-checkpoint"), data_dir=str(tmp_path / "data"), tasks="pubmedqa,hoc")
    with pytest.raises(ValueError, match=r"task hoc: .*hoc.tsv.*no usable"):
        run(c, str(tmp_path / "w"))
    assert not (tmp_path / "w").exists()  # nothing written, the checkpoint never touched


def test_a_decoding_error_names_file_and_line(tmp_path):
    from mellama_jax.eval.runner import load_task_file

    (tmp_path / "hoc.tsv").write_bytes(b"pmid\ttext\tlabels\n1\tok\t\n2\tbad \xff byte\t\n")
    with pytest.raises(ValueError, match=r"hoc.tsv:3: not UTF-8"):
        load_task_file(get_task("hoc"), str(tmp_path / "hoc.tsv"), _config())
    (tmp_path / "chem.tsv").write_bytes(b"Aspirin\tB\n\nbad\xfe\tO\n")
    with pytest.raises(ValueError, match=r"chem.tsv:3: not UTF-8"):
        load_task_file(get_task("bc5cdr_chem"), str(tmp_path / "chem.tsv"), _config())
