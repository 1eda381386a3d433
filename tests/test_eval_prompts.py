"""Prompt sets: `mellama-release` reproduces, byte for byte, the prompts Me-LLaMA released for every
task its release covers (built here as the release builds them: its `prompt` text filled by its
`fetch_data`), answers MedQA/MedMCQA with option letters as the release scores them, reads the
release's own query/answer/choices/gold test sets back (round trip), and a chat template applies on
top of any set."""
from __future__ import annotations

import ast
import json

import pytest

import eval_fixtures as F
from mellama_jax.eval import prompts
from mellama_jax.eval.tasks import TASKS

# The `prompt` strings of BIDS-Xu-Lab/Me-LLaMA src/preprocess_instruct.py (commit 08c893f), copied
# verbatim, with the release's own placeholders ({text}, {context}, {question}, {options}).
RELEASED = {
    'PubmedQA': (
        'As an expert doctor in clinical science and medical knowledge, can you tell me if the fo'
        'llowing statement is correct? Answer yes, no, or maybe.\n{context}\n{text}\nThe answer is:\n'
    ),
    'MedQA': (
        'You are a medical doctor taking the US Medical Licensing Examination. You need to demons'
        'trate your understanding of basic and clinical science, medical knowledge, and mechanism'
        's underlying health, disease, patient care, and modes of therapy. Show your ability to a'
        'pply the knowledge essential for medical practice. For the following multiple-choice que'
        'stion, select one correct answer from A to E. Base your answer on the current and standa'
        'rd practices referenced in medical guidelines.\nQuestion: {text}\n\nOptions:\n{options}\n\nThe'
        ' answer is\n'
    ),
    'MedMCQA': (
        'You are a medical doctor answering realworld medical entrance exam questions. Based on y'
        'our understanding of basic and clinical science, medical knowledge, and mechanisms under'
        'lying health, disease, patient care, and modes of therapy, answer the following multiple'
        '-choice question. Select one correct answer from A to D. Base your answer on the current'
        ' and standard practices referenced in medical guidelines.\nQuestion: {text}\n\nOptions:\n{op'
        'tions}\n\nThe answer is\n'
    ),
    'EmrQA': (
        '\nTASK: Given a medical context and an open-ended question related to it, extract the rel'
        'evant text segment from the context as an answer. Expected output: Only extract and retu'
        'rn the text segment from the provided context that directly answers the question. Do not'
        ' add any new words.\n###\nContext: {text}\nQuestion {question}\nAnswer:\n'
    ),
    'MedNLI': (
        '\nTASK: Please classify the relationship between the given premise and hypothesis into on'
        'e of the following labels: entailment, contradiction, or neutral. Return only the label.'
        '\n###\nINPUT: {text}\nOUTPUT:\n'
    ),
    'MTSample': (
        '\nTASK: The task is to determine the medical specialty or domain that a medical transcrip'
        'tion belongs to. The input is a medical transcription. There are 40 medical specialties '
        'or domains and you need to decide which one is the transcription related to. The medical'
        " specialties or domains are: 'Surgery', 'Allergy / Immunology', 'Sleep Medicine', 'Pedia"
        "trics - Neonatal', 'SOAP / Chart / Progress Notes', 'Bariatrics', 'Pain Management', 'La"
        "b Medicine - Pathology', 'Dermatology', 'Orthopedic', 'Dentistry', 'Psychiatry / Psychol"
        "ogy', 'General Medicine', 'Office Notes', 'Letters', 'Neurosurgery', 'Radiology', 'Cosme"
        "tic / Plastic Surgery', 'Nephrology', 'Diets and Nutritions', 'Chiropractic', 'Gastroent"
        "erology', 'Cardiovascular / Pulmonary', 'Speech - Language', 'Hospice - Palliative Care'"
        ", 'Autopsy', 'Endocrinology', 'Emergency Room Reports', 'Discharge Summary', 'ENT - Otol"
        "aryngology', 'Urology', 'Physical Medicine - Rehab', 'Neurology', 'Podiatry', 'Ophthalmo"
        "logy', 'Rheumatology', 'IME-QME-Work Comp etc.', 'Hematology - Oncology', 'Consult - His"
        "tory and Phy.', 'Obstetrics / Gynecology'. The output should be only one medical special"
        'ty or domain from the above 40 specialties or domains, that is most relevant to the medi'
        'cal transcription. Please note that each medical transcript can only be related to one m'
        'edical specialty or domain. Output format: provide the name of the medical specialty or '
        'domain.\n###\nINPUT: {text}\nOUTPUT:\n'
    ),
    'DDI2013': (
        'TASK: The input is a sentence where the drug is labeled as @DRUG$. Extract the relations'
        'hip between 2 @DRUG$ from the input sentence by selecting only one of the following opti'
        "ons: 'DDI-effect', 'DDI-mechanism', 'DDI-advise', 'DDI-false', and 'DDI-int'.\nDDI-effect"
        ', this type is used to annotate DDIs describing an effect or a pharmacodynamic mechanism'
        '\nDDI-mechanism, this type is used to annotate DDIs that are described by their pharmacok'
        'inetic mechanism\nDDI-advise, this type is used when a recommendation or advice regarding'
        ' a drug interaction is given\nDDI-false, this type is used when no DDI relation appears\nD'
        'DI-int, this type is used when a DDI appears in the text without providing any additiona'
        'l information\n###\nINPUT: {text}\nOUTPUT:\n'
    ),
    'HoC': (
        'The task is to decide the Hallmarks of Cancer (HOC) taxonomy of the article based on its'
        ' abstract. The input is an abstract text. There are 10 topics you will need to decide wh'
        'ether the article is related to. Topics: sustaining proliferative signaling, evading gro'
        'wth suppressors, resisting cell death, enabling replicative immortality, inducing angiog'
        'enesis, activating invasion and metastasis, genomic instability and mutation, tumor prom'
        'oting inflammation, cellular energetics, avoiding immune destruction. The output should '
        'be topics from the above 10 topics, that are related to the input article. Please note o'
        'ne article can be related to multiple topics. Output format: provide a semicolon-separat'
        'ed list of relevant topics.\n    ###\n    INPUT: {text}\n    OUTPUT:\n'
    ),
    'MIMIC_SUM': (
        'Derive the impression from findings in the radiology report.\n    INPUT: {text}\n    OUTPU'
        'T:\n    '
    ),
}
MTSAMPLE_CHOICES = (
    'Surgery',
    'Allergy / Immunology',
    'Sleep Medicine',
    'Pediatrics - Neonatal',
    'SOAP / Chart / Progress Notes',
    'Bariatrics',
    'Pain Management',
    'Lab Medicine - Pathology',
    'Dermatology',
    'Orthopedic',
    'Dentistry',
    'Psychiatry / Psychology',
    'General Medicine',
    'Office Notes',
    'Letters',
    'Neurosurgery',
    'Radiology',
    'Cosmetic / Plastic Surgery',
    'Nephrology',
    'Diets and Nutritions',
    'Chiropractic',
    'Gastroenterology',
    'Cardiovascular / Pulmonary',
    'Speech - Language',
    'Hospice - Palliative Care',
    'Autopsy',
    'Endocrinology',
    'Emergency Room Reports',
    'Discharge Summary',
    'ENT - Otolaryngology',
    'Urology',
    'Physical Medicine - Rehab',
    'Neurology',
    'Podiatry',
    'Ophthalmology',
    'Rheumatology',
    'IME-QME-Work Comp etc.',
    'Hematology - Oncology',
    'Consult - History and Phy.',
    'Obstetrics / Gynecology',
)

