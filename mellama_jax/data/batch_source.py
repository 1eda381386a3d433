"""What the train loop needs from a data pipeline: `BatchSource`.

Implemented by data.pipeline.TrainPipeline (pretraining documents, or SFT examples through its row
source) and train.synthetic.SyntheticPipeline (benchmarks and tests). Every batch is a pure function
of the step (and of the data), which is what makes a resumed run identical to an uninterrupted one:
the checkpoint only records `state()` so that `restore` can refuse a pipeline that would draw other
batches.

A batch is a dict of host-local numpy arrays [local_batch, seq_len]: inputs, targets, positions,
segment_ids (int32), loss_mask (float32) and source_ids (int32, the index into `source_names` of
each position's source; -1 for padding).
"""
from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable

import numpy as np

from mellama_jax.data.config import MixtureStage

__all__ = ["BatchSource", "Batch"]

Batch = dict[str, np.ndarray]


@runtime_checkable
class BatchSource(Protocol):
    """The training data of one run, as the loop, checkpoints and metrics read it."""

    source_names: Sequence[str]      # eval/<name>/... and data/<name>/... metrics, in this order
    stages: Sequence[MixtureStage]   # the mixture per step range; one stage = a constant mixture
    chat_template_jinja: str | None  # the chat template the rows were rendered with; None for plain text

    def batch(self, step: int) -> Batch:
        """This process's rows of the global batch of `step` (0-based): the same for the same step."""
        ...

    def eval_batches(self, source_name: str, num_batches: int) -> list[Batch]:
        """Held-out batches of one source, in a fixed order ([] when it has no held-out rows here)."""
        ...

    def stage_row_counts(self, step: int) -> tuple[int, np.ndarray]:
        """(stage of the last step before `step`, this host's rows per source drawn in that stage up
        to `step`, then their total)."""
        ...

    def epoch_rows(self) -> int:
        """Rows in one pass over every trained source on this host."""
        ...

    def steps_for_epochs(self, epochs: float, global_rows: int | None = None) -> int:
        """Optimizer steps for `epochs` passes over the rows (of all hosts: `global_rows`)."""
        ...

    def state(self) -> dict | None:
        """What a checkpoint records of the data (None: nothing to check on resume)."""
        ...

    def restore(self, state: dict) -> None:
        """Checks that `state` (a checkpoint's) describes this pipeline; raises if batches would differ."""
        ...

    def fingerprint(self) -> dict:
        """What this run's data is, for the provenance of its checkpoints."""
        ...

    def stats(self) -> dict[str, float]:
        """Figures about the data read (documents, tokens, rows, bad items per source), for the log."""
        ...
