"""Scaled dot-product attention behind one entry point, with several interchangeable kernels.

All kernels take q [b, t, heads, d], k/v [b, s, kv_heads, d] (grouped-query attention: heads is a
multiple of kv_heads) and a boolean mask [b, 1, t, s] built by `make_attention_mask`. The "xla"
kernel is the readable reference that the others are tested against. A sliding window (Mistral)
is part of the mask on every path; the cuDNN path, which takes no mask, gets it as cuDNN's local
window.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

_MASK_VALUE = float(jnp.finfo(jnp.float32).min)


def make_attention_mask(q_segment_ids: jnp.ndarray, kv_segment_ids: jnp.ndarray,
                        q_offset: jnp.ndarray | int = 0, sliding_window: int | None = None) -> jnp.ndarray:
    """Causal, packed-sequence mask [b, 1, t, s].

    Query i (at cache slot q_offset + i) may see key j iff j <= q_offset + i, both tokens belong to the
    same segment, and the key is not padding (segment id 0). Packed documents therefore never attend
    to each other, and left padding in a KV cache is invisible. With `sliding_window` W the key must
    also be one of the W latest: q_offset + i - j < W (Hugging Face's `kv_idx > q_idx - W`). Slots
    stand for positions: within one segment (or one cache row after its left padding) consecutive
    slots hold consecutive positions, so a slot distance is a position distance.
    """
    t, s = q_segment_ids.shape[1], kv_segment_ids.shape[1]
    q_index = jnp.arange(t)[:, None] + q_offset
    kv_index = jnp.arange(s)[None, :]
    causal = kv_index <= q_index
    if sliding_window is not None:
        causal = causal & (kv_index > q_index - sliding_window)
    same_segment = q_segment_ids[:, :, None] == kv_segment_ids[:, None, :]
    real_key = (kv_segment_ids != 0)[:, None, :]
    return (causal[None] & same_segment & real_key)[:, None, :, :]


def xla_attention(q: jnp.ndarray, k: jnp.ndarray, v: jnp.ndarray, mask: jnp.ndarray) -> jnp.ndarray:
    """Reference kernel: explicit GQA einsums, float32 logits and softmax."""
    b, t, num_heads, d = q.shape
    num_kv = k.shape[2]
    q = q.reshape(b, t, num_kv, num_heads // num_kv, d)
    scores = jnp.einsum("btkgd,bskd->bkgts", q, k, preferred_element_type=jnp.float32)
    scores = scores * (d ** -0.5)
    scores = jnp.where(mask[:, :, None, :, :], scores, _MASK_VALUE)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = jnp.einsum("bkgts,bskd->btkgd", probs, v, preferred_element_type=jnp.float32)
    return out.reshape(b, t, num_heads, d).astype(q.dtype)


def cache_rows(x: jnp.ndarray) -> jnp.ndarray:
    """Keys or values [b, t, kv_heads, d] -> KV-cache rows [b * kv_heads, t, d]."""
    b, t, kv, d = x.shape
    return jnp.swapaxes(x, 1, 2).reshape(b * kv, t, d)


def cached_attention(q: jnp.ndarray, k_cache: jnp.ndarray, v_cache: jnp.ndarray,
                     mask: jnp.ndarray) -> jnp.ndarray:
    """Attention of q [b, t, heads, d] over KV-cache rows [b * kv_heads, S, d]; mask [b, 1, t, S].

    Same maths as `xla_attention`. The cache layout makes both products plain batched matmuls over
    one batch axis, so XLA reads the cache in place: no transpose of the S slots, and no degenerate
    batch axis at batch 1 (which XLA would bitcast away, then copy the whole cache to update it).
    """
    b, t, num_heads, d = q.shape
    rows, length = k_cache.shape[0], k_cache.shape[1]
    num_kv = rows // b
    group = num_heads // num_kv
    # [b, t, kv, g, d] -> [b * kv, g * t, d]
    q = jnp.transpose(q.reshape(b, t, num_kv, group, d), (0, 2, 3, 1, 4)).reshape(rows, group * t, d)
    scores = jnp.einsum("nqd,nsd->nqs", q, k_cache, preferred_element_type=jnp.float32) * (d ** -0.5)
    mask = jnp.broadcast_to(mask[:, :, None], (b, num_kv, group, t, length)).reshape(rows, group * t, length)
    scores = jnp.where(mask, scores, _MASK_VALUE)
    probs = jax.nn.softmax(scores, axis=-1).astype(v_cache.dtype)
    out = jnp.einsum("nqs,nsd->nqd", probs, v_cache, preferred_element_type=jnp.float32)
    # [b * kv, g * t, d] -> [b, t, kv * g, d]
    out = jnp.transpose(out.reshape(b, num_kv, group, t, d), (0, 3, 1, 2, 4))
    return out.reshape(b, t, num_heads, d).astype(q.dtype)


def dot_product_attention(q: jnp.ndarray, k: jnp.ndarray, v: jnp.ndarray, mask: jnp.ndarray,
                          implementation: str | None = None) -> jnp.ndarray:
    """`jax.nn.dot_product_attention` with an explicit mask (works on every backend)."""
    return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation=implementation)


def local_window(sliding_window: int | None) -> tuple[int, int] | None:
    """`jax.nn.dot_product_attention`'s local_window_size for a causal sliding window of W keys
    (itself and the W - 1 before it)."""
    return None if sliding_window is None else (sliding_window - 1, 0)


def cudnn_causal_attention(q: jnp.ndarray, k: jnp.ndarray, v: jnp.ndarray, sliding_window: int | None = None,
                           implementation: str = "cudnn") -> jnp.ndarray:
    """cuDNN flash attention, GPU only: plain causal attention without segments or padding.

    cuDNN takes no segment ids and turns a boolean mask into a dense bias, so this path is only used
    when the caller knows there is nothing to mask beyond causality (unpacked training windows) and
    the sliding window, which cuDNN takes as its local window. (`implementation="xla"` runs the same
    call anywhere, for tests.)
    """
    return jax.nn.dot_product_attention(q, k, v, is_causal=True, local_window_size=local_window(sliding_window),
                                        implementation=implementation)


def attention(q: jnp.ndarray, k: jnp.ndarray, v: jnp.ndarray, mask: jnp.ndarray, impl: str = "xla",
              plain_causal: bool = False, sliding_window: int | None = None) -> jnp.ndarray:
    """Dispatch to the configured kernel; `plain_causal` says the mask is just lower-triangular
    (within `sliding_window` when set: `mask` already holds the window, for the kernels that take one)."""
    if impl == "xla":
        return xla_attention(q, k, v, mask)
    if impl == "dot_product":
        return dot_product_attention(q, k, v, mask)
    if impl == "cudnn":
        if plain_causal:
            return cudnn_causal_attention(q, k, v, sliding_window)
        # Packed segments / KV-cache decoding: cuDNN has no segment ids, use XLA's fused path.
        return dot_product_attention(q, k, v, mask, implementation="xla")
    raise ValueError(f"unknown attention_impl {impl!r}; expected 'xla', 'dot_product' or 'cudnn'")
