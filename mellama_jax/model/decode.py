"""The inference forward pass, one for generation and evaluation: prefill a KV cache, then decode
from it, with the same Flax layers as `Llama`, applied one layer at a time.

Training scans over layers (`nn.scan`): compile time stays flat in depth, and the scan body slices
layer l's weights out of the stacked [L, ...] arrays. For a prefill that slice is noise; for a
batch-1 decode step, which is bound by the bytes it reads, it is not: XLA materialises every sliced
weight into a fresh buffer (read, write, read again) and a cache passed as scan xs/ys is rebuilt in
full every step. So inference runs over

- `DecodeParams`: the stacked params split once into one pytree per layer (cast to the compute
  dtype at the same time), and
- `KVCache`: one K and one V array per layer [b * kv, S, d] plus one shared `segment_ids` [b, S],
  carried by the decode loop and updated in place with dynamic_update_slice,

with the layers unrolled in Python, so the compiled step reads every weight once and writes only the
new token's keys and values. `tests/test_decode.py` checks both from XLA's own cost analysis.

Projection biases (Qwen2's q/k/v) are part of each layer's params and a sliding window (Mistral)
part of the attention mask over the cache slots (`make_attention_mask`), so prefill, decode steps
and scoring after a cached prefix apply both exactly as the training forward does; the cache keeps
all slots (masked, not rolled), which matches transformers' results at the cost of memory.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import flax.linen as nn
import flax.struct
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


@flax.struct.dataclass
class KVCache:
    """Keys and values of a batch of sequences over `length` slots, one pair of arrays per layer.

    k[l], v[l]: [batch * kv_heads, length, head_dim], sequence-major (rows i * kv_heads up to
    (i + 1) * kv_heads - 1 belong to sequence i): the layout the attention matmuls read in place.
    segment_ids: [batch, length]; 0 marks an empty slot (never attended).
    """

    k: tuple
    v: tuple
    segment_ids: Array

    @property
    def batch(self) -> int:
        return self.segment_ids.shape[0]

    @property
    def length(self) -> int:
        return self.segment_ids.shape[1]

    def take_rows(self, rows: Array) -> "KVCache":
        """The cache of sequences `rows` (int [r], indices into the batch; repeats allowed), e.g. one
        cached prefix for each of several continuations."""

        def take(x: Array) -> Array:
            per = x.shape[0] // self.batch
            split = x.reshape((self.batch, per) + x.shape[1:])
            return jnp.take(split, rows, axis=0).reshape((rows.shape[0] * per,) + x.shape[1:])

        return KVCache(k=tuple(map(take, self.k)), v=tuple(map(take, self.v)),
                       segment_ids=jnp.take(self.segment_ids, rows, axis=0))


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


def init_cache(config: LlamaConfig, batch: int, length: int) -> KVCache:
    """A zeroed cache of `length` slots (all empty)."""
    shape = (batch * config.num_key_value_heads, length, config.head_dim)
    dtype = jnp.dtype(config.dtype)
    layers = range(config.num_hidden_layers)
    return KVCache(k=tuple(jnp.zeros(shape, dtype) for _ in layers), v=tuple(jnp.zeros(shape, dtype) for _ in layers),
                   segment_ids=jnp.zeros((batch, length), jnp.int32))


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


def forward(config: LlamaConfig, params: Any, tokens: Array, positions: Array, segment_ids: Array,
            cache: KVCache, cache_index: Array) -> tuple[Array, KVCache]:
    """Logits [b, t, vocab] (float32) for `tokens` [b, t] written into the cache at `cache_index`.

    The same modules and maths as `Llama.__call__`; each token attends to the cache's filled slots
    (segment ids match) up to its own. Prefill (t > 1), a decode step (t = 1) and scoring a few
    tokens after a cached prefix all use it. `params`: the model's params or `prepare_params`'s.
    """
    params = prepare_params(config, params)
    x = _embed(config, params, tokens)
    x = nn.with_logical_constraint(x, ("activation_batch", "activation_length", "activation_embed"))
    cos, sin = rotary_tables(positions, config)
    kv_segment_ids = jax.lax.dynamic_update_slice(cache.segment_ids, segment_ids, (0, cache_index))
    layer = DecoderLayer(config)
    keys, values = [], []
    for layer_params, k, v in zip(params.layers, cache.k, cache.v):
        x, new = layer.apply({"params": layer_params}, x, {"k": k, "v": v}, cos, sin, segment_ids,
                             kv_segment_ids, cache_index)
        keys.append(new["k"])
        values.append(new["v"])
    x = RMSNorm(config).apply({"params": params.final_norm}, x)
    if config.tie_word_embeddings:
        logits = Embedding(config).apply({"params": params.embed_tokens}, x, method="attend")
    else:
        logits = LMHead(config).apply({"params": params.lm_head}, x)
    return logits, KVCache(k=tuple(keys), v=tuple(values), segment_ids=kv_segment_ids)


def prefill(config: LlamaConfig, params: Any, tokens: Array, mask: Array,
            length: int) -> tuple[Array, KVCache, Array]:
    """Left-padded prompts `tokens` [b, t] (`mask` 1 = real token) into a fresh cache of `length` slots.

    Returns (float32 logits [b, t, vocab], the cache, each row's next position [b]). Real tokens are
    numbered from 0 after any left padding, as HF does from the attention mask.
    """
    positions = jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0).astype(jnp.int32)
    logits, cache = forward(config, params, tokens, positions, mask, init_cache(config, tokens.shape[0], length),
                            jnp.int32(0))
    return logits, cache, positions[:, -1] + 1


def decode_step(config: LlamaConfig, params: Any, token: Array, position: Array,
                cache: KVCache, cache_index: Array) -> tuple[Array, KVCache]:
    """One token per row: token, position [b] -> (float32 logits [b, vocab], updated cache)."""
    ones = jnp.ones((token.shape[0], 1), jnp.int32)
    logits, cache = forward(config, params, token[:, None], position[:, None], ones, cache, cache_index)
    return logits[:, -1], cache


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
