"""What the training loop does besides stepping: each job a hook over a `StepInfo`.

Two kinds (see loop.TrainLoop):
- metrics hooks see every step, in order, with its metrics fetched to the host. They run one step
  late (the loop dispatches step n + 1 before it reads step n's metrics, so the device never waits
  for the host), except at a step where a state hook is due: there the step is read at once, so
  that a non-finite loss stops the run before anything is evaluated or saved.
  `NonFiniteGuard`, `SourceTokens`, `MetricsLogger`.
- state hooks see the state after the step, every N steps and at the last step
  (`loop.add_hook(hook, every=N)`): `Evaluator`, `CheckpointSaver` (also at a preemption).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import jax
import numpy as np
from jax.experimental import multihost_utils

from mellama_jax.data.batch_source import BatchSource
from mellama_jax.model.config import LlamaConfig
from mellama_jax.train import metrics as metrics_lib
from mellama_jax.train.checkpointing import Checkpointer, NonFiniteStateError
from mellama_jax.train.metrics import say
from mellama_jax.train.state import TrainState

__all__ = ["StepInfo", "NonFiniteLossError", "NonFiniteGuard", "SourceTokens", "MetricsLogger", "Evaluator",
           "CheckpointSaver", "source_token_counts", "global_source_fractions", "global_counts",
           "tokens_seen_from_meta"]


class NonFiniteLossError(RuntimeError):
    """The loss, the gradient norm or the updated state of a step is NaN/inf: the run stops."""


@dataclasses.dataclass
class StepInfo:
    """One finished optimizer step, as the hooks see it."""

    step: int                  # steps done: the state below is after this many (1 = the first step)
    total: int                 # config.train.steps
    state: TrainState | None   # after this step; None once the loop has moved past it (metrics hooks)
    device_metrics: dict       # what the jitted step returned (loss, learning_rate, grad_norm, ...)
    source_tokens: np.ndarray  # loss tokens per source in this process's batch, then their total
    preempted: bool = False    # SIGTERM on some process: this is the run's last step
    _host: dict | None = dataclasses.field(default=None, repr=False)

    @property
    def metrics(self) -> dict[str, float]:
        """The step's metrics as Python floats (fetched from the device once, on first use)."""
        if self._host is None:
            self._host = {k: float(v) for k, v in jax.device_get(self.device_metrics).items()}
        return self._host

    @property
    def is_last(self) -> bool:
        return self.step == self.total


# -------------------------------------------------------------------------------- cross-process sums
def source_token_counts(local: dict, names: list[str]) -> np.ndarray:
    """Loss tokens per source in this host-local batch, then the total: int64 [len(names) + 1]."""
    ids, mask = local["source_ids"], local["loss_mask"] > 0
    counts = [int(((ids == i) & mask).sum()) for i in range(len(names))]
    return np.asarray(counts + [int(mask.sum())], np.int64)


def global_counts(counts: np.ndarray) -> np.ndarray:
    """Sum of a per-process count vector over all processes (every process calls it at the same step)."""
    if jax.process_count() > 1:
        counts = np.asarray(multihost_utils.process_allgather(counts)).reshape(-1, counts.size).sum(0)
    return np.asarray(counts, np.int64)


def global_source_fractions(counts: np.ndarray, names: list[str]) -> dict[str, float]:
    """Realised share of loss tokens per source over every process's slice of the batches.

    Every process calls this at the same log steps, so the all-gather lines up across hosts.
    """
    if jax.process_count() > 1:
        counts = np.asarray(multihost_utils.process_allgather(counts)).reshape(-1, counts.size).sum(0)
    total = max(int(counts[-1]), 1)
    return {n: float(counts[i]) / total for i, n in enumerate(names)}


def tokens_seen_from_meta(meta: dict | None, names: list[str]) -> np.ndarray:
    """Loss tokens per source a checkpoint had seen (its meta "source_tokens"; 0 for older ones)."""
    seen = (meta or {}).get("source_tokens") or {}
    return np.asarray([int(seen.get(n, 0)) for n in names], np.int64)


