"""A deterministic synthetic token pipeline: a data.batch_source.BatchSource without files.

Used by benchmarks (no TensorFlow, no files, no host bottleneck) and by the training tests.
The tokens are arithmetic progressions modulo the vocabulary, so a model can learn them and the
loss visibly falls. Row ``r`` of the global batch at ``step`` is a pure function of
(seed, step, r): every process layout sees the same global batch, and resume needs no state.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from mellama_jax.data.config import MixtureStage

_FIRST_TOKEN = 3  # keep 0..2 (pad/bos/eos in LLaMA vocabularies) out of the synthetic stream
_EVAL_STEP_BASE = 1 << 40  # eval rows use step ids no training step reaches


class SyntheticPipeline:
    """Arithmetic-progression token batches; same interface (BatchSource) as the real train pipeline."""

    chat_template_jinja = None

    def __init__(self, *, vocab_size: int, seq_len: int, global_batch_size: int,
                 process_index: int = 0, process_count: int = 1, seed: int = 0,
                 source_names: Sequence[str] = ("biomedical", "clinical", "general"),
                 mixture: Sequence[float] | None = None):
        if global_batch_size % process_count:
            raise ValueError(f"global_batch_size={global_batch_size} is not divisible by "
                             f"process_count={process_count}")
        if vocab_size <= _FIRST_TOKEN + 1:
            raise ValueError(f"vocab_size={vocab_size}: synthetic data needs > {_FIRST_TOKEN + 1}")
        self.vocab_size = vocab_size
        self.seq_len = seq_len
        self.global_batch_size = global_batch_size
        self.local_batch_size = global_batch_size // process_count
        self.process_index = process_index
        self.seed = seed
        self.source_names = list(source_names)
        weights = np.asarray(mixture if mixture is not None else [1.0] * len(self.source_names),
                             dtype=np.float64)
        self._probs = weights / weights.sum()
        self.stages = [MixtureStage(0, dict(zip(self.source_names, map(float, self._probs))))]
        self.tokenizer = None

    def _row(self, step: int, row: int, source: int | None = None) -> tuple[np.ndarray, int]:
        rng = np.random.default_rng([self.seed, step, row])
        src = int(rng.choice(len(self.source_names), p=self._probs)) if source is None else source
        span = self.vocab_size - _FIRST_TOKEN
        start = int(rng.integers(span))
        # the stride depends on the source, so per-source losses differ a little
        stride = int(rng.integers(1, 4)) + src
        toks = _FIRST_TOKEN + (start + stride * np.arange(self.seq_len + 1)) % span
        return toks.astype(np.int32), src

    def _batch(self, step: int, rows: range, source: int | None = None) -> dict[str, np.ndarray]:
        toks, srcs = zip(*(self._row(step, r, source) for r in rows))
        toks = np.stack(toks)
        b, s = len(rows), self.seq_len
        return {
            "inputs": toks[:, :-1],
            "targets": toks[:, 1:],
            "positions": np.broadcast_to(np.arange(s, dtype=np.int32), (b, s)).copy(),
            "segment_ids": np.ones((b, s), np.int32),
            "loss_mask": np.ones((b, s), np.float32),
            "source_ids": np.repeat(np.asarray(srcs, np.int32)[:, None], s, axis=1),
        }

    def batch(self, step: int) -> dict[str, np.ndarray]:
        """This process's slice of the global batch for ``step``."""
        first = self.process_index * self.local_batch_size
        return self._batch(step, range(first, first + self.local_batch_size))

    def eval_batches(self, source_name: str, num_batches: int) -> list[dict[str, np.ndarray]]:
        """Held-out batches of one source (rows no training step ever draws)."""
        src = self.source_names.index(source_name)
        first = self.process_index * self.local_batch_size
        rows = range(first, first + self.local_batch_size)
        return [self._batch(_EVAL_STEP_BASE + i, rows, src) for i in range(num_batches)]

    def stage_row_counts(self, step: int) -> tuple[int, np.ndarray]:
        """(0, this process's rows per source before `step`, then their total): one constant stage."""
        first = self.process_index * self.local_batch_size
        counts = np.zeros(len(self.source_names) + 1, np.int64)
        for s in range(step):
            for r in range(first, first + self.local_batch_size):
                counts[self._row(s, r)[1]] += 1
        counts[-1] = counts[:-1].sum()
        return 0, counts

    def epoch_rows(self) -> int:
        raise ValueError("synthetic data has no epochs (every step draws new rows); set config.train.steps")

    def steps_for_epochs(self, epochs: float, global_rows: int | None = None) -> int:
        return self.epoch_rows()

    def state(self) -> None:
        """Nothing to record: a batch is a function of (seed, step, row) alone."""
        return None

    def restore(self, state: dict) -> None:
        """Nothing to check (see state)."""

    def fingerprint(self) -> dict:
        return {"synthetic": True, "seed": self.seed, "seq_len": self.seq_len}

    def stats(self) -> dict:
        return {}