# task -> (release class, a record in the task's usual public format, the release's fetch_data for it)
MEDQA_REC = {"question": "A 40-year-old man has chest pain, which drug is first line", "answer": "Aspirin",
             "options": {"A": "Aspirin", "B": "Heparin", "C": "Warfarin", "D": "Statin", "E": "None"},
             "answer_idx": "A", "meta_info": "step1"}
MEDMCQA_REC = {"id": "m0", "question": "Which nerve supplies the deltoid?", "opa": "ulnar", "opb": "radial",
               "opc": "median", "opd": "axillary", "cop": 3, "choice_type": "single", "subject_name": "Anatomy"}
CASES = {
    "pubmedqa": ("PubmedQA", lambda d: {"context": "\n".join(ast.literal_eval(d["CONTEXTS"])), "text": d["QUESTION"]}),
    "medqa": ("MedQA", lambda d: {"text": d["question"] + ("" if d["question"][-1] in "?." else "?"),
                                  "options": "\n".join(f"{k}. {v}" for k, v in d["options"].items())}),
    "medmcqa": ("MedMCQA", lambda d: {"text": d["question"], "options": "\n".join(
        [f"A. {d['opa']}", f"B. {d['opb']}", f"C. {d['opc']}", f"D. {d['opd']}"])}),
    "emrqa": ("EmrQA", lambda d: {"text": d["context"], "question": d["question"]}),
    "mednli": ("MedNLI", lambda d: {"text": "[PRE] " + d["sentence1"] + " [HYP] " + d["sentence2"]}),
    "mtsamples": ("MTSample", lambda d: {"text": d["transcription"]}),
    "ddi": ("DDI2013", lambda d: {"text": d["sentence"]}),
    "hoc": ("HoC", lambda d: {"text": d["text"]}),
    "mimiccxr": ("MIMIC_SUM", lambda d: {"text": " ".join(d["findings"])}),
}


