"""Bootstrap confidence intervals for every metric of a built-in task, from its prediction records.

Each task family is reduced to per-example sufficient statistics, a matrix X [n, k] (choice tasks:
correct, missing, one-hot gold / predicted / true-positive label; HoC: the same per hallmark; NER:
entity true positives, predicted and gold counts per sentence; extractive QA, summarization and
diagnosis: the per-example scores whose mean is the metric), and a function from column sums to
metrics. A bootstrap resample is a vector of multiplicities (how often each example was drawn), so
the sums of all resamples are one product W @ X with W [iterations, n], and corpus-level metrics
(macro / weighted F1, entity F1) are recomputed per resample from resampled counts rather than by
re-running scikit-learn or seqeval. Each resample applies the metric's own definition to the drawn
examples: a choice task's macro-F1 averages over the labels gold in that resample, as
metrics.choice_metrics does for a file.

The draws: ``numpy.random.default_rng([seed, zlib.crc32(task)]).integers(0, n, size=(iterations, n))``,
one array per task (generated in row chunks from the same generator, which yields the same array),
shared by all the task's metrics and by the paired comparison of two runs (compare.py), so the
numbers can be recomputed from predictions/<task>.jsonl and the settings results.json records
(``intervals_from_run``, ``python -m mellama_jax.cli.eval_intervals``). The interval is the percentile
interval: numpy's (linear) quantiles at (1 - confidence) / 2 and (1 + confidence) / 2.

Several samples per example (sampled decoding) enter as per-example statistics averaged over the
samples before resampling examples: X stays [n, k], computed from [n, samples, k].
"""
from __future__ import annotations

import json
import os
import zlib
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import numpy as np

from mellama_jax.eval import metrics as M
from mellama_jax.eval.parsing import MISSING

__all__ = ["ExampleStats", "example_stats", "resample_indices", "resample_counts", "bootstrap",
           "percentile_interval", "task_intervals", "intervals", "intervals_from_run", "settings",
           "check_config", "add_rouge_scores", "read_predictions", "METHOD", "FAMILIES"]

METHOD = "percentile bootstrap over examples"
FAMILIES = ("choice", "multilabel", "extractive_qa", "ner", "summarization", "diagnosis")
DEFAULTS = {"iterations": 1000, "seed": 0, "confidence": 0.95}
# Rows of W drawn and multiplied at a time: bounds memory at about this many float64 per array.
_CHUNK_ELEMENTS = 1 << 22


@dataclass
class ExampleStats:
    """A task's per-example sufficient statistics and how metrics follow from their sums."""

    family: str
    x: np.ndarray  # [n, k] float64
    metric_fn: Callable[[np.ndarray, np.ndarray], dict[str, np.ndarray]]  # (sums [..., k], n [...]) -> metrics
    binary: dict[str, int] = field(default_factory=dict)  # metric -> column of its per-example 0/1 outcome

    @property
    def n(self) -> int:
        return int(self.x.shape[0])

    def point(self) -> dict[str, float]:
        """The metrics of the whole file (equal to metrics.py's up to float rounding)."""
        return {k: float(v) for k, v in self.metric_fn(self.x.sum(0), np.asarray(float(self.n))).items()}

    def outcomes(self, metric: str) -> np.ndarray:
        """Per-example 0/1 outcome of a metric that is a mean of one (accuracy, exact match, top-k)."""
        return self.x[:, self.binary[metric]].astype(bool)


