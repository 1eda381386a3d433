"""LoRA as a small transform over the parameter tree: adapter shapes, init, scaling, merge, PEFT I/O.

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
want adapters as a separate tree with our logical axes and a 1:1 map onto PEFT's names. That is ~150
lines here, tested against PEFT, and adds no dependency.

Conventions follow PEFT's LoraLayer so exports load in `peft`: A is initialised kaiming-uniform
(a = sqrt(5), i.e. U(-1/sqrt(fan_in), 1/sqrt(fan_in))), B zeros; scaling = alpha / rank; dropout on
the adapter's input only.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any, Iterable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from mellama_jax.model.config import LlamaConfig

__all__ = ["LoraSpec", "TARGETS", "spec_from_config", "adapter_shapes", "adapter_logical_axes",
           "init_adapters", "scaled", "merge", "peft_tensors", "adapters_from_peft", "peft_config",
           "ADAPTER_CONFIG", "write_adapter_config", "read_adapter_config", "merge_adapter_item",
           "count_params"]

ADAPTER_CONFIG = "adapter_config.json"
ADAPTERS_ITEM = "adapters"


@dataclasses.dataclass(frozen=True)
class _Target:
    module: tuple[str, str]   # path under "layers"
    hf: str                   # HF module name under model.layers.{i}
    in_axes: tuple[str, ...]
    out_axes: tuple[str, ...]


# short name -> where the projection lives and the logical axes of its input / output dims
TARGETS: dict[str, _Target] = {
    "q": _Target(("attention", "q_proj"), "self_attn.q_proj", ("embed",), ("heads", "head_dim")),
    "k": _Target(("attention", "k_proj"), "self_attn.k_proj", ("embed",), ("kv_heads", "head_dim")),
    "v": _Target(("attention", "v_proj"), "self_attn.v_proj", ("embed",), ("kv_heads", "head_dim")),
    "o": _Target(("attention", "o_proj"), "self_attn.o_proj", ("heads", "head_dim"), ("embed",)),
    "gate": _Target(("mlp", "gate_proj"), "mlp.gate_proj", ("embed",), ("mlp",)),
    "up": _Target(("mlp", "up_proj"), "mlp.up_proj", ("embed",), ("mlp",)),
    "down": _Target(("mlp", "down_proj"), "mlp.down_proj", ("mlp",), ("embed",)),
}


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


def _dims(config: LlamaConfig) -> dict[str, int]:
    return {"embed": config.hidden_size, "heads": config.num_attention_heads,
            "kv_heads": config.num_key_value_heads, "head_dim": config.head_dim,
            "mlp": config.intermediate_size}


def _layout(config: LlamaConfig, spec: LoraSpec) -> Iterable[tuple[str, _Target, tuple, tuple]]:
    dims = _dims(config)
    for name in spec.targets:
        t = TARGETS[name]
        yield name, t, tuple(dims[a] for a in t.in_axes), tuple(dims[a] for a in t.out_axes)


def _tree(config: LlamaConfig, spec: LoraSpec, leaf) -> dict:
    out: dict = {"layers": {}}
    for name, t, ins, outs in _layout(config, spec):
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
    return _tree(config, spec, leaf)


def adapter_logical_axes(config: LlamaConfig, spec: LoraSpec) -> dict:
    """PartitionSpecs of logical names: A/B take the axes of the dims they share with the weight."""
    def leaf(name, t, ins, outs, which):
        return P("layers", *t.in_axes, None) if which == "a" else P("layers", None, *t.out_axes)
    return _tree(config, spec, leaf)


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


# --------------------------------------------------------------------------------------------------
# PEFT format: adapter_config.json + adapter_model.safetensors
# --------------------------------------------------------------------------------------------------
def _peft_name(t: _Target, layer: int, which: str) -> str:
    return f"base_model.model.model.layers.{layer}.{t.hf}.lora_{which.upper()}.weight"


def peft_tensors(adapters: dict, config: LlamaConfig, spec: LoraSpec, dtype: Any = np.float32) -> dict[str, np.ndarray]:
    """PEFT tensor names -> arrays: lora_A.weight [r, in_features], lora_B.weight [out_features, r]."""
    out = {}
    for name, t, ins, outs in _layout(config, spec):
        group, proj = t.module
        a = np.asarray(adapters["layers"][group][proj]["a"], np.float32)
        b = np.asarray(adapters["layers"][group][proj]["b"], np.float32)
        for i in range(config.num_hidden_layers):
            out[_peft_name(t, i, "a")] = np.ascontiguousarray(a[i].reshape(-1, spec.rank).T).astype(dtype)
            out[_peft_name(t, i, "b")] = np.ascontiguousarray(b[i].reshape(spec.rank, -1).T).astype(dtype)
    return out


def adapters_from_peft(tensors: dict[str, np.ndarray], config: LlamaConfig, spec: LoraSpec) -> dict:
    """The inverse of `peft_tensors` (also reads adapters trained with PEFT on the same targets)."""
    def leaf(name, t, ins, outs, which):
        stack = []
        for i in range(config.num_hidden_layers):
            key = _peft_name(t, i, which)
            if key not in tensors:
                raise KeyError(f"adapter tensor {key!r} missing")
            w = np.asarray(tensors[key], np.float32)
            stack.append(w.T.reshape(ins + (spec.rank,)) if which == "a" else w.T.reshape((spec.rank,) + outs))
        return np.stack(stack)
    return _tree(config, spec, leaf)


def peft_config(spec: LoraSpec, base_model: str = "") -> dict:
    """adapter_config.json as PEFT writes it for a LoRA on a LlamaForCausalLM."""
    return {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model,
        "r": spec.rank, "lora_alpha": spec.alpha, "lora_dropout": spec.dropout,
        "target_modules": [TARGETS[n].module[1] for n in spec.targets], "bias": "none",
        "fan_in_fan_out": False, "inference_mode": True, "init_lora_weights": True,
        "modules_to_save": None, "use_rslora": False, "use_dora": False, "layers_to_transform": None,
        "layers_pattern": None, "rank_pattern": {}, "alpha_pattern": {},
    }


# --------------------------------------------------------------------------------------------------
# SFT checkpoints: adapter_config.json beside model_config.json, adapters item per step
# --------------------------------------------------------------------------------------------------
def write_adapter_config(directory: str, spec: LoraSpec, base: str, chat_template: str | None = None) -> str:
    """<checkpoints>/adapter_config.json: what the adapters are and which base they adapt."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, ADAPTER_CONFIG)
    body = {"kind": "lora", **spec.to_dict(), "base": os.path.abspath(os.path.expanduser(base)) if base else "",
            "chat_template": chat_template}
    with open(path + ".tmp", "w") as f:
        json.dump(body, f, indent=2, sort_keys=True)
    os.replace(path + ".tmp", path)
    return path


