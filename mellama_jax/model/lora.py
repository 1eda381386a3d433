"""LoRA as a small transform over the parameter tree: adapter shapes, init, scaling, merge.

Adapters are a pytree of their own, the Flax variable collection "lora", mirroring the params tree:
    {"layers": {"attention": {"q_proj": {"a": [L, in..., r], "b": [L, r, out...]}, ...},
                "mlp": {"gate_proj": {...}, ...}}}
The model (model/llama.py `_with_lora`) adds (x @ A) @ (B * alpha / r) inside each targeted
projection, so training never materialises a full-size weight delta (what makes LoRA on 70B cheap),
and the frozen base params and the trainable adapters are two separate trees: the optimizer only ever
sees the adapters. A and B carry the logical axes of the weight they adapt (A's input dims, B's output
dims; the rank is replicated), so they shard by the same `config.sharding.rules`.

Why not qwix: it intercepts every dot_general of a linen module and names adapters after the call
site; our projections are einsums over [embed, heads, head_dim] kernels stacked by nn.scan, and we
want adapters as a separate tree with our logical axes and a 1:1 map onto PEFT's names. That is the
math here plus the PEFT format and checkpoint I/O in checkpoint/lora_io.py, tested against PEFT, and
adds no dependency.

Conventions follow PEFT's LoraLayer so exports load in `peft`: A is initialised kaiming-uniform
(a = sqrt(5), i.e. U(-1/sqrt(fan_in), 1/sqrt(fan_in))), B zeros; scaling = alpha / rank; dropout on
the adapter's input only.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Iterable, Mapping

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from mellama_jax.model.config import PROJECTIONS, LlamaConfig, Projection

__all__ = ["LoraSpec", "TARGETS", "spec_from_config", "adapter_shapes", "adapter_logical_axes",
           "init_adapters", "scaled", "merge", "adapter_layout", "adapter_tree", "count_params"]

# short name (q, k, v, o, gate, up, down) -> the projection it adapts
TARGETS: dict[str, Projection] = {p.short: p for p in PROJECTIONS}


@dataclasses.dataclass(frozen=True)
class LoraSpec:
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: tuple[str, ...] = ("q", "k", "v", "o", "gate", "up", "down")

    @property
    def scale(self) -> float:
        return float(self.alpha) / float(self.rank)

    def to_dict(self) -> dict:
        return {"rank": self.rank, "alpha": self.alpha, "dropout": self.dropout, "targets": list(self.targets)}

    @classmethod
    def from_dict(cls, body: Mapping[str, Any]) -> "LoraSpec":
        """The inverse of `to_dict` (targets in any accepted spelling)."""
        return cls(int(body["rank"]), float(body["alpha"]), float(body.get("dropout", 0.0)),
                   _parse_targets(body["targets"]))


def _parse_targets(targets: Any) -> tuple[str, ...]:
    if isinstance(targets, str):
        targets = [t for t in targets.replace(" ", "").split(",") if t]
    names = []
    for t in targets:
        t = str(t)
        short = t[:-5] if t.endswith("_proj") else t  # accept PEFT's q_proj / gate_proj spelling too
        if short not in TARGETS:
            raise ValueError(f"config.lora.targets: unknown target {t!r}; expected any of {list(TARGETS)}")
        if short not in names:
            names.append(short)
    if not names:
        raise ValueError("config.lora.targets is empty: name at least one of " + ",".join(TARGETS))
    return tuple(n for n in TARGETS if n in names)  # canonical order


def spec_from_config(lora_cfg: Any) -> LoraSpec | None:
    """LoraSpec from config.lora (None when absent or `enabled` is false); errors name the key."""
    if lora_cfg is None or not bool(getattr(lora_cfg, "enabled", False)):
        return None
    rank, alpha, dropout = int(lora_cfg.rank), float(lora_cfg.alpha), float(lora_cfg.dropout)
    if rank < 1:
        raise ValueError(f"config.lora.rank={rank}: must be >= 1")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"config.lora.dropout={dropout}: must be in [0, 1)")
    return LoraSpec(rank, alpha, dropout, _parse_targets(lora_cfg.targets))


def adapter_layout(config: LlamaConfig, spec: LoraSpec) -> Iterable[tuple[str, Projection, tuple, tuple]]:
    """(short name, projection, its input dims, its output dims) per target, in canonical order."""
    for name in spec.targets:
        t = TARGETS[name]
        yield name, t, t.in_shape(config), t.out_shape(config)


def adapter_tree(config: LlamaConfig, spec: LoraSpec, leaf) -> dict:
    """The adapters tree with `leaf(name, projection, ins, outs, "a" | "b")` at each A / B."""
    out: dict = {"layers": {}}
    for name, t, ins, outs in adapter_layout(config, spec):
        group, proj = t.module
        out["layers"].setdefault(group, {})[proj] = {"a": leaf(name, t, ins, outs, "a"),
                                                    "b": leaf(name, t, ins, outs, "b")}
    return out


def adapter_shapes(config: LlamaConfig, spec: LoraSpec, dtype: str = "float32") -> dict:
    """ShapeDtypeStructs of the adapters (allocates nothing)."""
    L, r = config.num_hidden_layers, spec.rank

    def leaf(name, t, ins, outs, which):
        shape = (L,) + ins + (r,) if which == "a" else (L, r) + outs
        return jax.ShapeDtypeStruct(shape, jnp.dtype(dtype))
    return adapter_tree(config, spec, leaf)


def adapter_logical_axes(config: LlamaConfig, spec: LoraSpec) -> dict:
    """PartitionSpecs of logical names: A/B take the axes of the dims they share with the weight."""
    def leaf(name, t, ins, outs, which):
        return P("layers", *t.in_axes, None) if which == "a" else P("layers", None, *t.out_axes)
    return adapter_tree(config, spec, leaf)


def init_adapters(config: LlamaConfig, spec: LoraSpec, rng: jax.Array, dtype: str = "float32") -> dict:
    """A ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (PEFT's kaiming_uniform(a=sqrt 5)), B = 0: the adapted
    model starts exactly at the base model."""
    shapes = adapter_shapes(config, spec, dtype)
    leaves, treedef = jax.tree.flatten(shapes)
    keys = jax.random.split(rng, len(leaves))
    out = []
    for key, (path, sds) in zip(keys, jax.tree_util.tree_flatten_with_path(shapes)[0]):
        if path[-1].key == "a":
            fan_in = math.prod(sds.shape[1:-1])
            bound = 1.0 / math.sqrt(fan_in)
            out.append(jax.random.uniform(key, sds.shape, sds.dtype, -bound, bound))
        else:
            out.append(jnp.zeros(sds.shape, sds.dtype))
    return jax.tree.unflatten(treedef, out)


def scaled(adapters: dict, spec: LoraSpec) -> dict:
    """The "lora" collection the model reads: B multiplied by alpha / rank (differentiable)."""
    return jax.tree_util.tree_map_with_path(
        lambda path, x: x * spec.scale if path[-1].key == "b" else x, adapters)


def _delta(a: jax.Array, b: jax.Array) -> jax.Array:
    """[L, in..., r] x [L, r, out...] -> [L, in..., out...] in float32."""
    L, r = a.shape[0], a.shape[-1]
    ins, outs = a.shape[1:-1], b.shape[2:]
    flat = jnp.einsum("lir,lro->lio", a.reshape(L, -1, r).astype(jnp.float32),
                      b.reshape(L, r, -1).astype(jnp.float32))
    return flat.reshape((L,) + ins + outs)


def merge(params: dict, adapters: dict, spec: LoraSpec) -> dict:
    """Base params with W + (alpha / r) A B folded in (float32 arithmetic, stored in W's dtype)."""
    out = jax.tree.map(lambda x: x, params)
    for group, projs in adapters["layers"].items():
        for proj, ab in projs.items():
            w = params["layers"][group][proj]
            merged = jnp.asarray(w, jnp.float32) + spec.scale * _delta(jnp.asarray(ab["a"]), jnp.asarray(ab["b"]))
            out["layers"][group][proj] = merged.astype(w.dtype)
    return out


def count_params(tree: Any) -> int:
    return int(sum(math.prod(x.shape) for x in jax.tree.leaves(tree)))
