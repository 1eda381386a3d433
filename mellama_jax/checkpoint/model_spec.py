"""Which model and which tokenizer an experiment config means: a preset plus overrides, or the
shapes, weights and tokenizer of the artifact named by `config.model.init_from`.

Training, launch.py's validation and the data pipeline's tokenizer choice all resolve through
here, so "the model being trained" has one meaning.
"""
from __future__ import annotations

import os
from typing import Any

from mellama_jax import fs
from mellama_jax.checkpoint.artifact import ModelArtifact, check_artifact_tokenizer, resolve_artifact
from mellama_jax.model.config import LlamaConfig, model_overrides
from mellama_jax.tokenizer import check_tokenizer, local_tokenizer_path

__all__ = ["NUMERIC_FIELDS", "model_overrides", "init_artifact", "resolve_model_config",
           "training_tokenizer_file", "check_training_tokenizer"]

# LlamaConfig fields that describe numerics / kernels rather than shapes: these come from
# config.model even when the shapes come from a pretrained checkpoint.
NUMERIC_FIELDS = ("dtype", "param_dtype", "attention_impl", "splash_block_q", "splash_block_kv",
                  "splash_block_kv_compute", "remat_policy")


def init_artifact(model_cfg: Any) -> ModelArtifact | None:
    """The artifact config.model.init_from names ("" = none: random init)."""
    init_from = os.path.expanduser(getattr(model_cfg, "init_from", "") or "")  # ConfigDict or namespace
    if not init_from:
        return None
    if not os.path.exists(init_from):
        raise FileNotFoundError(f"config.model.init_from={init_from!r}: no such directory")
    return resolve_artifact(init_from)  # a step other than the newest: point at W/checkpoints/<step>


def resolve_model_config(model_cfg: Any, data_vocab_size: int | None = None) -> LlamaConfig:
    """LlamaConfig from config.model: the preset (or the init_from artifact's shapes) + overrides."""
    overrides = model_overrides(model_cfg)
    artifact = init_artifact(model_cfg)
    if artifact is not None:
        base = artifact.model_config
        shape_keys = sorted(set(overrides) - set(NUMERIC_FIELDS))
        changed = [k for k in shape_keys if overrides[k] != getattr(base, k)]
        if changed:
            raise ValueError(f"config.model.{changed[0]} is set, but shapes come from "
                             f"config.model.init_from={model_cfg.init_from!r}; unset config.model.{changed}")
        numerics = {k: overrides[k] for k in NUMERIC_FIELDS if k in overrides}
        numerics.setdefault("param_dtype", "float32")  # float32 master weights for training
        return base.replace(**numerics)
    from mellama_jax.model.presets import get_preset

    if data_vocab_size and "vocab_size" not in overrides:
        overrides["vocab_size"] = int(data_vocab_size)
    model_config = get_preset(model_cfg.preset).replace(**overrides)
    if data_vocab_size and data_vocab_size > model_config.vocab_size:
        raise ValueError(f"tokenizer has {data_vocab_size} tokens but the model's vocab_size is "
                         f"{model_config.vocab_size} (config.model.vocab_size / preset)")
    return model_config


def training_tokenizer_file(config: Any) -> str:
    """The tokenizer a pretraining run encodes with: config.data.tokenizer_path when set, else the
    one that travels with config.model.init_from."""
    explicit = str(config.data.get("tokenizer_path", "") or "")
    if explicit:  # a gs:// / s3:// tokenizer is copied locally once (checkpoints copy its files)
        return local_tokenizer_path(explicit) if fs.is_url(explicit) else os.path.expanduser(explicit)
    artifact = init_artifact(config.model)
    if artifact is None:
        raise ValueError("config.data.tokenizer_path is empty and config.model.init_from is not set: name a "
                         "tokenizer.model or tokenizer.json (e.g. the bundled demo one, "
                         "mellama_jax/data/samples/tokenizer.model)")
    if not artifact.tokenizer_file:
        raise FileNotFoundError(f"config.model.init_from={config.model.init_from!r}: no tokenizer files "
                                f"(tokenizer.model or tokenizer.json) in "
                                f"{artifact.root}; set config.data.tokenizer_path")
    return artifact.tokenizer_file


def check_training_tokenizer(config: Any, tokenizer: Any, tokenizer_file: str, model_config: LlamaConfig) -> None:
    """Refuse a tokenizer that does not fit the model being trained (call before reading data).

    With an init_from artifact the vocab must match it exactly (or the padding resize_vocab
    recorded) and so must BOS/EOS/pad; a fresh model only needs vocab_size >= the tokenizer's.
    """
    artifact = init_artifact(config.model)
    if artifact is not None:
        check_artifact_tokenizer(artifact, tokenizer, tokenizer_file, model_config)
    else:
        check_tokenizer(tokenizer, model_config, tokenizer_file,
                        f"config.model (preset {config.model.preset!r})", allow_larger_model=True)
