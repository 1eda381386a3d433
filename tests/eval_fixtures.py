"""Fixture writers for the eval tests: each benchmark in its real public file format, a tiny
sentencepiece tokenizer and a tiny random HF LLaMA directory. Helpers only (no tests here)."""
from __future__ import annotations

import csv
import json
import os

WORDS = ("patient fever cough aspirin warfarin yes no maybe entailment contradiction neutral cancer "
         "cell death signaling growth pain chest test treatment problem drug effect mechanism advise int "
         "false the of and a in with was is to for on by span class output input task question answer "
         "abstract note diagnosis pneumonia infarction myocardial acute heart failure sepsis").split()


def write_tokenizer(directory: str, vocab_size: int = 400) -> str:
    """Train a tiny LLaMA-style (unk=0, bos=1, eos=2) sentencepiece model into directory/tokenizer.model."""
    import random

    import sentencepiece as spm

    os.makedirs(directory, exist_ok=True)
    rng = random.Random(0)
    corpus = os.path.join(directory, "corpus.txt")
    with open(corpus, "w") as f:
        for _ in range(2000):
            f.write(" ".join(rng.choice(WORDS) for _ in range(12)) + " ***TASK*** <span class=\"problem\"> @DRUG$ ; : . ,\n")
    spm.SentencePieceTrainer.train(input=corpus, model_prefix=os.path.join(directory, "tokenizer"),
                                   vocab_size=vocab_size, model_type="bpe", byte_fallback=True,
                                   character_coverage=1.0, minloglevel=2)
    os.remove(corpus)
    os.remove(os.path.join(directory, "tokenizer.vocab"))
    return os.path.join(directory, "tokenizer.model")


