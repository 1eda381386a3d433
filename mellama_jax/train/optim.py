"""AdamW with warmup + decay, global-norm clipping and a weight-decay mask.

Gradient accumulation is not done here (no optax.MultiSteps): the train step scans over
micro-batches and sums gradients, so one optimizer update sees exactly the full-batch gradient.
"""
from __future__ import annotations

from typing import Any

import jax
import optax

from mellama_jax.config_validation import Schedule

# Parameter names (last path component's parent) that are never weight-decayed: norm scales
# and embeddings are not "weights" in the sense of the decay prior (LLaMA / Me-LLaMA practice).
_NO_DECAY = ("norm", "embed_tokens")


def warmup_steps(optim_cfg: Any, total_steps: int) -> int:
    if getattr(optim_cfg, "warmup_steps", -1) is not None and optim_cfg.warmup_steps >= 0:
        return int(optim_cfg.warmup_steps)
    return int(round(optim_cfg.warmup_fraction * total_steps))


def make_schedule(optim_cfg: Any, total_steps: int) -> optax.Schedule:
    """Linear warmup from 0, then cosine / linear decay to lr * min_lr_ratio, or constant."""
    peak = float(optim_cfg.learning_rate)
    end = peak * float(optim_cfg.min_lr_ratio)
    warm = min(warmup_steps(optim_cfg, total_steps), total_steps)
    decay = max(total_steps - warm, 1)
    kind = Schedule.parse(optim_cfg.schedule, "optim.schedule")
    if kind is Schedule.COSINE:
        after = optax.cosine_decay_schedule(peak, decay, alpha=end / peak if peak else 0.0)
    elif kind is Schedule.LINEAR:
        after = optax.linear_schedule(peak, end, decay)
    else:
        after = optax.constant_schedule(peak)
    if warm == 0:
        return after
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warm), after], [warm])


def decay_mask(params: Any) -> Any:
    """True for parameters that get weight decay: matrices outside norms and embeddings."""
    def keep(path, leaf) -> bool:
        names = [getattr(k, "key", getattr(k, "name", str(k))) for k in path]
        if any(any(tag in str(n) for tag in _NO_DECAY) for n in names):
            return False
        return getattr(leaf, "ndim", 2) >= 2
    return jax.tree_util.tree_map_with_path(keep, params)


def make_optimizer(optim_cfg: Any, total_steps: int) -> optax.GradientTransformation:
    """The full update rule; its learning rate is ``make_schedule(optim_cfg, total_steps)``."""
    parts = []
    if optim_cfg.grad_clip_norm and optim_cfg.grad_clip_norm > 0:
        parts.append(optax.clip_by_global_norm(float(optim_cfg.grad_clip_norm)))
    parts.append(optax.adamw(
        make_schedule(optim_cfg, total_steps), b1=float(optim_cfg.b1), b2=float(optim_cfg.b2),
        eps=float(optim_cfg.eps), weight_decay=float(optim_cfg.weight_decay), mask=decay_mask))
    return optax.chain(*parts)