def _records(task, tmp_path):
    """(release-format datum, our example) pairs from a fixture in the task's usual public format."""
    import csv

    if task == "pubmedqa":
        F.write_pubmedqa_tsv(tmp_path / "p.tsv")
        rows = list(csv.DictReader(open(tmp_path / "p.tsv"), delimiter="\t"))
        return rows, TASKS[task].load(str(tmp_path / "p.tsv"))
    if task in ("medqa", "medmcqa"):
        rec = MEDQA_REC if task == "medqa" else MEDMCQA_REC
        (tmp_path / "m.jsonl").write_text(json.dumps(rec) + "\n")
        if task == "medmcqa":  # one file: cop 3 is ambiguous about its base; the HF hub's is 0-based
            return [rec], TASKS[task].load(str(tmp_path / "m.jsonl"), cop_base="0")
        return [rec], TASKS[task].load(str(tmp_path / "m.jsonl"))
    if task == "emrqa":
        rec = {"id": "q0", "context": "Aspirin 81 mg was started.", "question": "What was started?",
               "answers": [{"text": "Aspirin 81 mg", "answer_start": 0}]}
        (tmp_path / "e.jsonl").write_text(json.dumps(rec) + "\n")
        return [rec], TASKS[task].load(str(tmp_path / "e.jsonl"))
    if task == "mednli":
        F.write_mednli(tmp_path / "m.jsonl")
        return [json.loads(x) for x in open(tmp_path / "m.jsonl")], TASKS[task].load(str(tmp_path / "m.jsonl"))
    if task == "mtsamples":
        F.write_mtsamples(tmp_path / "m.csv")
        rows = [r for r in csv.DictReader(open(tmp_path / "m.csv", newline="")) if r["transcription"].strip()]
        for r in rows:
            r["transcription"] = r["transcription"].strip()
        return rows, TASKS[task].load(str(tmp_path / "m.csv"))
    if task == "ddi":
        F.write_ddi_tsv(tmp_path / "d.tsv")
        return list(csv.DictReader(open(tmp_path / "d.tsv"), delimiter="\t")), TASKS[task].load(str(tmp_path / "d.tsv"))
    if task == "hoc":
        F.write_hoc(tmp_path / "h.tsv")
        return list(csv.DictReader(open(tmp_path / "h.tsv"), delimiter="\t")), TASKS[task].load(str(tmp_path / "h.tsv"))
    if task == "mimiccxr":
        rec = {"id": "s0", "findings": ["No focal consolidation.", "Heart size normal."], "impression": ["No acute process."]}
        (tmp_path / "m.jsonl").write_text(json.dumps(rec) + "\n")
        return [rec], TASKS[task].load(str(tmp_path / "m.jsonl"))
    raise AssertionError(task)


@pytest.mark.parametrize("task", sorted(CASES))
def test_release_set_reproduces_the_released_prompt(task, tmp_path):
    cls, fetch = CASES[task]
    template = prompts.get_template(task, "mellama-release")
    assert template.set_name == "mellama-release" and cls in template.source
    data, examples = _records(task, tmp_path)
    assert len(data) == len(examples) > 0
    for datum, ex in zip(data, examples):
        assert prompts.render(template, ex) == RELEASED[cls].format(**fetch(datum))


def test_release_set_covers_exactly_the_released_tasks_and_falls_back_for_the_others():
    rel = prompts.load_prompt_set("mellama-release")
    assert set(rel.tasks) == set(CASES) | {"pubmedsum"}
    for task in set(TASKS) - set(rel.tasks):  # i2b2, bionli, diagnosis, bc5cdr_*, ncbi_disease
        assert rel.get(task).set_name == "mellama-v1"
    assert rel.get("hoc-yesno").set_name == "mellama-v1"
    assert rel.tasks["mtsamples"].choices == tuple(MTSAMPLE_CHOICES)
    assert prompts.default_set("generate") == "mellama-release" and prompts.default_set("loglik") == "mellama-v1"
    with pytest.raises(ValueError, match="known"):
        prompts.load_prompt_set("no-such-set")