def write_tiny_hf_model(directory: str, vocab_size: int, seed: int = 0, max_positions: int = 1024):
    """A random tiny transformers LlamaForCausalLM saved with save_pretrained (the HF-dir path)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=max_positions,
                      bos_token_id=1, eos_token_id=2)
    model = LlamaForCausalLM(cfg).eval()
    model.save_pretrained(directory)
    return model


def _jsonl(path, rows):
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


def write_pubmedqa_tsv(path, n=3):
    header = ["QUESTION", "CONTEXTS", "LABELS", "MESHES", "YEAR", "reasoning_required_pred",
              "reasoning_free_pred", "final_decision", "LONG_ANSWER", "pmid"]
    labels = ["yes", "no", "maybe"]
    with open(path, "w") as f:
        f.write("\t".join(header) + "\n")
        for i in range(n):
            row = [f"Does drug{i} reduce fever?", repr([f"Context one of {i}.", "Results: it's fine."]),
                   "['BACKGROUND', 'RESULTS']", "['Humans']", "2008", "yes", "yes", labels[i % 3],
                   "Long answer.", str(1000 + i)]
            f.write("\t".join(row) + "\n")


def write_pubmedqa_json(path, n=3):
    labels = ["yes", "no", "maybe"]
    data = {str(2000 + i): {"QUESTION": f"Q{i}?", "CONTEXTS": ["a.", "b."], "LABELS": ["A", "B"],
                            "MESHES": [], "YEAR": "2011", "reasoning_required_pred": "yes",
                            "reasoning_free_pred": "yes", "final_decision": labels[i % 3], "LONG_ANSWER": "x"}
            for i in range(n)}
    with open(path, "w") as f:
        json.dump(data, f, indent=1)


def write_medqa(path, n=3, options=5):
    letters = "ABCDE"[:options]
    rows = []
    for i in range(n):
        opts = {k: f"option {k.lower()} text {i}" for k in letters}
        idx = letters[i % options]
        rows.append({"question": f"A {40 + i}-year-old man has chest pain. Which drug?", "answer": opts[idx],
                     "options": opts, "meta_info": "step1", "answer_idx": idx})
    _jsonl(path, rows)


def write_medmcqa(path, n=4, one_based=True):
    rows = []
    for i in range(n):
        cop = (i % 4) + (1 if one_based else 0)
        rows.append({"id": f"m{i}", "question": f"Which nerve {i}?", "opa": "ulnar", "opb": "radial",
                     "opc": "median", "opd": "axillary", "cop": cop, "choice_type": "single",
                     "exp": "because", "subject_name": "Anatomy", "topic_name": "Arm"})
    _jsonl(path, rows)


def write_emrqa(path, n=3):
    paras = []
    for i in range(n):
        ctx = f"Patient was given aspirin {i} mg for chest pain. Warfarin was stopped."
        paras.append({"context": ctx, "qas": [{"id": f"q{i}", "question": "What was the patient given?",
                                               "answers": [{"text": f"aspirin {i} mg", "answer_start": 18}]}]})
    with open(path, "w") as f:
        json.dump({"version": "1", "data": [{"title": "note", "paragraphs": paras}]}, f)


I2B2_XML = """<?xml version="1.0" encoding="UTF-8" ?>
<ClinicalNarrativeTemporalAnnotation>
<TEXT><![CDATA[
Admission Date :
The patient had chest pain and fever .
CT scan showed pneumonia ; started aspirin .
]]></TEXT>
<TAGS>
<EVENT id="E0" start="1" end="10" text="Admission" modality="FACTUAL" polarity="POS" type="OCCURRENCE" />
<EVENT id="E1" start="34" end="44" text="chest pain" modality="FACTUAL" polarity="POS" type="PROBLEM" />
<EVENT id="E2" start="49" end="54" text="fever" modality="FACTUAL" polarity="POS" type="PROBLEM" />
<EVENT id="E3" start="57" end="64" text="CT scan" modality="FACTUAL" polarity="POS" type="TEST" />
<EVENT id="E4" start="72" end="81" text="pneumonia" modality="FACTUAL" polarity="POS" type="PROBLEM" />
<EVENT id="E5" start="92" end="99" text="aspirin" modality="FACTUAL" polarity="POS" type="TREATMENT" />
<TIMEX3 id="T0" start="18" end="28" text="2010-01-01" type="DATE" val="2010-01-01" mod="NA" />
</TAGS>
</ClinicalNarrativeTemporalAnnotation>
"""

BIO_TEXT = ("The\tO\npatient\tO\nhad\tO\nchest\tB-problem\npain\tI-problem\n.\tO\n\n"
            "Started\tO\naspirin\tB-treatment\nafter\tO\nCT\tB-test\nscan\tI-test\n\n"
            "No\tO\nissues\tO\n")


# BLURB-style single-type BIO (bare B/I tags), as the BC5CDR-chem / NCBI-disease downloads are.
BC5CDR_CHEM_BIO = ("Torsade\tO\nafter\tO\ndobutamine\tB\ntreatment\tO\n.\tO\n\n"
                   "Naloxone\tB\nreverses\tO\nclonidine\tB\nhypotension\tO\n\n")
BC5CDR_DISEASE_BIO = ("Torsade\tB\nde\tI\npointes\tI\nafter\tO\ndobutamine\tO\n.\tO\n\n"
                      "Naloxone\tO\nreverses\tO\nclonidine\tO\nhypotension\tB\n\n")
NCBI_DISEASE_BIO = ("Familial\tO\nadenomatous\tB\npolyposis\tI\nis\tO\nrare\tO\n\n"
                    "Colorectal\tB\ncancer\tI\nrisk\tO\n\n")


def write_ddi_tsv(path):
    rows = [("DDI-DrugBank.d1.s0.p0", "@DRUG$ increases the effect of @DRUG$.", "DDI-effect"),
            ("DDI-DrugBank.d1.s0.p1", "@DRUG$ and aspirin with @DRUG$ levels.", "DDI-mechanism"),
            ("DDI-DrugBank.d1.s1.p0", "Avoid @DRUG$ with @DRUG$.", "DDI-advise"),
            ("DDI-DrugBank.d1.s2.p0", "@DRUG$ was given; @DRUG$ too.", "DDI-false")]
    with open(path, "w") as f:
        f.write("index\tsentence\tlabel\n")
        for r in rows:
            f.write("\t".join(r) + "\n")


DDI_XML = """<?xml version="1.0" encoding="UTF-8"?>
<document id="DDI-DrugBank.d9">
  <sentence id="DDI-DrugBank.d9.s0" text="Aspirin may increase the effect of warfarin and heparin.">
    <entity id="DDI-DrugBank.d9.s0.e0" charOffset="0-6" type="drug" text="Aspirin"/>
    <entity id="DDI-DrugBank.d9.s0.e1" charOffset="35-42" type="drug" text="warfarin"/>
    <entity id="DDI-DrugBank.d9.s0.e2" charOffset="48-54" type="drug" text="heparin"/>
    <pair id="DDI-DrugBank.d9.s0.p0" e1="DDI-DrugBank.d9.s0.e0" e2="DDI-DrugBank.d9.s0.e1" ddi="true" type="effect"/>
    <pair id="DDI-DrugBank.d9.s0.p1" e1="DDI-DrugBank.d9.s0.e0" e2="DDI-DrugBank.d9.s0.e2" ddi="false"/>
    <pair id="DDI-DrugBank.d9.s0.p2" e1="DDI-DrugBank.d9.s0.e1" e2="DDI-DrugBank.d9.s0.e2" ddi="true" type="int"/>
  </sentence>