def _div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a / b, 0 where b is 0 (scikit-learn's and seqeval's zero_division=0)."""
    b = np.asarray(b, dtype=np.float64)
    return np.divide(a, b, out=np.zeros(np.broadcast(a, b).shape), where=b != 0)


def _f1(tp: np.ndarray, pred: np.ndarray, gold: np.ndarray) -> np.ndarray:
    """Per-label F1 = 2TP / (2TP + FP + FN) = 2TP / (predicted + gold), 0 when both are 0."""
    return _div(2.0 * tp, pred + gold)


def _means(names: Sequence[str]) -> Callable:
    def fn(s, n):
        return {k: _div(s[..., j], n) for j, k in enumerate(names)}
    return fn


def _choice(records: Sequence[dict]) -> ExampleStats:
    preds = [r["prediction"] for r in records]
    golds = [r["reference"] for r in records]
    labels = sorted(set(golds))
    pos = {lab: i for i, lab in enumerate(labels)}
    n, L = len(golds), len(labels)
    x = np.zeros((n, 2 + 3 * L))
    rows = np.arange(n)
    g = np.array([pos[v] for v in golds], dtype=np.int64)
    p = np.array([pos.get(v, -1) if isinstance(v, str) else -1 for v in preds], dtype=np.int64)
    correct = np.array([pv == gv for pv, gv in zip(preds, golds)])
    x[:, 0] = correct
    x[:, 1] = [pv == MISSING for pv in preds]
    x[rows, 2 + g] = 1.0
    x[rows[p >= 0], 2 + L + p[p >= 0]] = 1.0
    x[rows[correct], 2 + 2 * L + g[correct]] = 1.0

    def fn(s, n):
        gold, pred, tp = s[..., 2:2 + L], s[..., 2 + L:2 + 2 * L], s[..., 2 + 2 * L:]
        f1 = _f1(tp, pred, gold)
        present = gold > 0  # the labels gold in this sample, as choice_metrics takes sorted(set(golds))
        return {"accuracy": _div(s[..., 0], n), "macro_f1": _div((f1 * present).sum(-1), present.sum(-1)),
                "weighted_f1": _div((f1 * gold).sum(-1), gold.sum(-1)), "missing_rate": _div(s[..., 1], n)}

    return ExampleStats("choice", x, fn, {"accuracy": 0})


def _multilabel(records: Sequence[dict], choices: Sequence[str]) -> ExampleStats:
    labels = list(choices)
    L = len(labels)
    gold = np.array([[lab in r["reference"] for lab in labels] for r in records], dtype=np.float64).reshape(-1, L)
    pred = np.array([[lab in r["prediction"] for lab in labels] for r in records], dtype=np.float64).reshape(-1, L)
    exact = np.array([set(r["prediction"]) == set(r["reference"]) for r in records], dtype=np.float64)
    x = np.concatenate([gold, pred, gold * pred, exact[:, None]], axis=1)

    def fn(s, n):
        f1 = _f1(s[..., 2 * L:3 * L], s[..., L:2 * L], s[..., :L])
        out = {f"f1/{lab}": f1[..., j] for j, lab in enumerate(labels)}
        out["macro_f1"] = f1.mean(-1) if L else np.zeros(np.shape(n))
        out["exact_set_accuracy"] = _div(s[..., 3 * L], n)
        return out

    return ExampleStats("multilabel", x, fn, {"exact_set_accuracy": 3 * L})


def _score_columns(family: str, scores: dict[str, Sequence[float]], binary: Sequence[str] = ()) -> ExampleStats:
    names = list(scores)
    n = len(next(iter(scores.values()))) if scores else 0
    x = np.array([scores[k] for k in names], dtype=np.float64).T.reshape(n, len(names))
    return ExampleStats(family, x, _means(names), {k: names.index(k) for k in binary})


def _ner(records: Sequence[dict]) -> ExampleStats:
    c = M.ner_example_counts([r["prediction"] for r in records], [r["reference"] for r in records])

    def fn(s, n):
        precision, recall = _div(s[..., 0], s[..., 1]), _div(s[..., 0], s[..., 2])
        # seqeval's formula (from precision and recall), for the same floats as ner_metrics
        return {"precision": precision, "recall": recall,
                "f1": _div(2.0 * precision * recall, precision + recall)}

    return ExampleStats("ner", c.astype(np.float64).reshape(-1, 3), fn)


def _summarization(records: Sequence[dict], use_stemmer: bool) -> ExampleStats:
    if records and all("rouge1" in (r.get("scores") or {}) for r in records):
        scores = {k: [r["scores"][k] for r in records] for k in ("rouge1", "rouge2", "rougeL")}
    else:  # a predictions file written before per-example scores were kept
        scores = M.rouge_example_scores([r["prediction"] for r in records], [r["reference"] for r in records],
                                        use_stemmer)
    if records and all((r.get("scores") or {}).get("bertscore_f1") is not None for r in records):
        scores["bertscore_f1"] = [r["scores"]["bertscore_f1"] for r in records]
    return _score_columns("summarization", scores)


def _diagnosis(records: Sequence[dict], k: int = 5) -> ExampleStats:
    ranks = [M.diagnosis_match_rank(r["prediction"], r["reference"]) for r in records]
    names = [f"top{i}" for i in range(1, k + 1)]
    return _score_columns("diagnosis", {f"top{i}": [float(r is not None and r <= i) for r in ranks]
                                        for i in range(1, k + 1)}, binary=names)


def example_stats(family: str, records: Sequence[dict], choices: Sequence[str] = (),
                  rouge_stemmer: bool = False) -> ExampleStats:
    """Per-example statistics of a task's prediction records (predictions/<task>.jsonl)."""
    if family == "choice":
        return _choice(records)
    if family == "multilabel":
        return _multilabel(records, choices)
    if family == "extractive_qa":
        return _score_columns(family, M.squad_example_scores([r["prediction"] for r in records],
                                                             [r["reference"] for r in records]),
                              binary=("exact_match", "mellama_exact_match"))
    if family == "ner":
        return _ner(records)
    if family == "summarization":
        return _summarization(records, rouge_stemmer)
    if family == "diagnosis":
        return _diagnosis(records)
    raise ValueError(f"no bootstrap for task family {family!r} (known: {', '.join(FAMILIES)})")


