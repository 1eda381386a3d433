"""Training FLOPs, MFU, and the metrics writer (metrics.jsonl + TensorBoard + console).

FLOPs per trained token (forward + backward, the PaLM appendix-B convention):

    flops_per_token = 6 * N_matmul + 12 * L * H * S

- N_matmul: parameters that take part in matmuls = all parameters minus the input embedding
  table (a gather, not a matmul) and the norm scales; the LM head counts (tied or not).
  6 = 2 FLOPs per multiply-add x (1 forward + 2 backward passes).
- 12 * L * H * S: attention scores QK^T and the weighted sum AV, 2 matmuls of
  2 * S * H FLOPs per token per layer forward, x3 for forward + backward. H = heads * head_dim,
  S = sequence length. Causal masking is NOT discounted (the PaLM and Megatron count; MaxText
  halved it in 2026), so the MFU is comparable with published numbers and every figure this
  project has reported; remat recomputation is not counted (MFU, not HFU).
  Consequence: a causal kernel that skips the masked blocks (splash attention computes ~53% of
  the score blocks at 8,192 tokens) executes less than 12LHS, so an MFU bound from executed FLOPs
  can pass 100% where attention is a large share (LLaMA-3 8B at 8,192 tokens: 104.7%). The
  planner then also prints the causal count (``causal=True``: 6LHS, attention halved), which a
  real causal run cannot exceed.

MFU = achieved model FLOP/s / (num_devices * peak bf16 dense FLOP/s per device).
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from typing import Any, Iterator, Mapping

import jax

from mellama_jax import fs

log = logging.getLogger(__name__)

# Peak dense bf16 TFLOP/s per chip (vendor datasheets; no sparsity).
PEAK_BF16_TFLOPS: dict[str, float] = {
    "h100": 989.0,  # H100 SXM5 (PCIe: 756; override with config.hardware.peak_tflops)
    "h200": 989.0,
    "a100": 312.0,
    "tpu v4": 275.0,
    "tpu v5 lite": 197.0,  # v5e reports device_kind "TPU v5 lite"
    "tpu v5e": 197.0,
    "tpu v5p": 459.0,
    "tpu v5": 459.0,  # v5p reports "TPU v5"
    "tpu v6 lite": 918.0,  # Trillium / v6e
}


def peak_tflops_for(device_kind: str) -> float | None:
    """Table lookup by device_kind substring (longest key first, so "tpu v5 lite" beats "tpu v5")."""
    kind = device_kind.lower()
    for key in sorted(PEAK_BF16_TFLOPS, key=len, reverse=True):
        if key in kind:
            return PEAK_BF16_TFLOPS[key]
    return None


def resolve_peak_tflops(override: float = 0.0, device: jax.Device | None = None) -> float | None:
    """config.hardware.peak_tflops if > 0, else the chip table, else None (MFU not reported)."""
    if override and override > 0:
        return float(override)
    device = device or jax.devices()[0]
    return peak_tflops_for(getattr(device, "device_kind", ""))


def matmul_params(model_config: Any) -> int:
    """Parameters used in matmuls: all minus the input embedding and the norm scales."""
    h, n_layers = model_config.hidden_size, model_config.num_hidden_layers
    n = model_config.num_params()
    n -= model_config.vocab_size * h  # input embedding lookup is a gather
    n -= (2 * n_layers + 1) * h  # RMSNorm scales
    if model_config.tie_word_embeddings:
        n += model_config.vocab_size * h  # the tied table is still the LM head matmul
    return n


def flops_per_token(model_config: Any, seq_len: int, causal: bool = False) -> float:
    """Training FLOPs per token (forward + backward), see the module docstring; ``causal``: the
    attention term halved (only the unmasked half of the scores), 6N + 6LHS."""
    attn_width = model_config.num_attention_heads * model_config.head_dim
    attention = 12.0 * model_config.num_hidden_layers * attn_width * seq_len
    return 6.0 * matmul_params(model_config) + (attention / 2 if causal else attention)


def mfu(tokens_per_second: float, model_config: Any, seq_len: int, num_devices: int,
        peak_tflops: float | None) -> float | None:
    if not peak_tflops:
        return None
    achieved = tokens_per_second * flops_per_token(model_config, seq_len)
    return achieved / (num_devices * peak_tflops * 1e12)


def _jsonable(v: Any) -> Any:
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and (v != v or v in (float("inf"), float("-inf"))):
        return str(v)  # JSON has no NaN/inf; keep them readable
    return v


def read_metrics_lines(path: str) -> Iterator[tuple[int, str, dict | None]]:
    """(line number, line, record) for each non-blank line of a metrics.jsonl.

    `record` is None for a line that is not a complete record: one that is not a JSON object with
    an integer "step", or one without its newline (cut mid-write by a killed run: even if it
    parses, it is not complete). The one reader of the file: the trainer drops such lines on
    resume; the sweep tolerates only the last one.
    """
    with fs.open(path, "r", encoding="utf-8", errors="replace") as f:  # a local file or an object
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                int(record["step"])
            except (ValueError, KeyError, TypeError, RecursionError):
                yield lineno, line, None
                continue
            yield lineno, line, record if line.endswith("\n") else None


class MetricsWriter:
    """Appends one JSON object per logged step to metrics.jsonl and mirrors scalars to TensorBoard.

    Only process 0 writes. TensorBoard (tensorboardX) is optional: without it only the JSONL is
    written. ``truncate_after(step)`` drops records of steps a resumed run will redo.
    """

    def __init__(self, workdir: str, enabled: bool | None = None):
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self.path = os.path.join(workdir, "metrics.jsonl")
        self._tb = None
        if self.enabled:
            os.makedirs(workdir, exist_ok=True)
            try:  # optional: without it only the JSONL is written
                from tensorboardX import SummaryWriter
                self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
            except ImportError:
                log.info("tensorboardX not installed; writing metrics.jsonl only")

    def truncate_after(self, step: int) -> None:
        """Keeps the records of steps <= ``step`` (the restored checkpoint; 0 for a fresh start).

        A line that is not a complete JSON record (the torn last line of a killed run, or any
        unreadable line) is dropped with a warning naming its line number, never a reason to stop.
        """
        if not self.enabled or not os.path.exists(self.path):
            return
        keep, torn = [], []
        for lineno, line, record in read_metrics_lines(self.path):
            if record is None:
                torn.append(lineno)
            elif int(record["step"]) <= step:
                keep.append(line)
        if torn:
            log.warning("%s: dropped %d incomplete line(s) (line %s)", self.path, len(torn),
                        ", ".join(map(str, torn[:5])))
        tmp = self.path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(keep)
        os.replace(tmp, self.path)

    def write(self, step: int, values: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"step": int(step), **{k: _jsonable(v) for k, v in values.items()}}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)):
                    self._tb.add_scalar(k, v, step)
            self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def say(msg: str) -> None:
    """A progress line on the console, once per run (process 0)."""
    if jax.process_index() == 0:
        print(msg, flush=True)


def console_line(step: int, total: int, values: Mapping[str, Any]) -> str:
    parts = [f"step {step}/{total}"]
    for key, fmt in (("loss", "loss {:.4f}"), ("learning_rate", "lr {:.3g}"),
                     ("grad_norm", "gnorm {:.3f}"), ("tokens_per_second", "{:,.0f} tok/s"),
                     ("step_time", "{:.3f}s/step"), ("mfu", "mfu {:.1%}")):
        if values.get(key) is not None:
            parts.append(fmt.format(values[key]))
    return " | ".join(parts)


class StepTimer:
    """Wall time between consecutive host-side syncs, for tokens/s over a logging window, less the
    time spent `aside()` since the previous lap (evaluation, checkpoints: not training steps)."""

    def __init__(self) -> None:
        self.t = time.perf_counter()
        self._aside = 0.0

    def lap(self) -> float:
        now = time.perf_counter()
        dt, self.t = now - self.t, now
        dt, self._aside = dt - self._aside, 0.0
        return dt

    @contextlib.contextmanager
    def aside(self) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self._aside += time.perf_counter() - start