def last_good(ckpt: Checkpointer) -> str:
    """What is actually on disk, not what should be: the newest committed step and whether its
    state was checked finite when it was saved (Checkpointer.save records that in meta)."""
    ckpt.wait()
    step = ckpt.latest_step()
    if step is None:
        return "No checkpoint has been written yet. "
    meta = ckpt.read_meta(step) or {}
    verified = (meta.get("integrity") or {}).get("finite") is True
    return (f"The newest checkpoint is step {step} ({ckpt.directory}/{step}); "
            + ("its state was checked finite before it was saved. " if verified else
               "it was written without an integrity record, so its values are not verified. "))


# ------------------------------------------------------------------------------------ metrics hooks
class NonFiniteGuard:
    """Stops the run at the first step whose loss or gradient norm is NaN/inf, naming the newest
    checkpoint actually on disk."""

    def __init__(self, ckpt: Checkpointer):
        self.ckpt = ckpt

    def __call__(self, info: StepInfo) -> None:
        values = info.metrics
        for key in ("loss", "grad_norm"):
            if key in values and not math.isfinite(float(values[key])):
                raise NonFiniteLossError(
                    f"step {info.step}: {key} is {values[key]}; stopping. {last_good(self.ckpt)}"
                    "Lower config.optim.learning_rate or check the data.")


class SourceTokens:
    """Loss tokens per source since step 0: the restored checkpoint's count plus this run's
    (counted per process, summed over processes where read: at log and checkpoint steps)."""

    def __init__(self, names: list[str], meta: dict | None):
        self.names = list(names)
        self.base = tokens_seen_from_meta(meta, self.names)
        self.local = np.zeros(len(self.names) + 1, np.int64)

    def __call__(self, info: StepInfo) -> None:
        self.local += info.source_tokens

    def totals(self) -> np.ndarray:
        """Per source, over all processes (every process calls it at the same step)."""
        return self.base + global_counts(self.local)[:-1]


class MetricsLogger:
    """Every log_every steps (and at the last step, and at a preemption): loss, learning rate,
    gradient norm, throughput, MFU and the data mixture realised, to metrics.jsonl, TensorBoard and
    the console. `last` is the newest logged record plus the evaluations written after it (what
    loop.run returns)."""

    def __init__(self, writer: metrics_lib.MetricsWriter, *, log_every: int, model_config: LlamaConfig,
                 seq_len: int, global_batch_size: int, peak_tflops: float | None, z_loss: bool,
                 pipeline: BatchSource, tokens: SourceTokens, timer: metrics_lib.StepTimer):
        self.writer, self.log_every, self.timer = writer, max(int(log_every), 1), timer
        self.model_config, self.seq_len, self.peak, self.z_loss = model_config, seq_len, peak_tflops, z_loss
        self.tokens_per_step = int(global_batch_size) * seq_len
        self.flops_per_token = metrics_lib.flops_per_token(model_config, seq_len)
        self.pipeline, self.tokens = pipeline, tokens
        self.names = list(pipeline.source_names)
        self.last: dict = {}
        self._steps = 0
        self._window_tokens = np.zeros(len(self.names) + 1, np.int64)

    def __call__(self, info: StepInfo) -> None:
        self._steps += 1
        self._window_tokens += info.source_tokens
        if not (info.step % self.log_every == 0 or info.is_last or info.preempted):
            return
        values = info.metrics
        dt = max(self.timer.lap(), 1e-9)  # wall time since the last log, less evaluation/checkpoint time
        tps = self._steps * self.tokens_per_step / max(dt, 1e-9)
        record = {
            "loss": values["loss"], "learning_rate": values["learning_rate"],
            "grad_norm": values["grad_norm"], "tokens_per_second": tps,
            "step_time": dt / self._steps,
            "mfu": metrics_lib.mfu(tps, self.model_config, self.seq_len, jax.device_count(), self.peak),
            "tflops_per_device": tps * self.flops_per_token / jax.device_count() / 1e12,
        }
        if self.z_loss:
            record["z_loss"] = values["z_loss"]
        for n, f in global_source_fractions(self._window_tokens, self.names).items():
            record[f"data/{n}/fraction"] = f
        totals = self.tokens.totals()
        for n, t in zip(self.names, totals):
            record[f"data/{n}/tokens"] = int(t)
        if hasattr(self.pipeline, "repetition_so_far"):  # target budget: each source's passes so far
            record.update(self.pipeline.repetition_so_far(totals))
        if len(self.pipeline.stages) > 1:  # mixture schedule: the stage and its realised row shares so far
            stage, rows = self.pipeline.stage_row_counts(info.step)
            record["data/stage"] = stage
            for n, f in global_source_fractions(rows, self.names).items():
                record[f"data/{n}/stage_fraction"] = f
        self._steps = 0
        self._window_tokens = np.zeros(len(self.names) + 1, np.int64)
        self.writer.write(info.step, record)
        say(metrics_lib.console_line(info.step, info.total, record))
        self.last = {"step": info.step, **record}

    def add(self, step: int, values: dict) -> None:
        """Writes values of `step` measured elsewhere (evaluations) and adds them to `last`."""
        self.writer.write(step, values)
        self.last.update(values)


