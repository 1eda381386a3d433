"""LoRA adapters on disk: the PEFT format (export) and the files of a LoRA SFT checkpoint.

A LoRA training checkpoint holds `<checkpoints>/adapter_config.json` ({"kind": "lora", rank, alpha,
dropout, targets, the base it adapts and its pin (step + weights fingerprint, see
checkpoint/artifact.py base_pin), the chat template}) beside model_config.json, and an Orbax
item `adapters/` per step instead of `params/`. `merge_adapter_item` is the artifact loader for
that kind (checkpoint/artifact.py ADAPTER_LOADERS): base params + the step's adapters -> merged.

PEFT's format (adapter_config.json + adapter_model.safetensors) names each adapter after the HF
module it adapts: lora_A.weight [r, in_features], lora_B.weight [out_features, r] per layer. The
adapter math (shapes, init, scaling, merge) is model/lora.py's.
"""
from __future__ import annotations

import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import orbax.checkpoint as ocp

from mellama_jax.checkpoint.safetensors_io import write_file
from mellama_jax.model.config import LlamaConfig, Projection
from mellama_jax.model.lora import TARGETS, LoraSpec, adapter_layout, adapter_shapes, adapter_tree, merge

__all__ = ["ADAPTER_CONFIG", "ADAPTERS_ITEM", "PEFT_WEIGHTS", "peft_tensors", "adapters_from_peft", "peft_config",
           "write_adapter_config", "read_adapter_config", "restore_adapters", "merge_adapter_item",
           "write_peft_adapter"]

ADAPTER_CONFIG = "adapter_config.json"   # beside model_config.json (ours) or in a PEFT export (PEFT's)
ADAPTERS_ITEM = "adapters"               # the Orbax item of a LoRA training step
PEFT_WEIGHTS = "adapter_model.safetensors"


# --------------------------------------------------------------------------------------------------
# PEFT format: adapter_config.json + adapter_model.safetensors
# --------------------------------------------------------------------------------------------------
def _peft_name(t: Projection, layer: int, which: str) -> str:
    return f"base_model.model.model.layers.{layer}.{t.hf}.lora_{which.upper()}.weight"


def peft_tensors(adapters: dict, config: LlamaConfig, spec: LoraSpec, dtype: Any = np.float32) -> dict[str, np.ndarray]:
    """PEFT tensor names -> arrays: lora_A.weight [r, in_features], lora_B.weight [out_features, r]."""
    out = {}
    for name, t, ins, outs in adapter_layout(config, spec):
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
    return adapter_tree(config, spec, leaf)


def peft_config(spec: LoraSpec, base_model: str = "") -> dict:
    """adapter_config.json as PEFT writes it for a LoRA on a LlamaForCausalLM."""
    return {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model,
        "r": spec.rank, "lora_alpha": spec.alpha, "lora_dropout": spec.dropout,
        "target_modules": [TARGETS[n].name for n in spec.targets], "bias": "none",
        "fan_in_fan_out": False, "inference_mode": True, "init_lora_weights": True,
        "modules_to_save": None, "use_rslora": False, "use_dora": False, "layers_to_transform": None,
        "layers_pattern": None, "rank_pattern": {}, "alpha_pattern": {},
    }


# --------------------------------------------------------------------------------------------------
# SFT checkpoints: adapter_config.json beside model_config.json, adapters item per step
# --------------------------------------------------------------------------------------------------
def write_adapter_config(directory: str, spec: LoraSpec, base: str, chat_template: str | None = None,
                         base_pin: dict | None = None) -> str:
    """<checkpoints>/adapter_config.json: what the adapters are and which base they adapt (`base_pin`:
    the step and fingerprint of the base's weights, which merging and resuming check)."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, ADAPTER_CONFIG)
    body = {"kind": "lora", **spec.to_dict(), "base": os.path.abspath(os.path.expanduser(base)) if base else "",
            "chat_template": chat_template}
    if base_pin:
        body["base_pin"] = base_pin
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
    return LoraSpec.from_dict(body), body


def restore_adapters(item_dir: str, config: LlamaConfig, spec: LoraSpec, target: Any = None) -> dict:
    """The adapters tree of one checkpoint step (onto `target` shardings when given)."""
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
    spec, body = read_adapter_config(os.path.join(artifact.root, ADAPTER_CONFIG))
    tree = restore_adapters(artifact.adapters["item_dir"], artifact.model_config, spec)
    np_dtype = ml_dtypes.bfloat16 if dtype == "bfloat16" else np.dtype(dtype) if dtype else np.float32
    tensors = peft_tensors(tree, artifact.model_config, spec, np_dtype)
    write_file(os.path.join(out, PEFT_WEIGHTS), sorted(tensors.items()))
    with open(os.path.join(out, ADAPTER_CONFIG), "w") as f:
        json.dump(peft_config(spec, body.get("base") or ""), f, indent=2, sort_keys=True)
        f.write("\n")
