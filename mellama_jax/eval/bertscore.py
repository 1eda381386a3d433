"""BERTScore F1 (Zhang et al. 2020) through the maintained `bert-score` package, with a local encoder
directory (nothing is downloaded): no idf weighting, no baseline rescaling, the hidden layer chosen
by config.bertscore_layer (an index into the encoder's hidden states: -1 = the last layer, as
`bert_score`'s num_layers counts them). Only used when config.bertscore_model is set.

`pair_scores` is the greedy-matching definition itself, kept for the test that pins the package's
numbers to it."""
from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["bertscore_f1", "bertscore_scores", "pair_scores", "implementation"]


def implementation() -> str:
    try:
        import bert_score
    except ImportError:
        return "bert-score not installed (pip install -r requirements.txt)"
    return f"bert-score {getattr(bert_score, '__version__', '?')} (BERTScorer, idf=False, no baseline rescaling)"


def pair_scores(cand: np.ndarray, ref: np.ndarray) -> tuple[float, float, float]:
    """(precision, recall, F1) of unit-normalised token embeddings [n, d] and [m, d]."""
    if len(cand) == 0 or len(ref) == 0:
        return 0.0, 0.0, 0.0
    sim = cand @ ref.T
    p, r = float(sim.max(axis=1).mean()), float(sim.max(axis=0).mean())
    return p, r, (2 * p * r / (p + r) if p + r > 0 else 0.0)


def _num_layers(model_dir: str, layer: int) -> int:
    from transformers import AutoConfig

    n = int(AutoConfig.from_pretrained(model_dir, local_files_only=True).num_hidden_layers)
    k = n + 1 + layer if layer < 0 else layer
    if not 0 < k <= n:
        raise ValueError(f"config.bertscore_layer={layer}: {model_dir} has hidden states 1..{n} (or -1..-{n})")
    return k


def bertscore_f1(preds: Sequence[str], refs: Sequence[str], model_dir: str, layer: int = -1,
                 batch_size: int = 16) -> float:
    """Mean BERTScore F1 of (prediction, reference) pairs with the encoder in `model_dir`."""
    return bertscore_scores(preds, refs, model_dir, layer, batch_size)[0]


def bertscore_scores(preds: Sequence[str], refs: Sequence[str], model_dir: str, layer: int = -1,
                     batch_size: int = 16) -> tuple[float, list[float]]:
    """(mean, per-pair) BERTScore F1: the mean as bertscore_f1 reports it, the pairs for intervals."""
    if not preds:
        return 0.0, []
    from bert_score import BERTScorer

    scorer = BERTScorer(model_type=model_dir, num_layers=_num_layers(model_dir, layer), idf=False,
                        rescale_with_baseline=False, batch_size=batch_size, device="cpu")
    _, _, f1 = scorer.score(list(preds), list(refs))
    return float(f1.mean()), [float(v) for v in f1.tolist()]