</document>
"""


def write_hoc(path):
    rows = [("101", "Cells evade apoptosis and proliferate.", "sustaining proliferative signaling;resisting cell death"),
            ("102", "A study with no hallmark.", ""),
            ("103", "Angiogenesis is induced.", "inducing angiogenesis")]
    with open(path, "w") as f:
        f.write("pmid\ttext\tlabels\n")
        for r in rows:
            f.write("\t".join(r) + "\n")


def write_mtsamples(path):
    rows = [("0", " Chest pain workup.", " Cardiovascular / Pulmonary", " Chest Pain", "HISTORY: chest pain,\n\"sharp\".", "chest"),
            ("1", " Knee.", " Orthopedic", " Knee", "Knee pain after fall.", "knee"),
            ("2", " Empty.", " Orthopedic", " X", "", ""),
            ("3", " Cough.", " Cardiovascular / Pulmonary", " Cough", "Cough and fever.", "cough")]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["", "description", "medical_specialty", "sample_name", "transcription", "keywords"])
        w.writerows(rows)


def write_pubmedsum(path, n=2):
    _jsonl(path, [{"article": f"the patient had fever {i} . aspirin was given .", "abstract": f"fever {i} treated ."}
                  for i in range(n)])


def write_mimic(path, n=2):
    _jsonl(path, [{"id": f"s{i}", "findings": f"No focal consolidation {i}.", "impression": "No acute process."}
                  for i in range(n)])


def write_bionli(path):
    _jsonl(path, [{"premise": "Aspirin reduced fever.", "hypothesis": "Aspirin helps.", "label": "entailment"},
                  {"premise": "Drug had no effect.", "hypothesis": "Drug works.", "label": "contradiction"}])


def write_mednli(path):
    _jsonl(path, [{"pairID": f"p{i}", "sentence1": "Patient has fever.", "sentence2": f"Patient is {w}.",
                   "gold_label": w} for i, w in enumerate(["entailment", "contradiction", "neutral"])])


def write_cases(path):
    _jsonl(path, [{"id": "c1", "case": "65 year old with crushing chest pain.", "diagnosis": "Myocardial infarction",
                   "synonyms": ["heart attack", "MI"]},
                  {"id": "c2", "case": "Fever, hypotension.", "diagnosis": "Sepsis"}])


def write_all(data_dir: str) -> dict[str, str]:
    """Every benchmark's test file under data_dir with its default name; returns task -> path."""
    os.makedirs(data_dir, exist_ok=True)
    p = lambda name: os.path.join(data_dir, name)
    write_pubmedqa_tsv(p("pubmedqa.tsv"))
    write_medqa(p("medqa.jsonl"))
    write_medmcqa(p("medmcqa.jsonl"))
    write_emrqa(p("emrqa.json"))
    with open(p("i2b2.xml"), "w") as f:
        f.write(I2B2_XML)
    write_ddi_tsv(p("ddi.tsv"))
    write_hoc(p("hoc.tsv"))
    write_mtsamples(p("mtsamples.csv"))
    write_pubmedsum(p("pubmedsum.jsonl"))
    write_mimic(p("mimiccxr.jsonl"))
    write_bionli(p("bionli.jsonl"))
    write_mednli(p("mednli.jsonl"))
    write_cases(p("diagnosis.jsonl"))
    for name, text in (("bc5cdr_chem.tsv", BC5CDR_CHEM_BIO), ("bc5cdr_disease.tsv", BC5CDR_DISEASE_BIO),
                       ("ncbi_disease.tsv", NCBI_DISEASE_BIO)):
        with open(p(name), "w") as f:
            f.write(text)
    names = {"pubmedqa": "pubmedqa.tsv", "medqa": "medqa.jsonl", "medmcqa": "medmcqa.jsonl", "emrqa": "emrqa.json",
             "i2b2": "i2b2.xml", "ddi": "ddi.tsv", "hoc": "hoc.tsv", "mtsamples": "mtsamples.csv",
             "pubmedsum": "pubmedsum.jsonl", "mimiccxr": "mimiccxr.jsonl", "bionli": "bionli.jsonl",
             "mednli": "mednli.jsonl", "diagnosis": "diagnosis.jsonl", "bc5cdr_chem": "bc5cdr_chem.tsv",
             "bc5cdr_disease": "bc5cdr_disease.tsv", "ncbi_disease": "ncbi_disease.tsv"}
    return {k: p(v) for k, v in names.items()}


