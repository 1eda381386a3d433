"""`load_pretrained`: one entry point for every kind of weights a user points us at.

It reads through `mellama_jax.checkpoint.artifact`, the one definition of a model artifact.
"""
from __future__ import annotations

from typing import Any

from mellama_jax.checkpoint.artifact import ModelArtifact, resolve_artifact
from mellama_jax.model.config import LlamaConfig

__all__ = ["load_pretrained", "resolve_checkpoint", "tokenizer_path", "resolve_artifact", "ModelArtifact"]


def load_pretrained(path: str, target: Any = None, *, step: int | None = None) -> tuple[LlamaConfig, Any]:
    """Load (config, params) from an HF directory, a converter output or a training workdir.

    `target`: optional pytree of ShapeDtypeStructs with shardings to restore straight onto a mesh.
    `step`: a training checkpoint other than the newest.
    """
    artifact = resolve_artifact(path, step)
    return artifact.model_config, artifact.load_params(target)


def resolve_checkpoint(path: str, step: int | None = None) -> tuple[str, str]:
    """(directory holding model_config.json, params item directory) of a mellama-jax checkpoint."""
    artifact = resolve_artifact(path, step)
    if artifact.kind == "hf_dir":
        raise FileNotFoundError(f"{artifact.root}: a Hugging Face directory, not a mellama-jax checkpoint")
    return artifact.root, artifact.params_dir


def tokenizer_path(path: str, step: int | None = None) -> str | None:
    """The tokenizer.model that travels with a model artifact, if any."""
    return resolve_artifact(path, step).tokenizer_file