def test_release_scores_option_letters(tmp_path):
    (tmp_path / "m.jsonl").write_text(json.dumps(MEDQA_REC) + "\n")
    ex = TASKS["medqa"].load(str(tmp_path / "m.jsonl"))
    assert ex[0].reference == "Aspirin" and ex[0].choices[0] == "Aspirin"  # text under mellama-v1
    (lettered,) = prompts.answer_view(prompts.get_template("medqa", "mellama-release"), ex)
    assert lettered.choices == ("A", "B", "C", "D", "E") and lettered.reference == "A"
    assert lettered.meta["option_texts"][0] == "Aspirin"
    assert prompts.answer_view(prompts.get_template("medqa", "mellama-v1"), ex) == ex
    # a gold label outside a set's fixed choice list is an error, not a silent miss
    bad = [ex[0].__class__(id="x", inputs={"text": "t"}, reference="Veterinary", choices=("Veterinary",))]
    with pytest.raises(ValueError, match="Veterinary"):
        prompts.answer_view(prompts.get_template("mtsamples", "mellama-release"), bad)


def _release_rows(task, examples, data):
    """Rows of Me-LLaMA's own test set for the task, as its build_*_instruction writes them."""
    cls, fetch = CASES[task]
    t = prompts.get_template(task, "mellama-release")
    rows = []
    for i, (datum, ex) in enumerate(zip(data, examples)):
        query = RELEASED[cls].format(**fetch(datum))
        if task in ("medqa", "medmcqa"):
            (v,) = prompts.answer_view(t, [ex])
            choices = list("ABCDE" if task == "medqa" else "ABCD")
            rows.append({"id": f"{cls}{i}", "query": query, "answer": v.reference, "choices": choices,
                         "gold": choices.index(v.reference)})
        elif task == "hoc":
            rows.append({"id": f"{cls}{i}", "query": query, "answer": ";".join(ex.reference),
                         "choices": list(ex.choices), "gold": [int(c in ex.reference) for c in ex.choices]})
        elif task in ("emrqa", "mimiccxr"):
            ref = ex.reference[0] if task == "emrqa" else ex.reference
            rows.append({"id": f"{cls}{i}", "query": query, "answer": ref})
        else:
            choices = list(t.choices or ex.choices)
            rows.append({"id": f"{cls}{i}", "query": query, "answer": ex.reference, "choices": choices,
                         "gold": choices.index(ex.reference)})
    return rows


@pytest.mark.parametrize("task", sorted(CASES))
@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_mellama_release_test_sets_round_trip(task, fmt, tmp_path):
    """Me-LLaMA's query/answer/choices/gold sets load (fields recovered from the query), and the
    release prompt set gives every query back byte for byte, with the same gold."""
    data, examples = _records(task, tmp_path)
    rows = _release_rows(task, examples, data)
    path = tmp_path / f"release.{fmt}"
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    kw = {"cop_base": "0"} if task == "medmcqa" else {}
    loaded = TASKS[task].load(str(path), **kw)
    t = prompts.get_template(task, "mellama-release")
    assert [prompts.render(t, ex) for ex in loaded] == [r["query"] for r in rows]
    assert [ex.reference for ex in loaded] == [ex.reference for ex in examples]
    bad = dict(rows[0], query="something else entirely")
    (tmp_path / "bad.jsonl").write_text(json.dumps(bad) + "\n")
    with pytest.raises(Exception, match="released"):
        TASKS[task].load(str(tmp_path / "bad.jsonl"), **kw)


def test_chat_template_applies_on_top_of_any_prompt_set(tmp_path):
    from configs.eval import get_config
    from mellama_jax.eval.runner import prepare_task
    from mellama_jax.eval.tasks import get_task
    from mellama_jax.tokenizer import chat_templates as chat

    paths = F.write_all(str(tmp_path))
    for set_name in ("mellama-release", "mellama-v1"):
        c = get_config()
        c.data_dir, c.prompt_set = str(tmp_path), set_name
        plain = prepare_task(get_task("pubmedqa"), c)
        c.chat_template = "mellama"
        wrapped = prepare_task(get_task("pubmedqa"), c)
        assert wrapped.texts == [chat.apply_chat_template("mellama", [{"role": "user", "content": x}],
                                                          add_generation_prompt=True) for x in plain.texts]
        assert all(p in w and p != w for p, w in zip(plain.texts, wrapped.texts))
    assert paths
