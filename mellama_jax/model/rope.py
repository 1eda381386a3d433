"""Rotary position embeddings in the Hugging Face ("rotate half") layout.

HF LLaMA checkpoints store q/k projections permuted relative to Meta's original interleaved layout
so that rotate-half RoPE is correct on them; we keep HF's layout everywhere (see
`mellama_jax.checkpoint.hf.meta_to_hf_qk`), so weights load without any permutation.
"""
from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from mellama_jax.model.config import LlamaConfig


def inverse_frequencies(config: LlamaConfig) -> np.ndarray:
    """Per-pair rotation frequencies [head_dim // 2] with HF's rope_scaling rules applied."""
    dim = config.head_dim
    inv_freq = 1.0 / (config.rope_theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim))
    scaling = config.rope_scaling_dict
    if scaling is None:
        return inv_freq.astype(np.float32)
    rope_type = scaling.get("rope_type", scaling.get("type"))
    if rope_type == "linear":
        inv_freq = inv_freq / scaling["factor"]
    elif rope_type == "llama3":
        factor = scaling["factor"]
        low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
        old_len = scaling["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv_freq
        scaled = np.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
        smooth = (old_len / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < old_len / high) & ~(wavelen > old_len / low)
        inv_freq = np.where(medium, smoothed, scaled)
    return inv_freq.astype(np.float32)


def rotary_tables(positions: jnp.ndarray, config: LlamaConfig) -> tuple[jnp.ndarray, jnp.ndarray]:
    """cos and sin tables [batch, seq, head_dim] in float32 for integer `positions` [batch, seq]."""
    inv_freq = jnp.asarray(inverse_frequencies(config))
    angles = positions.astype(jnp.float32)[..., None] * inv_freq
    angles = jnp.concatenate([angles, angles], axis=-1)
    return jnp.cos(angles), jnp.sin(angles)


def apply_rotary(x: jnp.ndarray, cos: jnp.ndarray, sin: jnp.ndarray) -> jnp.ndarray:
    """Rotate x [batch, seq, heads, head_dim] by the tables, in x's dtype.

    The tables are cast to x's dtype first, as transformers' LlamaRotaryEmbedding does, so a bf16
    model rotates as the Hugging Face one does. Upcasting x to float32 instead made the bf16 TPU
    program write float32 copies of q and k per layer (0.6 TiB of HBM traffic per chip per 13B
    step, BENCHMARKS.md "Me-LLaMA recipes, compiled")."""
    cos, sin = cos.astype(x.dtype)[:, :, None, :], sin.astype(x.dtype)[:, :, None, :]
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos + rotated * sin
