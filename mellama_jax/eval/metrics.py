"""Benchmark metrics, computed from (prediction, reference) pairs exactly as Me-LLaMA's harness did.

Classification metrics are written out (no scikit-learn at run time) and tested to equal
scikit-learn; NER uses seqeval and summarization rouge-score, the references themselves.
"""
from __future__ import annotations

import collections
import re
import string
from typing import Any, Sequence

import numpy as np

from mellama_jax.eval.parsing import MISSING, normalize_diagnosis

__all__ = ["choice_metrics", "multilabel_metrics", "squad_metrics", "ner_metrics", "rouge_metrics",
           "diagnosis_metrics", "diagnosis_match_rank", "f1_per_label", "squad_example_scores",
           "rouge_example_scores", "ner_example_counts"]


def f1_per_label(golds: Sequence[str], preds: Sequence[str], labels: Sequence[str]) -> np.ndarray:
    """Per-label F1 = 2TP / (2TP + FP + FN), 0 where a label has no gold and no prediction."""
    g, p = np.asarray(golds, dtype=object), np.asarray(preds, dtype=object)
    out = np.zeros(len(labels))
    for i, lab in enumerate(labels):
        tp = np.sum((p == lab) & (g == lab))
        denom = 2 * tp + np.sum((p == lab) & (g != lab)) + np.sum((p != lab) & (g == lab))
        out[i] = 2 * tp / denom if denom else 0.0
    return out


def choice_metrics(preds: Sequence[str], golds: Sequence[str]) -> dict[str, float]:
    """accuracy, weighted and macro F1 over the gold label set (as Me-LLaMA), and the missing rate."""
    n = len(golds)
    if n == 0:
        return {"accuracy": 0.0, "weighted_f1": 0.0, "macro_f1": 0.0, "missing_rate": 0.0}
    labels = sorted(set(golds))
    f1 = f1_per_label(golds, preds, labels)
    support = np.array([sum(g == lab for g in golds) for lab in labels], dtype=float)
    return {
        "accuracy": float(np.mean([p == g for p, g in zip(preds, golds)])),
        "weighted_f1": float(np.sum(f1 * support) / support.sum()),
        "macro_f1": float(np.mean(f1)),
        "missing_rate": float(np.mean([p == MISSING for p in preds])),
    }


def multilabel_metrics(preds: Sequence[Sequence[str]], golds: Sequence[Sequence[str]],
                       labels: Sequence[str]) -> dict[str, float]:
    """HoC: per-label binary F1 over multi-hot vectors (0 for a label never gold nor predicted), macro-F1."""
    out = {}
    f1s = []
    for lab in labels:
        g = ["1" if lab in x else "0" for x in golds]
        p = ["1" if lab in x else "0" for x in preds]
        f = float(f1_per_label(g, p, ["1"])[0])
        out[f"f1/{lab}"] = f
        f1s.append(f)
    out["macro_f1"] = float(np.mean(f1s)) if f1s else 0.0
    out["exact_set_accuracy"] = float(np.mean([set(p) == set(g) for p, g in zip(preds, golds)])) if golds else 0.0
    return out


