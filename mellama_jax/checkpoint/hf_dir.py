"""Reading a Hugging Face LLaMA directory: config.json plus single or sharded weight files."""
from __future__ import annotations

import glob
import json
import os

import numpy as np

from mellama_jax.checkpoint.hf import ConversionError, check_tensor_names, config_from_hf
from mellama_jax.checkpoint.safetensors_io import SafetensorsFile
from mellama_jax.model.config import LlamaConfig


def is_hf_dir(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "config.json"))


def read_hf_config(hf_dir: str) -> LlamaConfig:
    path = os.path.join(hf_dir, "config.json")
    if not os.path.isfile(path):
        raise ConversionError(f"{path}: missing config.json (is {hf_dir!r} a Hugging Face model directory?)")
    try:
        with open(path) as f:
            raw = json.load(f)
    except json.JSONDecodeError as err:
        raise ConversionError(f"{path}: not valid JSON ({err})") from err
    return config_from_hf(raw, source=path)


def inside(directory: str, name: str, source: str) -> str:
    """`directory/name`, refusing names that lead out of `directory` (absolute paths, '..',
    symlinks pointing elsewhere): an index file must not make a tool open /etc/passwd."""
    base = os.path.realpath(directory)
    path = os.path.realpath(os.path.join(directory, name))
    if os.path.isabs(name) or os.path.commonpath([base, path]) != base:
        raise ConversionError(f"{source}: file name {name!r} points outside {directory}")
    return os.path.join(directory, name)


class HFWeights:
    """All weight tensors of an HF directory, each fetched lazily by name (memory-mapped safetensors)."""

    def __init__(self, hf_dir: str):
        self.hf_dir = hf_dir
        self._files: dict[str, SafetensorsFile] = {}
        self._torch_state: dict[str, dict] = {}
        self.locations: dict[str, str] = {}  # tensor name -> file path
        index = os.path.join(hf_dir, "model.safetensors.index.json")
        single = os.path.join(hf_dir, "model.safetensors")
        if os.path.isfile(index):
            self._from_index(index, "safetensors")
        elif os.path.isfile(single):
            self._add_safetensors(single)
        elif os.path.isfile(os.path.join(hf_dir, "pytorch_model.bin.index.json")):
            self._from_index(os.path.join(hf_dir, "pytorch_model.bin.index.json"), "torch")
        elif os.path.isfile(os.path.join(hf_dir, "pytorch_model.bin")):
            self._add_torch(os.path.join(hf_dir, "pytorch_model.bin"))
        else:
            shards = sorted(glob.glob(os.path.join(hf_dir, "model-*-of-*.safetensors")))
            if not shards:
                raise ConversionError(f"{hf_dir}: no model.safetensors, model.safetensors.index.json, "
                                      "model-*-of-*.safetensors or pytorch_model*.bin found")
            for shard in shards:
                self._add_safetensors(shard)

    def _from_index(self, index_path: str, kind: str) -> None:
        try:
            with open(index_path) as f:
                weight_map = json.load(f)["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise ConversionError(f"{index_path}: not a valid weight index ({err})") from err
        if not isinstance(weight_map, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                       for k, v in weight_map.items()):
            raise ConversionError(f"{index_path}: weight_map must map tensor names to shard file names")
        for shard in sorted(set(weight_map.values())):
            shard_path = inside(self.hf_dir, shard, index_path)
            if not os.path.isfile(shard_path):
                raise ConversionError(f"{index_path}: names shard {shard!r}, which does not exist")
            (self._add_safetensors if kind == "safetensors" else self._add_torch)(shard_path)
        for name, shard in weight_map.items():
            if self.locations.get(name) != inside(self.hf_dir, shard, index_path):
                raise ConversionError(f"{index_path}: tensor {name!r} is not in shard {shard!r}")

    def _add_safetensors(self, path: str) -> None:
        handle = SafetensorsFile(path)
        self._files[path] = handle
        for name in handle.keys():
            self.locations[name] = path

    def _add_torch(self, path: str) -> None:
        try:
            import torch
        except ImportError as err:
            raise ConversionError(f"{path}: reading pytorch_model*.bin needs torch installed") from err
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        self._torch_state[path] = state
        for name in state:
            self.locations[name] = path

    def get(self, name: str) -> np.ndarray:
        path = self.locations.get(name)
        if path is None:
            raise ConversionError(f"{self.hf_dir}: no tensor named {name!r}")
        if path in self._files:
            return self._files[path].get(name)
        import ml_dtypes
        import torch

        tensor = self._torch_state[path][name]
        if tensor.dtype == torch.bfloat16:
            return tensor.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
        return tensor.numpy()

    def file_of(self, name: str) -> str:
        return self.locations.get(name, self.hf_dir)

    def dtype(self) -> np.dtype:
        """The storage dtype of the checkpoint (that of its embedding)."""
        return self.get("model.embed_tokens.weight").dtype

    def check(self, config: LlamaConfig) -> None:
        check_tensor_names(config, self.locations)


def load_hf_params(hf_dir: str, dtype=None) -> tuple[LlamaConfig, dict]:
    """Read config and weights of an HF directory into our param pytree (numpy arrays)."""
    from mellama_jax.checkpoint.hf import convert_param, param_paths

    config = read_hf_config(hf_dir)
    weights = HFWeights(hf_dir)
    weights.check(config)
    params: dict = {}
    for path in param_paths(config):
        node = params
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = convert_param(config, path, weights.get, dtype=dtype, where=weights.file_of)
    stored = weights.dtype() if dtype is None else np.dtype(dtype)
    return config.replace(param_dtype=_dtype_name(stored)), params


def _dtype_name(dtype: np.dtype) -> str:
    name = np.dtype(dtype).name
    if name not in ("float32", "bfloat16", "float16"):
        raise ConversionError(f"unsupported weight dtype {name}; expected float32, bfloat16 or float16")
    return name
