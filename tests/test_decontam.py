"""Decontamination: planted benchmark passages are found in training text (verbatim, and with
whitespace / case / punctuation changes), nothing is flagged on disjoint text or below n words, every
benchmark file the harness reads is checked, and the exclude list drops the documents from training."""
import json
import os
import random
import subprocess
import sys

import numpy as np

from eval_fixtures import write_all
from mellama_jax.data.config import demo_data_config
from mellama_jax.data.decontaminate import ngram_hashes, normalized_words, _WordHasher
from mellama_jax.data.pipeline import build_train_pipeline

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PUBMEDQA_CONTEXT = ("Metformin reduced hepatic glucose output in the treated cohort while insulin sensitivity "
                    "improved markedly over twelve weeks of follow up in adults with newly diagnosed type two "
                    "diabetes and no prior exposure to oral agents.")
MEDQA_QUESTION = ("A 67-year-old woman presents with sudden painless loss of vision in the right eye that began "
                  "two hours ago while she was reading the morning newspaper at home. Which is the most likely "
                  "diagnosis?")


def _write_benchmarks(d):
    write_all(str(d))  # every benchmark in its public format, read by the harness's own loaders
    header = ["QUESTION", "CONTEXTS", "LABELS", "MESHES", "YEAR", "reasoning_required_pred",
              "reasoning_free_pred", "final_decision", "LONG_ANSWER", "pmid"]
    rows = []
    for i in range(3):
        ctx = PUBMEDQA_CONTEXT if i == 1 else f"Unrelated context number {i} about renal transplant outcomes."
        rows.append([f"Does treatment {i} help?", repr([ctx]), "['RESULTS']", "['Humans']", "2010", "yes",
                     "yes", "yes", "Long answer.", str(100 + i)])
    (d / "pubmedqa.tsv").write_text("\t".join(header) + "\n" + "".join("\t".join(r) + "\n" for r in rows))
    with open(d / "medqa.jsonl", "w") as f:
        for i in range(3):
            q = MEDQA_QUESTION if i == 2 else f"A {30 + i}-year-old man has a cough. What next?"
            opts = {k: f"choice {k} {i}" for k in "ABCDE"}
            f.write(json.dumps({"question": q, "answer": opts["A"], "options": opts, "meta_info": "step1",
                                "answer_idx": "A"}) + "\n")


def _disjoint_doc(rng, i):
    words = [f"tok{rng.randrange(5000)}" for _ in range(80)]
    return {"id": f"clean{i}", "text": " ".join(words)}


def _write_corpus(path):
    rng = random.Random(0)
    words = PUBMEDQA_CONTEXT.split()
    docs = [_disjoint_doc(rng, i) for i in range(40)]
    # verbatim: a 20-word passage of the PubMedQA context inside other text
    docs.append({"id": "exact", "text": "Background text. " + " ".join(words[3:23]) + " More text after."})
    # whitespace, case and punctuation changed: the MedQA question re-typeset
    q = MEDQA_QUESTION.upper().replace(" ", "\n  ").replace(".", " . ").replace("-", " - ")
    docs.append({"id": "reformatted", "text": "Exam prep notes:\n" + q})
    # 12 consecutive words only: below n = 13, not an overlap
    docs.append({"id": "short", "text": "Prefix words here " + " ".join(words[:12]) + " and then other words."})
    with open(path, "w") as f:
        for d in docs:
            f.write(json.dumps(d) + "\n")
    return len(docs)