# --- extractive QA ---------------------------------------------------------------------------------
def _squad_normalize(s: str) -> str:
    s = s.lower()
    s = "".join(ch for ch in s if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def _squad_f1(pred: str, gold: str) -> float:
    p, g = _squad_normalize(pred).split(), _squad_normalize(gold).split()
    if not p or not g:
        return float(p == g)
    common = collections.Counter(p) & collections.Counter(g)
    same = sum(common.values())
    if same == 0:
        return 0.0
    prec, rec = same / len(p), same / len(g)
    return 2 * prec * rec / (prec + rec)


def _mellama_normalize(s: str) -> str:
    # Me-LLaMA's NormQA joins the characters with spaces while removing punctuation, so its "token"
    # F1 is really a character-set F1; kept under mellama_* names for exact comparison.
    s = s.lower()
    s = " ".join(ch for ch in s if ch not in set(string.punctuation))
    return " ".join(s.split())


def _mellama_f1(pred: str, gold: str) -> float:
    p, g = pred.split(), gold.split()
    if not p or not g:
        return float(p == g)
    common = set(p) & set(g)
    if not common:
        return 0.0
    prec, rec = len(common) / len(p), len(common) / len(g)
    return 2 * prec * rec / (prec + rec)


def squad_metrics(preds: Sequence[str], golds: Sequence[Sequence[str]]) -> dict[str, float]:
    """SQuAD exact match and token F1 (max over gold answers), plus Me-LLaMA's NormQA variant."""
    if not golds:
        return {"exact_match": 0.0, "f1": 0.0, "mellama_exact_match": 0.0, "mellama_f1": 0.0}
    return {k: float(np.mean(v)) for k, v in squad_example_scores(preds, golds).items()}


def squad_example_scores(preds: Sequence[str], golds: Sequence[Sequence[str]]) -> dict[str, list[float]]:
    """Per-example exact match and F1 (SQuAD and Me-LLaMA's NormQA); squad_metrics is their mean."""
    return {"exact_match": [max(float(_squad_normalize(p) == _squad_normalize(g)) for g in gs)
                            for p, gs in zip(preds, golds)],
            "f1": [max(_squad_f1(p, g) for g in gs) for p, gs in zip(preds, golds)],
            "mellama_exact_match": [float(_mellama_normalize(p) == _mellama_normalize(gs[0]))
                                    for p, gs in zip(preds, golds)],
            "mellama_f1": [_mellama_f1(_mellama_normalize(p), _mellama_normalize(gs[0]))
                           for p, gs in zip(preds, golds)]}


# --- NER -------------------------------------------------------------------------------------------
def ner_metrics(preds: Sequence[Sequence[str]], golds: Sequence[Sequence[str]]) -> dict[str, float]:
    """Entity-level precision / recall / F1 with seqeval's default (CoNLL) matching."""
    from seqeval.metrics import f1_score, precision_score, recall_score

    golds, preds = [list(g) for g in golds], [list(p) for p in preds]
    kw = {"zero_division": 0}
    return {"precision": float(precision_score(golds, preds, **kw)),
            "recall": float(recall_score(golds, preds, **kw)),
            "f1": float(f1_score(golds, preds, **kw))}


def ner_example_counts(preds: Sequence[Sequence[str]], golds: Sequence[Sequence[str]]) -> np.ndarray:
    """Per sentence [true positive, predicted, gold] entity counts, int64 [n, 3].

    seqeval's default (CoNLL) scoring joins the sentences with an "O" between them, so no entity
    crosses a sentence and its micro counts are the sums of these; precision, recall and F1 of any
    subset of sentences follow from the subset's sums (what the bootstrap needs)."""
    from seqeval.metrics.sequence_labeling import get_entities

    out = np.zeros((len(golds), 3), dtype=np.int64)
    for i, (p, g) in enumerate(zip(preds, golds)):
        pe, ge = set(get_entities(list(p))), set(get_entities(list(g)))
        out[i] = (len(pe & ge), len(pe), len(ge))
    return out


# --- summarization ---------------------------------------------------------------------------------
def rouge_metrics(preds: Sequence[str], golds: Sequence[str], use_stemmer: bool = False) -> dict[str, float]:
    """Mean ROUGE-1/2/L F-measure over pairs (rouge-score; no stemmer by default, as HF evaluate)."""
    n = max(len(golds), 1)
    # sum() adds in order, as the running sums this replaced did: the same floats to the last bit
    return {k: sum(v) / n for k, v in rouge_example_scores(preds, golds, use_stemmer).items()}


def rouge_example_scores(preds: Sequence[str], golds: Sequence[str],
                         use_stemmer: bool = False) -> dict[str, list[float]]:
    """Per-pair ROUGE-1/2/L F-measure; rouge_metrics is their mean."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=use_stemmer)
    out: dict[str, list[float]] = {"rouge1": [], "rouge2": [], "rougeL": []}
    for p, g in zip(preds, golds):
        scores = scorer.score(g, p)
        for k in out:
            out[k].append(scores[k].fmeasure)
    return out


# --- clinical case diagnosis -----------------------------------------------------------------------
def diagnosis_match_rank(candidates: Sequence[str], reference: dict[str, Any]) -> int | None:
    """1-based rank of the first candidate that matches the gold diagnosis or a synonym, else None.

    A candidate matches when, after normalisation, it equals a gold name or contains it as a whole
    word sequence ("acute myocardial infarction" matches "myocardial infarction").
    """
    golds = [normalize_diagnosis(x) for x in [reference["diagnosis"], *reference.get("synonyms", [])]]
    golds = [g for g in golds if g]
    for rank, cand in enumerate(candidates, 1):
        c = f" {normalize_diagnosis(cand)} "
        if any(f" {g} " in c for g in golds):
            return rank
    return None


def diagnosis_metrics(candidate_lists: Sequence[Sequence[str]], references: Sequence[dict],
                      k: int = 5) -> dict[str, float]:
    ranks = [diagnosis_match_rank(c, r) for c, r in zip(candidate_lists, references)]
    n = max(len(ranks), 1)
    return {f"top{i}": sum(1 for r in ranks if r is not None and r <= i) / n for i in range(1, k + 1)}