def write_eval_env(root) -> dict:
    """A tiny random HF LLaMA with its own sentencepiece tokenizer, plus every task's fixture file."""
    import sentencepiece as spm

    model = str(root / "hf")
    tok = write_tokenizer(model)
    vocab = spm.SentencePieceProcessor(model_file=tok).GetPieceSize()
    hf = write_tiny_hf_model(model, vocab)
    data = str(root / "data")
    paths = write_all(data)
    return {"root": root, "model": model, "tok": tok, "vocab": vocab, "hf": hf, "data": data, "paths": paths}


def write_readme_workspace(cwd: str, models: dict[str, int], project_root: str) -> dict:
    """A working directory laid out as the README's eval commands expect: one tiny random HF LLaMA
    per name in `models` (name -> torch seed), all sharing one sentencepiece tokenizer, every
    benchmark file under benchmarks/, and launch.py + configs/ linked in. Returns the env the
    commands run with (the project importable, CPU only)."""
    import shutil

    import sentencepiece as spm

    tok = None
    for name, seed in models.items():
        directory = os.path.join(cwd, name)
        if tok is None:
            tok = write_tokenizer(directory)
        else:
            os.makedirs(directory)
            shutil.copy(tok, os.path.join(directory, "tokenizer.model"))
        write_tiny_hf_model(directory, spm.SentencePieceProcessor(model_file=tok).GetPieceSize(), seed=seed)
    write_all(os.path.join(cwd, "benchmarks"))
    for name in ("launch.py", "configs"):
        os.symlink(os.path.join(project_root, name), os.path.join(cwd, name))
    return dict(os.environ, PYTHONPATH=project_root, JAX_PLATFORMS="cpu")