# -------------------------------------------------------------------------------------- state hooks
class Evaluator:
    """Held-out loss and perplexity per source (eval/<source>/loss, /perplexity) over the first
    `num_batches` eval batches of each (read once, at the first evaluation).

    A source with no held-out tokens (eval_fraction=0, or too few examples to hold any out) is
    not reported at all: a loss of 0 / perplexity 1 would read as the best source in every table.
    """

    def __init__(self, trainer: Any, pipeline: BatchSource, num_batches: int,
                 write: Callable[[int, dict], None]):
        self.trainer, self.pipeline, self.num_batches, self.write = trainer, pipeline, int(num_batches), write
        self._sets: dict[str, list] = {}
        self._said_empty: set[str] = set()

    def __call__(self, info: StepInfo) -> None:
        out = {}
        for n in self.pipeline.source_names:
            if n not in self._sets:
                self._sets[n] = self.pipeline.eval_batches(n, self.num_batches)
            nll = weight = 0.0
            for local in self._sets[n]:
                sums = jax.device_get(self.trainer.eval_step(info.state.params, self.trainer.global_batch(local)))
                nll, weight = nll + float(sums.nll), weight + float(sums.weight)
            if weight <= 0:
                if n not in self._said_empty:
                    self._said_empty.add(n)
                    say(f"eval: source {n!r} has no held-out examples (its eval_fraction is 0 or it is too "
                        f"small to hold any out); eval/{n}/loss is not reported")
                continue
            out[f"eval/{n}/loss"] = nll / weight
            out[f"eval/{n}/perplexity"] = math.exp(min(out[f"eval/{n}/loss"], 700.0))
        if not out:
            return
        say(f"eval @ step {info.step}: " + ", ".join(f"{k.split('/')[1]} {v:.4f}"
                                                     for k, v in out.items() if k.endswith("/loss")))
        self.write(info.step, out)


class CheckpointSaver:
    """Saves the state with what resume needs of the data (its state, the tokens seen per source) and
    of the layout (mesh, process count). The checkpointer refuses a non-finite state: the run stops."""

    def __init__(self, ckpt: Checkpointer, pipeline: BatchSource, mesh: jax.sharding.Mesh, tokens: SourceTokens):
        self.ckpt, self.pipeline, self.mesh, self.tokens = ckpt, pipeline, mesh, tokens

    def meta(self) -> dict:
        return {"data_state": self.pipeline.state(), "mesh": dict(self.mesh.shape),
                "process_count": jax.process_count(),
                "source_tokens": {n: int(t) for n, t in zip(self.tokens.names, self.tokens.totals())}}

    def __call__(self, info: StepInfo) -> None:
        try:
            self.ckpt.save(info.state, self.meta())  # checks the updated state finite first
        except NonFiniteStateError as err:
            raise NonFiniteLossError(
                f"step {info.step}: the updated state is not finite ({err}); not saved. "
                f"{last_good(self.ckpt)}Lower config.optim.learning_rate or check the data.") from None
        if info.preempted:
            say(f"SIGTERM: checkpointed step {info.step} to {self.ckpt.directory}; exiting")
