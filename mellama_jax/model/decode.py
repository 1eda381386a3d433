"""The inference forward pass: the same Flax layers as `Llama`, applied one layer at a time.

Training scans over layers (`nn.scan`): compile time stays flat in depth, and the scan body slices
layer l's weights out of the stacked [L, ...] arrays. For a prefill that slice is noise; for a
batch-1 decode step, which is bound by the bytes it reads, it is not: XLA materialises every sliced
weight into a fresh buffer (read, write, read again) and a cache passed as scan xs/ys is rebuilt in
full every step. So decoding runs over

- `DecodeParams`: the stacked params split once into one pytree per layer (cast to the compute
  dtype at the same time), and
- a per-layer KV cache (`LayerCaches`), a tuple of {"k", "v"} arrays [b * kv, S, d] plus one shared
  `segment_ids` [b, S], carried by the decode loop and updated in place with dynamic_update_slice,

with the layers unrolled in Python, so the compiled step reads every weight once and writes only the
new token's keys and values. `tests/test_decode.py` checks both from XLA's own cost analysis.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from mellama_jax.model.config import LlamaConfig
from mellama_jax.model.llama import DecoderLayer, Embedding, LMHead, RMSNorm
from mellama_jax.model.rope import rotary_tables

Array = jnp.ndarray


class DecodeParams(NamedTuple):
    """Params laid out for decoding: `layers` is a tuple of per-layer pytrees (no layer axis)."""

    embed_tokens: Any
    layers: tuple
    final_norm: Any
    lm_head: Any  # None when the embedding is tied


class LayerCaches(NamedTuple):
    """KV cache for decoding: per-layer {"k", "v"} [b * kv, S, d] and slot segment ids [b, S]."""

    layers: tuple
    segment_ids: Array


def prepare_params(config: LlamaConfig, params: Any) -> DecodeParams:
    """Split the stacked [L, ...] layer params into L per-layer pytrees in the compute dtype.

    Inside a jit this costs one copy of the weights per call (not per token). Callers that decode
    many times with the same weights may call it once (jitted) and pass the result to `generate`.
    """
    if isinstance(params, DecodeParams):
        return params
    dtype = jnp.dtype(config.dtype)

    def cast(tree):
        return jax.tree.map(lambda a: jnp.asarray(a, dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a,
                            tree)

    stacked = params["layers"]
    layers = tuple(cast(jax.tree.map(lambda a, i=i: a[i], stacked)) for i in range(config.num_hidden_layers))
    return DecodeParams(embed_tokens=cast(params["embed_tokens"]), layers=layers,
                        final_norm=cast(params["final_norm"]),
                        lm_head=None if config.tie_word_embeddings else cast(params["lm_head"]))


def init_caches(config: LlamaConfig, batch: int, length: int) -> LayerCaches:
    """Zeroed per-layer caches of `length` slots; segment id 0 marks empty slots (never attended)."""
    shape = (batch * config.num_key_value_heads, length, config.head_dim)
    dtype = jnp.dtype(config.dtype)
    layers = tuple({"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}
                   for _ in range(config.num_hidden_layers))
    return LayerCaches(layers=layers, segment_ids=jnp.zeros((batch, length), jnp.int32))


def _embed(config: LlamaConfig, params: DecodeParams, tokens: Array) -> Array:
    """Embedding rows for tokens [b, t]: one dynamic slice per token when there are few of them.

    A gather reads only the rows it needs, but XLA's cost model charges it the whole table (4 MiB
    of a 5M-parameter model's 16 MiB step); per-row slices are what the hardware does either way and
    keep the byte count honest. Prefill (many tokens) uses the ordinary gather.
    """
    if tokens.size > 64:
        return Embedding(config).apply({"params": params.embed_tokens}, tokens)
    table = params.embed_tokens["embedding"]
    b, t = tokens.shape
    rows = [jax.lax.dynamic_slice_in_dim(table, tokens[i, j], 1, axis=0)
            for i in range(b) for j in range(t)]
    return jnp.concatenate(rows, axis=0).reshape(b, t, -1).astype(jnp.dtype(config.dtype))


def forward(config: LlamaConfig, params: DecodeParams, tokens: Array, positions: Array, segment_ids: Array,
            caches: LayerCaches, cache_index: Array) -> tuple[Array, LayerCaches]:
    """Logits [b, t, vocab] (float32) for `tokens` [b, t] written into the caches at `cache_index`.

    Same modules and maths as `Llama.__call__` with a cache (so the same tokens); prefill (t > 1) and
    one decode step (t = 1) both use it.
    """
    x = _embed(config, params, tokens)
    x = nn.with_logical_constraint(x, ("activation_batch", "activation_length", "activation_embed"))
    cos, sin = rotary_tables(positions, config)
    kv_segment_ids = jax.lax.dynamic_update_slice(caches.segment_ids, segment_ids, (0, cache_index))
    layer = DecoderLayer(config)
    new_layers = []
    for layer_params, cache in zip(params.layers, caches.layers):
        x, cache = layer.apply({"params": layer_params}, x, cache, cos, sin, segment_ids, kv_segment_ids,
                               cache_index)
        new_layers.append(cache)
    x = RMSNorm(config).apply({"params": params.final_norm}, x)
    if config.tie_word_embeddings:
        logits = Embedding(config).apply({"params": params.embed_tokens}, x, method="attend")
    else:
        logits = LMHead(config).apply({"params": params.lm_head}, x)
    return logits, LayerCaches(layers=tuple(new_layers), segment_ids=kv_segment_ids)


def decode_step(config: LlamaConfig, params: DecodeParams, token: Array, position: Array,
                caches: LayerCaches, cache_index: Array) -> tuple[Array, LayerCaches]:
    """One token per row: token, position [b] -> (float32 logits [b, vocab], updated caches)."""
    ones = jnp.ones((token.shape[0], 1), jnp.int32)
    logits, caches = forward(config, params, token[:, None], position[:, None], ones, caches, cache_index)
    return logits[:, -1], caches


def min_step_bytes(config: LlamaConfig, batch: int, cache_length: int) -> dict:
    """The bytes one decode step cannot avoid reading, from the shapes alone.

    Every weight once (of the untied embedding table only the `batch` looked-up rows) and every slot
    of the static-shape K and V caches (a fixed-shape step attends over all S slots, masked).
    """
    itemsize = jnp.dtype(config.dtype).itemsize
    embed = config.vocab_size * config.hidden_size
    weights = config.num_params() - (0 if config.tie_word_embeddings else embed - batch * config.hidden_size)
    kv = 2 * config.num_hidden_layers * batch * cache_length * config.num_key_value_heads * config.head_dim
    return {"weights": weights * itemsize, "kv_cache": kv * itemsize,
            "total": (weights + kv) * itemsize}
