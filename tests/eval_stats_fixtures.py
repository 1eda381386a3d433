"""Synthetic evaluation directories for the interval and comparison tests: prediction records of every
task family (planted, no model) written as the runner writes them (results.json with metrics,
protocol keys and intervals; predictions/<task>.jsonl). Helpers only (no tests here)."""
from __future__ import annotations

import copy
import json
import os
import random

from mellama_jax.eval import stats
from mellama_jax.eval.tasks import get_task
from mellama_jax.eval.tasks.classification import HOC_CHOICES

TAGS = ("O", "O", "O", "B-problem", "I-problem", "B-test", "I-test", "B-treatment")
DIAGNOSES = ("sepsis", "pneumonia", "myocardial infarction", "heart failure")


def records(family: str, n: int, seed: int, skill: float = 0.6) -> tuple[list[dict], list[str]]:
    """(records, shared choices) of a task family: references fixed by n, predictions right with
    probability `skill` (seeded)."""
    ref_rng, rng = random.Random(1000 + n), random.Random(seed)
    out, choices = [], []
    for i in range(n):
        right = rng.random() < skill
        if family == "choice":
            choices = ["yes", "no", "maybe"]
            gold = ref_rng.choice(choices[:2] if i % 5 else choices)
            pred = gold if right else rng.choice(choices + ["missing"])
        elif family == "multilabel":
            choices = list(HOC_CHOICES)
            gold = [c for c in HOC_CHOICES if ref_rng.random() < 0.25]
            pred = list(gold) if right else [c for c in HOC_CHOICES if rng.random() < 0.25]
        elif family == "extractive_qa":
            gold = [f"aspirin {i} mg", f"{i} mg"]
            pred = gold[0] if right else rng.choice([f"aspirin {i}", "warfarin", f"the {i} mg dose", ""])
        elif family == "ner":
            length = 3 + ref_rng.randrange(6)
            gold = _valid([ref_rng.choice(TAGS) for _ in range(length)])
            pred = list(gold) if right else _valid([rng.choice(TAGS) for _ in range(length)])
        elif family == "summarization":
            gold = f"fever {i} treated with aspirin ."
            pred = gold if right else rng.choice([f"fever {i} .", "no acute process .", f"aspirin given {i}"])
        elif family == "diagnosis":
            g = DIAGNOSES[i % len(DIAGNOSES)]
            gold = {"diagnosis": g, "synonyms": ["MI"] if g == "myocardial infarction" else []}
            others = [d for d in DIAGNOSES if d != g]
            rng.shuffle(others)
            pred = ([g] + others) if right else (others + ([g] if rng.random() < 0.5 else []))
        else:
            raise ValueError(family)
        out.append({"id": f"ex{i}", "prompt": f"prompt {i}", "generation": str(pred), "prediction": pred,
                    "reference": gold})
    if family == "summarization":
        stats.add_rouge_scores(out)
        for r in out:  # a stand-in for BERTScore, which needs an encoder
            r["scores"]["bertscore_f1"] = 0.5 + 0.5 * r["scores"]["rougeL"] - 0.01 * rng.random()
    return out, choices


def _valid(tags: list[str]) -> list[str]:
    """I- tags only after a B-/I- of the same type (seqeval would read a stray I- as a new entity)."""
    out = []
    for t in tags:
        if t.startswith("I-") and not (out and out[-1][2:] == t[2:] and out[-1] != "O"):
            t = "O"
        out.append(t)
    return out


FAMILY_TASK = {"choice": "pubmedqa", "multilabel": "hoc", "extractive_qa": "emrqa", "ner": "i2b2",
               "summarization": "pubmedsum", "diagnosis": "diagnosis"}


def task_entry(task: str, family: str, recs: list[dict], choices: list[str], iterations: int = 200,
               seed: int = 0) -> dict:
    """A results.json task entry with the keys the comparison checks."""
    from mellama_jax.eval.runner import metrics_from_records

    spec = get_task(task)
    metrics = metrics_from_records(spec, recs, choices)
    if family == "summarization":
        metrics["bertscore_f1"] = sum(r["scores"]["bertscore_f1"] for r in recs) / len(recs)
    return {"task": task, "display_name": spec.display, "family": family, "metrics": metrics,
            "num_examples": len(recs), "num_examples_in_file": len(recs), "protocol": "generate",
            "prompt_set": "mellama-release", "prompt_template_id": f"mellama-release/{task}",
            "prompt_template": "Question: {question}\nAnswer:", "prompt_demo_format": "", "answer_format": "text",
            "parse_rule": {}, "choices": choices, "headline_metric": spec.headline,
            "decoding": {"protocol": "generate", "strategy": "greedy", "temperature": 0.0, "max_new_tokens": 256,
                         "max_context": 4096},
            "few_shot": {"k": 0}, "chat_template": "none", "truncated_prompts": 0, "warnings": [],
            "intervals": stats.task_intervals(task, family, recs, choices, iterations=iterations, seed=seed)}


def write_run(directory, tasks: dict[str, tuple[str, list[dict], list[str]]], checkpoint: str = "ckpt-a",
              edit=None, iterations: int = 200) -> str:
    """An evaluation directory: {task: (family, records, choices)}; edit(results) may change results.json."""
    from mellama_jax.eval import report

    directory = str(directory)
    os.makedirs(os.path.join(directory, "predictions"), exist_ok=True)
    results = {"checkpoint": {"path": checkpoint, "sha256": "0" * 64}, "code": {"commit": "abc"}, "seed": 0,
               "protocol": "generate", "prompt_set": "mellama-release", "tasks": {}}
    for task, (family, recs, choices) in tasks.items():
        results["tasks"][task] = task_entry(task, family, recs, choices, iterations)
        with open(os.path.join(directory, "predictions", f"{task}.jsonl"), "w", encoding="utf-8") as f:
            for r in recs:
                f.write(json.dumps(r) + "\n")
    if edit is not None:
        results = copy.deepcopy(results)
        edit(results)
    if all(r["family"] in stats.FAMILIES for r in results["tasks"].values()):
        report.write_results(directory, results)
    else:  # a planted foreign family: results.json only
        report.write_files(directory, {"results.json": json.dumps(results, indent=2, sort_keys=True) + "\n"})
    return directory


def all_families(n: int = 40, seed: int = 0, skill: float = 0.6) -> dict[str, tuple[str, list[dict], list[str]]]:
    return {task: (family, *records(family, n, seed, skill)) for family, task in FAMILY_TASK.items()}