def read_adapter_config(path: str) -> tuple[LoraSpec, dict]:
    """(spec, the whole dict) from an adapter_config.json file or the directory holding it."""
    if os.path.isdir(path):
        path = os.path.join(path, ADAPTER_CONFIG)
    with open(path) as f:
        body = json.load(f)
    if body.get("kind") != "lora":
        raise ValueError(f"{path}: kind {body.get('kind')!r} is not 'lora'")
    spec = LoraSpec(int(body["rank"]), float(body["alpha"]), float(body.get("dropout", 0.0)),
                    _parse_targets(body["targets"]))
    return spec, body


def restore_adapters(item_dir: str, config: LlamaConfig, spec: LoraSpec, target: Any = None) -> dict:
    """The adapters tree of one checkpoint step (onto `target` shardings when given)."""
    import orbax.checkpoint as ocp

    if target is None:
        target = adapter_shapes(config, spec)
    with ocp.StandardCheckpointer() as ckptr:
        return ckptr.restore(os.path.abspath(item_dir), target)


def merge_adapter_item(base_params: Any, adapters: dict, artifact: Any, target: Any = None) -> Any:
    """Artifact hook (checkpoint/artifact.py ADAPTER_LOADERS["lora"]): base params + the step's
    adapters -> merged params."""
    spec, _ = read_adapter_config(adapters["config"] if isinstance(adapters.get("config"), str)
                                  else os.path.join(artifact.root, ADAPTER_CONFIG))
    tree = restore_adapters(adapters["item_dir"], artifact.model_config, spec)
    merged = merge(base_params, tree, spec)
    if target is not None:
        merged = jax.tree.map(lambda x, t: jax.device_put(jnp.asarray(x, t.dtype), getattr(t, "sharding", None)),
                              merged, target)
    return merged


def write_peft_adapter(artifact: Any, out: str, dtype: str | None = None) -> None:
    """PEFT's adapter format for a LoRA artifact: adapter_config.json + adapter_model.safetensors."""
    from mellama_jax.checkpoint.safetensors_io import write_file

    spec, body = read_adapter_config(os.path.join(artifact.root, ADAPTER_CONFIG))
    tree = restore_adapters(artifact.adapters["item_dir"], artifact.model_config, spec)
    np_dtype = np.dtype(dtype) if dtype and dtype != "bfloat16" else np.float32
    if dtype == "bfloat16":
        import ml_dtypes
        np_dtype = ml_dtypes.bfloat16
    tensors = peft_tensors(tree, artifact.model_config, spec, np_dtype)
    write_file(os.path.join(out, "adapter_model.safetensors"), sorted(tensors.items()))
    with open(os.path.join(out, "adapter_config.json"), "w") as f:
        json.dump(peft_config(spec, body.get("base") or ""), f, indent=2, sort_keys=True)
        f.write("\n")
