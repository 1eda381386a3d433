"""Data cards: for every task, which distributions and columns its loader reads, the label set, and
the size of the official test split (results.json warns when a file holds a different count, which
usually means a partial download or another split). A size of None means there is no single
official test file to compare against (access-controlled corpora, or splits that vary by release);
the card says why."""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DataCard", "CARDS", "size_warning"]

_RELEASE = "Me-LLaMA's evaluation set (HF clinicalnlplab/<task>_test: id, query, answer, choices, gold)"


@dataclass(frozen=True)
class DataCard:
    files: tuple[str, ...]  # the distributions read, with their columns
    labels: str  # the label set (or what the reference is)
    test_size: int | None  # size of the official test split, in test_unit
    test_unit: str = "examples"  # "examples" or "entity mentions" (NER: counted from the gold BIO tags)
    size_note: str = ""  # where the size comes from, or why there is none


CARDS: dict[str, DataCard] = {
    "pubmedqa": DataCard(
        ("TSV (BLURB/BigBio-style export; pandas-quoted or raw): QUESTION, CONTEXTS (Python list literal), "
         "final_decision, pmid", "ori_pqal.json: {PMID: {QUESTION, CONTEXTS[], final_decision}}",
         "HF parquet/JSONL: pubid, question, context{contexts}, final_decision; BigBio QA: question, context, answer[]",
         _RELEASE),
        "yes / no / maybe", 500, size_note="PQA-L test split (500 of the 1,000 expert-labelled questions)"),
    "medqa": DataCard(
        ("JSONL (original release, US 4- or 5-option): question, options {A..}, answer_idx, answer",
         "HF/BigBio parquet/JSONL: question, options [{key, value}], answer_idx", _RELEASE + " (gold = option letter)"),
        "the example's options (text), or option letters with prompt set mellama-release", 1273,
        size_note="US (USMLE) test split"),
    "medmcqa": DataCard(
        ("JSONL (original release, cop 1-4)", "HF openlifescienceai/medmcqa parquet/JSONL (cop 0-3): id, question, "
         "opa, opb, opc, opd, cop, subject_name", _RELEASE + " (gold = option letter)"),
        "four options (text), or letters A-D with prompt set mellama-release", 4183,
        size_note="the validation split, which is what is evaluated: the public test split has no answers"),
    "emrqa": DataCard(
        ("SQuAD JSON: data[].paragraphs[].{context, qas[].{id, question, answers[].text}}",
         "flat JSONL/parquet: context, question, answers (list, or SQuAD's {text: [...]})", _RELEASE),
        "answer spans (free text)", None, size_note="n2c2 data-use agreement; test sets are built per subset"),
    "i2b2": DataCard(
        ("i2b2 2012 XML (TEXT + TAGS/EVENT start/end/type), a directory of them",
         "BIO text with typed tags (token TAB B-problem ...)", "HF parquet/JSONL: tokens, ner_tags (strings or ClassLabel)"),
        "problem, treatment, test (config.ner_types)", None, "entity mentions",
        size_note="n2c2 data-use agreement; no redistributable test file to compare against"),
    "bc5cdr_chem": DataCard(
        ("BIO text, BLURB/MTL-Bioinformatics-2016 BC5CDR-chem (token TAB B/I/O; bare tags are chemicals; typed "
         "B-Chemical/B-Disease files keep only chemicals)", "HF parquet: tokens, ner_tags (ClassLabel names)"),
        "chemical", 5385, "entity mentions", size_note="BLURB BC5-chem test mentions"),
    "bc5cdr_disease": DataCard(
        ("BIO text, BLURB BC5CDR-disease (bare tags are diseases; typed files keep only diseases)",
         "HF parquet: tokens, ner_tags (ClassLabel names)"),
        "disease", 4424, "entity mentions", size_note="BLURB BC5-disease test mentions"),
    "ncbi_disease": DataCard(
        ("BIO text, BLURB NCBI-disease (bare B/I tags are diseases)", "HF ncbi_disease parquet: tokens, ner_tags "
         "(ClassLabel O/B-Disease/I-Disease)"),
        "disease", 960, "entity mentions", size_note="BLURB NCBI-disease test mentions"),
    "ddi": DataCard(
        ("TSV (BLUE/BLURB): index, sentence (pair masked as @DRUG$, or one @DRUG-DRUG$ mention), label; headed or "
         "headerless", "DDI 2013 corpus XML (sentence/entity/pair), a directory of them", "HF parquet/JSONL: "
         "sentence, label", _RELEASE),
        "DDI-false, DDI-effect, DDI-mechanism, DDI-advise, DDI-int", 5761, size_note="BLUE DDI 2013 test pairs"),
    "hoc": DataCard(
        ("TSV: pmid, text, labels (';'-separated hallmark names, may be empty); pandas-quoted or raw",
         "HF/BigBio parquet/JSONL: document_id/id, text, labels (list)", _RELEASE),
        "the ten hallmarks of cancer (multi-label)", None,
        size_note="abstract-level test sets differ between the BLUE/BLURB and Me-LLaMA releases"),
    "mtsamples": DataCard(
        ("CSV (Kaggle mtsamples.csv: unnamed index column, description, medical_specialty, sample_name, "
         "transcription, keywords; headerless in that order also read)", "HF parquet/JSONL with those columns",
         _RELEASE),
        "the specialties present in the file (mellama-release: the release's 40)", None,
        size_note="MTSamples has no official split"),
    "pubmedsum": DataCard(
        ("JSONL/parquet: article, abstract (Cohan et al.; HF ccdv/pubmed-summarization)", "src, tgt",
         "Me-LLaMA's set: query, answer, text, id"),
        "reference abstract (free text)", 6658, size_note="Cohan et al. 2018 PubMed test split"),
    "mimiccxr": DataCard(
        ("JSONL/parquet: findings, impression (strings or sentence lists)[, study_id]", _RELEASE),
        "reference impression (free text)", None, size_note="PhysioNet credentialed access; splits vary by release"),
    "bionli": DataCard(
        ("JSONL/parquet/TSV: premise, hypothesis, label (entailment/contradiction, 1/0 or pos/neg)",),
        "entailment / contradiction", None, size_note="test set distributed on request"),
    "mednli": DataCard(
        ("JSONL (original release): sentence1, sentence2, gold_label, pairID", "BigBio TE: premise, hypothesis, label",
         _RELEASE),
        "entailment / contradiction / neutral", 1422, size_note="MedNLI test split"),
    "diagnosis": DataCard(
        ("JSONL/JSON/parquet: case, diagnosis[, synonyms (list or ';'-string)][, id]",),
        "a gold diagnosis and synonyms", None, size_note="a local case collection"),
}


def count_units(card: DataCard, examples) -> int:
    if card.test_unit == "entity mentions":
        return sum(t.startswith("B-") for ex in examples for t in ex.reference)
    return len(examples)


def size_warning(task: str, examples) -> dict:
    """{"official_test_size", "unit", "count", "warning"?} for results.json."""
    card = CARDS[task]
    n = count_units(card, examples)
    out = {"official_test_size": card.test_size, "unit": card.test_unit, "count": n, "size_note": card.size_note}
    if card.test_size is not None and n != card.test_size:
        out["warning"] = (f"the file holds {n} {card.test_unit}, the official {task} test split has "
                          f"{card.test_size}: a partial file or another split; scores are not comparable "
                          "with published ones")
    return out