def test_planted_overlaps_found_no_false_hits_and_exclude_list_drops_them(tmp_path):
    bench = tmp_path / "bench"
    bench.mkdir()
    _write_benchmarks(bench)
    corpus = tmp_path / "train.jsonl"
    n_docs = _write_corpus(corpus)
    inst = tmp_path / "inst.jsonl"  # instruction data: the MedQA question planted in an input field
    inst.write_text(json.dumps({"id": "i0", "instruction": "Answer the question.", "input": MEDQA_QUESTION,
                                "output": "Central retinal artery occlusion."}) + "\n"
                    + json.dumps({"id": "i1", "instruction": "Summarise.", "input": "tok1 tok2 tok3",
                                  "output": "Short."}) + "\n")
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "mellama_jax.cli.decontaminate",
                        "--sources_spec", f"train=jsonl:{corpus};inst=instruction_jsonl:{inst}",
                        "--benchmarks", str(bench), "--n", "13",
                        "--out", str(out), "--write_exclude"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads((out / "decontamination.json").read_text())
    assert report["skipped"] == {}  # every benchmark the harness knows has a file here and was read
    clean = {"bad": {}, "bad_records": 0, "truncated": []}  # every record read, none skipped
    assert report["sources"]["train"] == {"documents": n_docs, "contaminated": 2, **clean}
    b = report["benchmarks"]
    assert b["pubmedqa"]["touched_example_indices"] == [1] and b["pubmedqa"]["documents_touched"] == {"train": 1}
    assert b["medqa"]["touched_example_indices"] == [2]
    assert b["medqa"]["documents_touched"] == {"train": 1, "inst": 1}
    assert report["sources"]["inst"] == {"documents": 2, "contaminated": 1, **clean}
    others = [name for name, v in b.items() if name not in ("pubmedqa", "medqa") and v["examples_touched"]]
    assert others == []
    assert (out / "exclude" / "train.txt").read_text().split() == ["exact", "reformatted"]
    assert "| pubmedqa | 3 | 2 | 1 | 0 | 1 |" in (out / "decontamination.md").read_text()
    assert f"--config.data.sources.train.exclude_ids={out / 'exclude' / 'train.txt'}" in r.stdout

    # With n = 12 the 12-word passage counts too (the threshold is the n-gram length).
    r = subprocess.run([sys.executable, "-m", "mellama_jax.cli.decontaminate", "--sources_spec",
                        f"train=jsonl:{corpus}", "--benchmarks", str(bench), "--n", "12", "--tasks", "pubmedqa",
                        "--out", str(tmp_path / "out12")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((tmp_path / "out12" / "decontamination.json").read_text())["sources"]["train"]["contaminated"] == 2

    # Training with the exclude list: the flagged documents are not in the token store.
    c = demo_data_config()
    c.data_dir, c.reader, c.seq_len = str(tmp_path / "data"), "direct", 16
    c.sources_spec = f"train=jsonl:{corpus}"
    p = build_train_pipeline(c, global_batch_size=2, process_index=0, process_count=1)
    c.sources_spec = ""
    from mellama_jax.data.config import apply_sources_spec
    apply_sources_spec(c, f"train=jsonl:{corpus}")
    c.sources.train.eval_fraction = 0.0
    c.sources.train.exclude_ids = str(out / "exclude" / "train.txt")
    q = build_train_pipeline(c, global_batch_size=2, process_index=0, process_count=1)
    total = lambda pipe: pipe.stats()["data/train/train_docs"] + pipe._docs["train"]["eval"].num_docs
    assert total(p) == n_docs and total(q) == n_docs - 2
    assert q.reports()["train"].dropped == {"excluded_id": 2}


def test_ngram_hashes_ignore_case_whitespace_punctuation():
    h = _WordHasher()
    a = ngram_hashes(h(normalized_words("The  quick, brown FOX jumps.")), 3)
    b = ngram_hashes(h(normalized_words("the quick brown\nfox jumps")), 3)
    assert np.array_equal(a, b) and len(a) == 3
    assert len(ngram_hashes(h(normalized_words("two words")), 3)) == 0
    assert not np.array_equal(a, ngram_hashes(h(normalized_words("the quick brown fox leaps")), 3))


def test_instruction_tuning_sources_of_configs_sft(tmp_path):
    """--sources configs/sft.py: instruction records (alpaca / chat messages) are checked on all messages."""
    bench = tmp_path / "bench"
    bench.mkdir()
    _write_benchmarks(bench)
    recs = tmp_path / "qa.jsonl"
    recs.write_text(json.dumps({"id": "a1", "instruction": "Answer.", "input": MEDQA_QUESTION.lower(),
                                "output": "CRAO."}) + "\n"
                    + json.dumps({"messages": [{"role": "user", "content": "Hello there."},
                                               {"role": "assistant", "content": "Hi."}]}) + "\n")
    r = subprocess.run([sys.executable, "-m", "mellama_jax.cli.decontaminate", "--sources",
                        os.path.join(ROOT, "configs", "sft.py") + ":tiny", "--sources_spec", f"qa={recs}",
                        "--benchmarks", str(bench), "--tasks", "medqa,pubmedqa", "--out", str(tmp_path / "out")],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads((tmp_path / "out" / "decontamination.json").read_text())
    assert report["sources"] == {"qa": {"documents": 2, "contaminated": 1, "bad": {}, "bad_records": 0,
                                        "truncated": []}}
    assert report["benchmarks"]["medqa"]["touched_example_indices"] == [2]
