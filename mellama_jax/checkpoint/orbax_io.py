"""The model checkpoint layout shared by the converter, training and evaluation.

A model checkpoint directory holds `model_config.json` (LlamaConfig.to_dict()), an Orbax item
`params/` with the plain parameter pytree, and optionally the tokenizer files. Training's
CheckpointManager writes `<workdir>/checkpoints/<step>/params` plus `<workdir>/checkpoints/model_config.json`.
"""
from __future__ import annotations

import json
import os
import shutil
from typing import Any

import jax

from mellama_jax.model.config import LlamaConfig

MODEL_CONFIG = "model_config.json"
PARAMS_ITEM = "params"


def write_model_config(directory: str, config: LlamaConfig) -> str:
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, MODEL_CONFIG)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(config.to_json())
    os.replace(tmp, path)
    return path


def read_model_config(directory: str) -> LlamaConfig:
    path = os.path.join(directory, MODEL_CONFIG)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: missing; not a mellama-jax model checkpoint directory")
    with open(path) as f:
        try:
            return LlamaConfig.from_dict(json.load(f))
        except (ValueError, TypeError) as err:
            raise ValueError(f"{path}: {err}") from err


def save_params(directory: str, config: LlamaConfig, params: Any, tokenizer_files: tuple[str, ...] = ()) -> str:
    """Write a self-contained model checkpoint (config, params, tokenizer files) to `directory`."""
    import orbax.checkpoint as ocp

    directory = os.path.abspath(directory)
    os.makedirs(directory, exist_ok=True)
    item = os.path.join(directory, PARAMS_ITEM)
    if os.path.exists(item):
        raise FileExistsError(f"{item}: already exists; choose a new output directory")
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(item, params)
    checkpointer.wait_until_finished()
    for path in tokenizer_files:
        shutil.copy2(path, os.path.join(directory, os.path.basename(path)))
    write_model_config(directory, config)
    return directory


class StreamingParamsWriter:
    """Writes a params item one parameter at a time (Orbax partial saves), then commits it atomically.

    Nothing becomes visible at `item_dir` until `finalize()`; an interrupted conversion leaves no
    half-written checkpoint behind.
    """

    def __init__(self, item_dir: str):
        self.item_dir = os.path.abspath(item_dir)

    def add(self, path: tuple[str, ...], value: Any) -> None:
        from orbax.checkpoint.experimental.v1 import partial

        tree: Any = value
        for key in reversed(path):
            tree = {key: tree}
        partial.save(self.item_dir, tree)

    def finalize(self) -> None:
        from orbax.checkpoint.experimental.v1 import partial

        partial.finalize(self.item_dir)


def _is_v1_item(item_dir: str) -> bool:
    """Orbax's v1 API (used by the streaming converter) marks its checkpoints with this file."""
    return os.path.isfile(os.path.join(item_dir, "orbax.checkpoint"))


def restore_params(item_dir: str, target: Any = None) -> Any:
    """Restore a params item; `target` (arrays or ShapeDtypeStructs with shardings) places it on a mesh."""
    import orbax.checkpoint as ocp

    item_dir = os.path.abspath(item_dir)
    if not os.path.isdir(item_dir):
        raise FileNotFoundError(f"{item_dir}: no Orbax params item here")
    if _is_v1_item(item_dir):
        import orbax.checkpoint.experimental.v1 as ocp_v1

        return ocp_v1.load(item_dir, target)
    checkpointer = ocp.StandardCheckpointer()
    if target is None:
        return checkpointer.restore(item_dir)
    return checkpointer.restore(item_dir, target)


def abstract_params(config: LlamaConfig, shardings: Any = None, dtype=None) -> Any:
    """ShapeDtypeStructs of the params (optionally with shardings), for restoring onto a mesh."""
    from mellama_jax.model.llama import param_shapes

    shapes = param_shapes(config)
    if shardings is None:
        return jax.tree_util.tree_map(lambda s: jax.ShapeDtypeStruct(s.shape, dtype or s.dtype), shapes)
    return jax.tree_util.tree_map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, dtype or s.dtype, sharding=sh),
                                  shapes, shardings)