def _generator(seed: int, task: str) -> np.random.Generator:
    return np.random.default_rng([int(seed), zlib.crc32(task.encode())])


def _row_chunks(iterations: int, n: int) -> Iterator[int]:
    step = max(1, _CHUNK_ELEMENTS // max(n, 1))
    for start in range(0, iterations, step):
        yield min(step, iterations - start)


def resample_indices(n: int, iterations: int, seed: int, task: str) -> np.ndarray:
    """The whole [iterations, n] array of drawn example indices (the reference definition)."""
    return _generator(seed, task).integers(0, n, size=(iterations, n))


def resample_counts(n: int, iterations: int, seed: int, task: str) -> Iterator[np.ndarray]:
    """W in row chunks: W[b, i] = how often example i is drawn in resample b (float64)."""
    rng = _generator(seed, task)
    for rows in _row_chunks(iterations, n):
        idx = rng.integers(0, n, size=(rows, n))
        flat = idx + (np.arange(rows, dtype=np.int64) * n)[:, None]
        yield np.bincount(flat.ravel(), minlength=rows * n).reshape(rows, n).astype(np.float64)


def bootstrap(stats: Sequence[ExampleStats], iterations: int, seed: int, task: str) -> list[dict[str, np.ndarray]]:
    """Per-resample metrics [iterations] of each ExampleStats, all over the same resamples
    (one run's task, or two runs' for a paired comparison)."""
    n = stats[0].n
    if any(s.n != n for s in stats):
        raise ValueError(f"{task}: resampling statistics of different lengths {[s.n for s in stats]}")
    parts: list[list[dict[str, np.ndarray]]] = [[] for _ in stats]
    for w in resample_counts(n, iterations, seed, task):
        sizes = w.sum(1)
        for out, s in zip(parts, stats):
            out.append(s.metric_fn(w @ s.x, sizes))
    return [{k: np.concatenate([p[k] for p in out]) for k in out[0]} if out else {} for out in parts]


def percentile_interval(values: np.ndarray, confidence: float) -> list[float]:
    alpha = 1.0 - confidence
    lo, hi = np.quantile(values, [alpha / 2, 1 - alpha / 2])
    return [float(lo), float(hi)]


def _description(iterations: int, seed: int, confidence: float) -> dict:
    return {"method": METHOD, "iterations": int(iterations), "seed": int(seed), "confidence": float(confidence),
            "resampling": "numpy default_rng([seed, crc32(task)]).integers(0, n, size=(iterations, n)); every "
                          "metric from the same resamples, each recomputed on the drawn examples by its own "
                          "definition (F1s from resampled per-example counts)",
            "interval": "numpy linear quantiles at (1 - confidence) / 2 and (1 + confidence) / 2"}


def task_intervals(task: str, family: str, records: Sequence[dict], choices: Sequence[str] = (), *,
                   iterations: int = 1000, seed: int = 0, confidence: float = 0.95,
                   rouge_stemmer: bool = False) -> dict:
    """results.json's "intervals" block of a task: the settings and {metric: [low, high]}."""
    out = _description(iterations, seed, confidence)
    if iterations <= 0:
        return {"method": "none", "iterations": 0, "metrics": {},
                "note": "config.bootstrap.iterations=0: no intervals"}
    if not records:
        return {**out, "metrics": {}, "note": "no examples"}
    st = example_stats(family, records, choices, rouge_stemmer)
    (boot,) = bootstrap([st], iterations, seed, task)
    out["metrics"] = {k: percentile_interval(v, confidence) for k, v in sorted(boot.items())}
    return out


def settings(config) -> dict:
    """config.bootstrap's iterations, seed and confidence (defaults where a config has no bootstrap)."""
    b = config.get("bootstrap") if hasattr(config, "get") else None
    get = (lambda k: b.get(k, DEFAULTS[k])) if b is not None else DEFAULTS.get
    return {"iterations": int(get("iterations")), "seed": int(get("seed")), "confidence": float(get("confidence"))}


def check_config(config) -> None:
    s = settings(config)
    if s["iterations"] < 0:
        raise ValueError(f"config.bootstrap.iterations={s['iterations']}: expected >= 0 (0 = no intervals)")
    if not 0.0 < s["confidence"] < 1.0:
        raise ValueError(f"config.bootstrap.confidence={s['confidence']}: expected a fraction in (0, 1)")


def intervals(task: str, family: str, records: Sequence[dict], choices: Sequence[str], config) -> dict:
    """task_intervals with config.bootstrap's settings (what the runner writes)."""
    return task_intervals(task, family, records, choices, **settings(config),
                          rouge_stemmer=bool(config.get("rouge_stemmer", False)))


def add_rouge_scores(records: list[dict], use_stemmer: bool = False) -> None:
    """Store each summarization record's ROUGE-1/2/L under record["scores"], so its intervals (and a
    paired comparison) need only the predictions file."""
    per = M.rouge_example_scores([r["prediction"] for r in records], [r["reference"] for r in records], use_stemmer)
    for i, r in enumerate(records):
        r.setdefault("scores", {}).update({k: per[k][i] for k in ("rouge1", "rouge2", "rougeL")})


def read_predictions(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def intervals_from_run(run_dir: str, tasks: Sequence[str] | None = None) -> dict[str, dict]:
    """Recompute every task's intervals from run_dir/predictions/<task>.jsonl with the bootstrap
    settings its results.json records; {task: intervals block}, equal to results.json's."""
    path = os.path.join(run_dir, "results.json")
    if not os.path.isfile(path):
        raise ValueError(f"{run_dir}: not an evaluation directory (no results.json)")
    with open(path, encoding="utf-8") as f:
        results = json.load(f)
    out = {}
    for name in tasks or list(results.get("tasks", {})):
        r = results["tasks"].get(name)
        if r is None:
            raise ValueError(f"{run_dir}: results.json has no task {name!r} (it has {sorted(results['tasks'])})")
        iv = r.get("intervals")
        if not iv:
            raise ValueError(f"{run_dir}: task {name} has no intervals block in results.json (written before "
                             "intervals existed, or by the lm-eval harness)")
        records = read_predictions(os.path.join(run_dir, "predictions", f"{name}.jsonl"))
        choices = r["choices"] if isinstance(r.get("choices"), list) else ()
        out[name] = task_intervals(name, r["family"], records, choices, iterations=int(iv["iterations"]),
                                   seed=int(iv.get("seed", 0)), confidence=float(iv.get("confidence", 0.95)))
    return out
