"""AdamW with a learning-rate schedule, global-norm clipping and a weight-decay mask.

Schedules (``config.optim.schedule``), every one a pure function of the optimizer step (optax's
count, saved in the optimizer state), so a resumed run continues on exactly the same curve:
  cosine | linear | constant  linear warmup, then decay over the remaining steps to
                              ``learning_rate * min_lr_ratio`` (constant: no decay)
  wsd                         warmup-stable-decay: warmup, peak held, then the last
                              ``decay_fraction`` of the steps decay (``decay_shape``: linear,
                              cosine or 1-sqrt) to ``learning_rate * min_lr_ratio``
  cyclic_cosine               ``cycles`` equal cycles of warmup + cosine decay; each cycle after the
                              first warms up again from the previous cycle's end (Levanter's cycles)
Re-warm (``optim.rewarm``, continual pretraining from ``model.init_from``): the first warmup starts at
0 (``rewarm_from=zero``) or at the learning rate the init_from training run ended at
(``rewarm_from=checkpoint``; see ``init_from_last_lr``) and climbs to the new peak over the warmup steps.
Every decay reaches its end value at the step that ends it (``train.steps`` for the whole schedule).

Gradient accumulation is not done here (no optax.MultiSteps): the train step scans over
micro-batches and sums gradients, so one optimizer update sees exactly the full-batch gradient.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax

from mellama_jax.checkpoint import model_spec
from mellama_jax.checkpoint.artifact import EXPERIMENT_CONFIG
from mellama_jax.config_validation import ConfigError, DecayShape, RewarmFrom, Schedule

__all__ = ["warmup_steps", "make_schedule", "schedule_for", "rewarm_start", "init_from_last_lr", "decay_mask",
           "make_optimizer", "cycle_bounds", "decay_steps"]

log = logging.getLogger("mellama_jax.train")

# Parameter names (last path component's parent) that are never weight-decayed: norm scales
# and embeddings are not "weights" in the sense of the decay prior (LLaMA / Me-LLaMA practice).
_NO_DECAY = ("norm", "embed_tokens")

# p in [0, 1] (progress through the decay) -> share of (peak - end) still left.
_SHAPES: dict[DecayShape, Callable[[jax.Array], jax.Array]] = {
    DecayShape.LINEAR: lambda p: 1.0 - p,
    DecayShape.COSINE: lambda p: 0.5 * (1.0 + jnp.cos(jnp.pi * p)),
    DecayShape.ONE_MINUS_SQRT: lambda p: 1.0 - jnp.sqrt(p),
}


def warmup_steps(optim_cfg: Any, total_steps: int) -> int:
    if getattr(optim_cfg, "warmup_steps", -1) is not None and optim_cfg.warmup_steps >= 0:
        return int(optim_cfg.warmup_steps)
    return int(round(optim_cfg.warmup_fraction * total_steps))


def _opt(optim_cfg: Any, key: str, default: Any) -> Any:
    """A key that older configs (and attribute namespaces in tests) may lack."""
    getter = getattr(optim_cfg, "get", None)
    if callable(getter):
        return getter(key, default)
    return getattr(optim_cfg, key, default)


def cycle_bounds(total_steps: int, cycles: int) -> list[int]:
    """Start steps of the cycles plus the end: cycle i is [bounds[i], bounds[i + 1])."""
    return [int(round(i * total_steps / cycles)) for i in range(cycles + 1)]


def decay_steps(optim_cfg: Any, total_steps: int, warm: int) -> int:
    """WSD: steps of the final decay, round(decay_fraction * steps), at most the steps after warmup."""
    d = int(round(float(_opt(optim_cfg, "decay_fraction", 1.0)) * total_steps))
    return max(1, min(d, total_steps - warm))


def _wsd(start: float, peak: float, end: float, warm: int, total: int, decay: int,
         shape: DecayShape) -> optax.Schedule:
    """Warmup start -> peak over `warm` steps, peak held, decay to `end` over the last `decay` steps."""
    d0 = total - decay
    f = _SHAPES[shape]

    def schedule(count):
        t = jnp.asarray(count, jnp.float32)
        ramp = start + (peak - start) * t / max(warm, 1)
        p = jnp.clip((t - d0) / decay, 0.0, 1.0)
        return jnp.where(t < warm, ramp, end + (peak - end) * f(p))
    return schedule


def _warm_then(start: float, peak: float, warm: int, after: optax.Schedule) -> optax.Schedule:
    if warm == 0:
        return after
    return optax.join_schedules([optax.linear_schedule(start, peak, warm), after], [warm])


def make_schedule(optim_cfg: Any, total_steps: int, *, warmup_start: float = 0.0) -> optax.Schedule:
    """The learning rate of each optimizer step (see the module docstring); the first warmup starts
    at `warmup_start` (0, or the init_from run's last lr under rewarm_from=checkpoint)."""
    peak = float(optim_cfg.learning_rate)
    end = peak * float(optim_cfg.min_lr_ratio)
    start = float(warmup_start)
    kind = Schedule.parse(optim_cfg.schedule, "optim.schedule")
    if kind is Schedule.CYCLIC_COSINE:
        cycles = int(_opt(optim_cfg, "cycles", 1))
        if cycles < 1 or cycles > total_steps:
            raise ConfigError(f"config.optim.cycles={cycles}: must be in [1, train.steps={total_steps}]")
        bounds = cycle_bounds(total_steps, cycles)
        parts = []
        for i in range(cycles):
            length = bounds[i + 1] - bounds[i]
            warm = min(warmup_steps(optim_cfg, length), length)
            parts.append(_wsd(start if i == 0 else end, peak, end, warm, length, max(length - warm, 1),
                              DecayShape.COSINE))
        return optax.join_schedules(parts, bounds[1:-1]) if cycles > 1 else parts[0]
    warm = min(warmup_steps(optim_cfg, total_steps), total_steps)
    if kind is Schedule.WSD:
        shape = DecayShape.parse(_opt(optim_cfg, "decay_shape", "linear"), "optim.decay_shape")
        return _wsd(start, peak, end, warm, total_steps, decay_steps(optim_cfg, total_steps, warm), shape)
    decay = max(total_steps - warm, 1)
    if kind is Schedule.COSINE:
        after = optax.cosine_decay_schedule(peak, decay, alpha=end / peak if peak else 0.0)
    elif kind is Schedule.LINEAR:
        after = optax.linear_schedule(peak, end, decay)
    else:
        after = optax.constant_schedule(peak)
    return _warm_then(start, peak, warm, after)


def _read_json(path: str) -> dict | None:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _last_logged_lr(workdir: str, step: int) -> float | None:
    """The learning_rate (or lr) metric of metrics.jsonl's newest row at or before `step`."""
    best = None
    try:
        with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
            for line in f:
                try:
                    row = json.loads(line)
                except ValueError:
                    continue
                lr = row.get("learning_rate", row.get("lr"))
                if lr is not None and int(row.get("step", -1)) <= step:
                    best = float(lr)
    except OSError:
        return None
    return best


def init_from_last_lr(model_cfg: Any) -> float:
    """The learning rate the init_from training run applied at its checkpoint's last update.

    Recomputed from that workdir's experiment_config.json (its optim block and train.steps) at the
    checkpoint's step: exact for any saved step, even where metrics.jsonl ran on past it. A workdir
    without an experiment config falls back to metrics.jsonl's last logged learning_rate up to that
    step. A Hugging Face or converted model has no learning rate: refused (ConfigError), never 0 in
    silence, since rewarm_from=zero says that explicitly.
    """
    artifact = model_spec.init_artifact(model_cfg)
    if artifact is None or artifact.kind != "training" or artifact.step is None:
        what = "no model.init_from" if artifact is None else f"a {artifact.kind} model ({artifact.root})"
        raise ConfigError(f"config.optim.rewarm_from='checkpoint' needs model.init_from to be a training "
                          f"workdir (it has a last learning rate); got {what}. Use "
                          "config.optim.rewarm_from=zero to warm up from 0")
    workdir, step = os.path.dirname(artifact.root), int(artifact.step)
    saved = _read_json(os.path.join(workdir, EXPERIMENT_CONFIG))
    if saved and "optim" in saved and "train" in saved and "model" in saved:
        old = ml_collections.ConfigDict(saved)
        # The step-th update (count step - 1) is the last one that checkpoint applied.
        return float(schedule_for(old)(max(step - 1, 0)))
    lr = _last_logged_lr(workdir, step)
    if lr is None:
        raise ConfigError(f"config.optim.rewarm_from='checkpoint': {workdir} has neither "
                          f"{EXPERIMENT_CONFIG} nor a learning_rate in metrics.jsonl up to step {step}")
    return lr


def rewarm_start(config: Any) -> float:
    """Where the first warmup starts: 0, or init_from's last lr under optim.rewarm + rewarm_from=checkpoint."""
    optim_cfg = config.optim
    if not bool(_opt(optim_cfg, "rewarm", False)):
        return 0.0
    source = RewarmFrom.parse(_opt(optim_cfg, "rewarm_from", "zero"), "optim.rewarm_from")
    if not config.model.init_from:
        raise ConfigError("config.optim.rewarm=True re-warms a continued run: set config.model.init_from")
    if source is RewarmFrom.ZERO:
        return 0.0
    lr = init_from_last_lr(config.model)
    log.info("optim: re-warming from the init_from run's last learning rate %.6g to %.6g",
             lr, float(optim_cfg.learning_rate))
    return lr


def schedule_for(config: Any) -> optax.Schedule:
    """The schedule of an experiment config (re-warm start resolved from config.model.init_from; an
    init_from run that re-warmed itself is resolved the same way, down its chain)."""
    return make_schedule(config.optim, int(config.train.steps), warmup_start=rewarm_start(config))


def decay_mask(params: Any) -> Any:
    """True for parameters that get weight decay: matrices outside norms and embeddings."""
    def keep(path, leaf) -> bool:
        names = [getattr(k, "key", getattr(k, "name", str(k))) for k in path]
        if any(any(tag in str(n) for tag in _NO_DECAY) for n in names):
            return False
        return getattr(leaf, "ndim", 2) >= 2
    return jax.tree_util.tree_map_with_path(keep, params)


def make_optimizer(optim_cfg: Any, total_steps: int, schedule: optax.Schedule | None = None
                   ) -> optax.GradientTransformation:
    """The full update rule; its learning rate is `schedule` (default ``make_schedule(optim_cfg, total_steps)``)."""
    parts = []
    if optim_cfg.grad_clip_norm and optim_cfg.grad_clip_norm > 0:
        parts.append(optax.clip_by_global_norm(float(optim_cfg.grad_clip_norm)))
    parts.append(optax.adamw(
        schedule if schedule is not None else make_schedule(optim_cfg, total_steps),
        b1=float(optim_cfg.b1), b2=float(optim_cfg.b2),
        eps=float(optim_cfg.eps), weight_decay=float(optim_cfg.weight_decay), mask=decay_mask))
    return optax.chain(*parts)
