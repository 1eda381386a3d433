"""The benchmark registry: task name -> family, loader, default file names, Me-LLaMA parse rule and
data card (tasks/cards.py)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from mellama_jax import fs
from mellama_jax.eval.tasks.classification import load_hoc, load_mtsamples
from mellama_jax.eval.tasks.cards import CARDS, DataCard
from mellama_jax.eval.tasks.common import Example, FormatError, LoadReport, sha256_file
from mellama_jax.eval.tasks.diagnosis import load_cases
from mellama_jax.eval.tasks.ner import load_i2b2, load_ner
from mellama_jax.eval.tasks.nli import load_bionli, load_mednli
from mellama_jax.eval.tasks.qa import load_emrqa, load_medmcqa, load_medqa, load_pubmedqa
from mellama_jax.eval.tasks.relation import load_ddi
from mellama_jax.eval.tasks.summarization import load_mimic_cxr, load_pubmed_sum

__all__ = ["TaskSpec", "TASKS", "get_task", "resolve_path", "Example", "FormatError", "LoadReport", "sha256_file",
           "CARDS", "DataCard", "NER_TYPES", "LOADER_DEFAULTS"]

# family -> how the runner scores it
CHOICE, MULTILABEL, EXTRACTIVE, NER, SUMMARIZATION, DIAGNOSIS = (
    "choice", "multilabel", "extractive_qa", "ner", "summarization", "diagnosis")


@dataclass(frozen=True)
class TaskSpec:
    """What the runner needs to know about one benchmark.

    lower_case / unique_choice reproduce Me-LLaMA's per-task parse flags (its harness lower-cases
    generation and choices for most classification tasks but not for MedQA/MedMCQA, and for DDI
    accepts a prediction only when exactly one label string occurs in the generation).
    """

    name: str
    display: str
    family: str
    load: Callable[..., list[Example]]
    file_stems: tuple[str, ...]
    exts: tuple[str, ...]
    lower_case: bool = True
    unique_choice: bool = False
    headline: str = ""  # the metric results.md shows first

    @property
    def card(self) -> DataCard:
        return CARDS[self.name]


def _single_type(etype: str):
    """Loader of a single-type biomedical NER corpus (bare B/I tags are `etype`)."""
    return lambda path, report=None: load_ner(path, (etype,), report, bare_type=etype)


# The entity types each NER task scores (i2b2's come from config.ner_types).
NER_TYPES = {"bc5cdr_chem": ("chemical",), "bc5cdr_disease": ("disease",), "ncbi_disease": ("disease",)}
_TABLE_EXTS = ("parquet", "jsonl", "json", "tsv", "csv")


TASKS: dict[str, TaskSpec] = {t.name: t for t in [
    TaskSpec("pubmedqa", "PubMedQA", CHOICE, load_pubmedqa, ("pubmedqa",), ("tsv", "json", "parquet", "jsonl"),
             headline="accuracy"),
    TaskSpec("medqa", "MedQA", CHOICE, load_medqa, ("medqa", "medqa_usmle"), ("jsonl", "parquet", "json"),
             lower_case=False, headline="accuracy"),
    TaskSpec("medmcqa", "MedMCQA", CHOICE, load_medmcqa, ("medmcqa",), ("jsonl", "json", "parquet"),
             lower_case=False, headline="accuracy"),
    TaskSpec("emrqa", "EmrQA", EXTRACTIVE, load_emrqa, ("emrqa",), ("json", "jsonl", "parquet"), headline="f1"),
    TaskSpec("i2b2", "i2b2 2012", NER, load_i2b2, ("i2b2", "i2b2_2012"), ("bio", "tsv", "txt", "xml", ""),
             headline="f1"),
    TaskSpec("bc5cdr_chem", "BC5CDR-chem", NER, _single_type("chemical"), ("bc5cdr_chem", "BC5CDR-chem"),
             ("tsv", "bio", "txt", "conll", "parquet", "jsonl"), headline="f1"),
    TaskSpec("bc5cdr_disease", "BC5CDR-disease", NER, _single_type("disease"), ("bc5cdr_disease", "BC5CDR-disease"),
             ("tsv", "bio", "txt", "conll", "parquet", "jsonl"), headline="f1"),
    TaskSpec("ncbi_disease", "NCBI-disease", NER, _single_type("disease"), ("ncbi_disease", "NCBI-disease"),
             ("tsv", "bio", "txt", "conll", "parquet", "jsonl"), headline="f1"),
    TaskSpec("ddi", "DDI 2013", CHOICE, load_ddi, ("ddi", "ddi2013"), ("tsv", "xml", "parquet", "jsonl", ""),
             lower_case=False, unique_choice=True, headline="macro_f1"),
    TaskSpec("hoc", "HoC", MULTILABEL, load_hoc, ("hoc",), ("tsv", "parquet", "jsonl"), lower_case=False,
             headline="macro_f1"),
    TaskSpec("mtsamples", "MTSamples", CHOICE, load_mtsamples, ("mtsamples",), ("csv", "parquet", "jsonl"),
             headline="macro_f1"),
    TaskSpec("pubmedsum", "PubMed", SUMMARIZATION, load_pubmed_sum, ("pubmedsum", "pubmed_summarization"),
             ("jsonl", "parquet"), headline="rougeL"),
    TaskSpec("mimiccxr", "MIMIC-CXR", SUMMARIZATION, load_mimic_cxr, ("mimiccxr", "mimic_cxr"),
             ("jsonl", "parquet"), headline="rougeL"),
    TaskSpec("bionli", "BioNLI", CHOICE, load_bionli, ("bionli",), ("jsonl", "parquet"), headline="macro_f1"),
    TaskSpec("mednli", "MedNLI", CHOICE, load_mednli, ("mednli",), ("jsonl", "parquet"), headline="macro_f1"),
    TaskSpec("diagnosis", "Clinical cases", DIAGNOSIS, load_cases, ("diagnosis", "clinical_cases"),
             ("jsonl", "parquet"), headline="top1"),
]}


# The settings the loaders read from an eval config, with their defaults: configs/eval.py starts from
# these, and a command that reads benchmark files outside an evaluation (decontaminate) uses them.
LOADER_DEFAULTS = {
    "max_bad_fraction": 0.01,  # share of bad records above which a task file is refused
    "medmcqa_cop_base": "auto",  # auto | 0 | 1
    "ner_types": "problem,treatment,test",  # i2b2 entity types scored
}


def get_task(name: str) -> TaskSpec:
    if name not in TASKS:
        raise ValueError(f"config.tasks: unknown task {name!r}; known: {sorted(TASKS)}")
    return TASKS[name]


def resolve_path(spec: TaskSpec, data_dir: str | None, override: str | None, split: str = "test") -> str:
    """The data file (or directory) for a task: an explicit override, else the first of
    <data_dir>/<stem>[_<split>].<ext> or <data_dir>/<stem>/<split>.<ext> that exists."""
    if override:
        if not fs.exists(override):
            raise FileNotFoundError(f"{spec.name}: data path {override!r} does not exist")
        return override
    if not data_dir:
        raise ValueError(f"{spec.name}: set config.data_dir or config.task_paths.{spec.name}")
    tried = []
    for stem in spec.file_stems:
        for ext in spec.exts:
            suffix = f".{ext}" if ext else ""
            names = ([f"{stem}/{split}{suffix}", f"{stem}_{split}{suffix}"]
                     + ([f"{stem}{suffix}"] if split == "test" else []))
            if ext:
                names += [n + ".gz" for n in names]
            for name in names:
                p = fs.join(data_dir, name)
                tried.append(p)
                if fs.isfile(p) or (not ext and fs.isdir(p)):
                    return p
    raise FileNotFoundError(f"{spec.name}: no {split} data under {data_dir!r}; tried {tried[:6]}... "
                            f"(or set config.task_paths.{spec.name})")
