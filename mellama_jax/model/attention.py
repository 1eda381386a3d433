"""Scaled dot-product attention behind one entry point, `attention`, with interchangeable kernels.

All kernels take q [b, t, heads, d], k/v [b, s, kv_heads, d] (grouped-query attention: heads is a
multiple of kv_heads) and the mask `make_attention_mask` builds from segment ids: a boolean
[b, 1, t, s] for the XLA paths and cuDNN, the segment ids themselves for splash (model/splash.py).
The "xla" kernel is the readable reference that the others are tested against. A sliding window
(Mistral) is in the mask on every path; cuDNN and splash also skip the blocks outside it.
`attention_impl="auto"` picks the platform's kernel at trace time (`resolve_attention_impl`).
"""
from __future__ import annotations

import functools
import logging

import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from mellama_jax.model.config import ATTENTION_OUT

log = logging.getLogger(__name__)

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


def _low_precision(dtype) -> bool:
    return jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))


@jax.custom_jvp
def _softmax_f32_sum(x: jnp.ndarray) -> jnp.ndarray:
    """Softmax over the last axis in x's (16-bit) dtype, its normaliser summed in float32.

    Every full-size [.., t, s] tensor stays 16-bit; only the [.., t] sums are float32.
    (jax.nn.softmax sums in the input dtype.)
    """
    e = jnp.exp(x - jax.lax.stop_gradient(jnp.max(x, axis=-1, keepdims=True)))
    return e / jnp.sum(e, axis=-1, keepdims=True, dtype=jnp.float32).astype(x.dtype)


@_softmax_f32_sum.defjvp
def _softmax_f32_sum_jvp(primals, tangents):
    (x,), (dx,) = primals, tangents
    y = _softmax_f32_sum(x)
    return y, y * (dx - jnp.sum(y * dx, axis=-1, keepdims=True, dtype=jnp.float32).astype(y.dtype))


def _group_rows(q: jnp.ndarray, num_kv: int) -> jnp.ndarray:
    """q [b, t, heads, d] -> [b * kv_heads, group * t, d]: each kv head's query rows stacked, so the
    grouped-query products are plain batched matmuls over one batch axis (no transposes around them)."""
    b, t, num_heads, d = q.shape
    group = num_heads // num_kv
    return jnp.transpose(q.reshape(b, t, num_kv, group, d), (0, 2, 3, 1, 4)).reshape(b * num_kv, group * t, d)


def _ungroup_rows(out: jnp.ndarray, b: int, t: int) -> jnp.ndarray:
    """The inverse of `_group_rows`: [b * kv_heads, group * t, d] -> [b, t, heads, d]."""
    rows, _, d = out.shape
    num_kv = rows // b
    group = out.shape[1] // t
    return jnp.transpose(out.reshape(b, num_kv, group, t, d), (0, 3, 1, 2, 4)).reshape(b, t, num_kv * group, d)


def _row_mask(mask: jnp.ndarray, num_kv: int, group: int) -> jnp.ndarray:
    """mask [b, 1, t, s] -> [b * kv_heads, group * t, s], the layout of `_group_rows`' scores."""
    b, _, t, s = mask.shape
    return jnp.broadcast_to(mask[:, :, None], (b, num_kv, group, t, s)).reshape(b * num_kv, group * t, s)


def _grouped_layout(q: jnp.ndarray, k: jnp.ndarray, v: jnp.ndarray, mask: jnp.ndarray, rows: bool):
    """The operands of `xla_attention` in one of two layouts, with the two score/output einsums and
    the map back to [b, t, heads, d]. rows=True (CPU): `cached_attention`'s [b * kv, g * t, d] rows,
    batched matmuls over one leading axis. rows=False (TPU/GPU): the 5-D grouped-query einsums, which
    their layout assignment handles without copies (the row layout cost the planner's TPU compile
    ~5% more FLOPs, tests/test_plan.py)."""
    b, t, num_heads, d = q.shape
    num_kv = k.shape[2]
    group = num_heads // num_kv
    if rows:
        return (lambda x: _group_rows(x, num_kv), cache_rows(k), cache_rows(v), _row_mask(mask, num_kv, group),
                "nqd,nsd->nqs", "nqs,nsd->nqd", lambda out: _ungroup_rows(out, b, t))
    return (lambda x: x.reshape(b, t, num_kv, group, d), k, v, mask[:, :, None, :, :],
            "btkgd,bskd->bkgts", "bkgts,bskd->btkgd", lambda out: out.reshape(b, t, num_heads, d))


def xla_attention(q: jnp.ndarray, k: jnp.ndarray, v: jnp.ndarray, mask: jnp.ndarray) -> jnp.ndarray:
    """Reference kernel: explicit grouped-query matmuls and softmax.

    On CPU laid out like `cached_attention`: queries as [b * kv_heads, group * t, d] rows and
    keys/values as [b * kv_heads, s, d], so the scores are [b * kv_heads, group * t, s] and both
    products (and their gradients) are batched matmuls over one leading batch axis. Only q, k, v and
    the output are transposed (activation-sized); with the 5-D einsums `btkgd,bskd->bkgts` and back,
    XLA:CPU also transposed the [.., t, s] scores and probabilities, forward and backward. Other
    platforms keep the 5-D einsums (`_grouped_layout`).

    float32 inputs: float32 logits and softmax. bfloat16/float16 inputs: the logits and
    probabilities (the [b, heads, t, s] tensors XLA writes to memory) stay 16-bit, as on the
    kernels; the matmuls accumulate in float32 and the softmax sums in float32.
    """
    d = q.shape[-1]
    group_q, k, v, mask, qk, pv, ungroup = _grouped_layout(q, k, v, mask, rows=target_platform() == "cpu")
    if _low_precision(q.dtype):
        # Scale q, not the scores: one rounding of a [b, t, h, d] tensor instead of the logits.
        scores = jnp.einsum(qk, group_q(q * jnp.asarray(d ** -0.5, q.dtype)), k, preferred_element_type=q.dtype)
        scores = jnp.where(mask, scores, jnp.finfo(q.dtype).min)
        probs = _softmax_f32_sum(scores).astype(v.dtype)
        # A 16-bit result (accumulated in float32) keeps the backward's d(probs) matmul 16-bit too.
        out = jnp.einsum(pv, probs, v, preferred_element_type=q.dtype)
    else:
        scores = jnp.einsum(qk, group_q(q), k, preferred_element_type=jnp.float32)
        scores = scores * (d ** -0.5)
        scores = jnp.where(mask, scores, _MASK_VALUE)
        probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
        out = jnp.einsum(pv, probs, v, preferred_element_type=jnp.float32)
    return ungroup(out).astype(q.dtype)


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
    """`jax.nn.dot_product_attention` with an explicit mask (works on every backend).

    Its XLA implementation promotes the logits of 16-bit inputs to float32 and writes a float32
    [b, heads, t, s] tensor; for 16-bit inputs off cuDNN this path is `xla_attention`, whose
    logits stay 16-bit.
    """
    if implementation != "cudnn" and _low_precision(q.dtype):
        return xla_attention(q, k, v, mask)
    return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation=implementation)


def local_window(sliding_window: int | None) -> tuple[int, int] | None:
    """`jax.nn.dot_product_attention`'s local_window_size for a causal sliding window of W keys
    (itself and the W - 1 before it)."""
    return None if sliding_window is None else (sliding_window - 1, 0)


def cudnn_attention(q: jnp.ndarray, k: jnp.ndarray, v: jnp.ndarray, mask: jnp.ndarray | None = None,
                    sliding_window: int | None = None, implementation: str = "cudnn") -> jnp.ndarray:
    """cuDNN flash attention (GPU only, 16-bit): causal, within the sliding window (cuDNN's local
    window), and `mask` [b, 1, t, s] when given (packed segments, padding).

    `jax.nn.dot_product_attention` takes no segment ids: cuDNN turns the boolean mask into an
    additive [b, 1, t, s] bias (one per row, shared by the heads), and skips the blocks above the
    diagonal and outside the window. A padding query, whose keys are all masked, gets equal scores
    and so a finite average (its loss_mask is 0). (`implementation="xla"` runs the same call
    anywhere, for tests.)
    """
    return jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=True,
                                        local_window_size=local_window(sliding_window),
                                        implementation=implementation)


# -- dispatch ------------------------------------------------------------------------------------
KERNEL_IMPLS = ("xla", "dot_product", "cudnn", "splash")


def target_platform() -> str:
    """The platform the program being traced runs on: the current mesh's devices (an ahead-of-time
    TPU compile on a CPU host), else `jax.default_backend()`."""
    mesh = jax.sharding.get_abstract_mesh()  # the concrete mesh is not readable inside jit
    device = None if mesh.empty else getattr(mesh, "abstract_device", None)
    return device.platform if device is not None else jax.default_backend()


def cudnn_supports(dtype, head_dim: int, platform: str) -> bool:
    """cuDNN flash attention's limits as jax checks them: GPU, 16-bit, head_dim a multiple of 8 and
    at most 128 (256 from Hopper on; the smaller bound is assumed, not queried)."""
    return platform in ("gpu", "cuda") and _low_precision(dtype) and head_dim % 8 == 0 and head_dim <= 128


def resolve_attention_impl(impl: str, dtype, head_dim: int, platform: str | None = None) -> str:
    """The kernel `impl` means here: itself, or for "auto" splash on TPU, cuDNN on GPU when the
    dtype and head_dim allow it, else the XLA reference. Read at trace time; logged once."""
    if impl != "auto":
        if impl not in KERNEL_IMPLS:
            raise ValueError(f"unknown attention_impl {impl!r}; expected 'auto' or one of {KERNEL_IMPLS}")
        return impl
    platform = platform or target_platform()
    if platform == "tpu":
        chosen = "splash"
    elif cudnn_supports(dtype, head_dim, platform):
        chosen = "cudnn"
    else:
        chosen = "xla"
    _log_choice(platform, str(jnp.dtype(dtype)), head_dim, chosen)
    return chosen


@functools.lru_cache(maxsize=None)
def _log_choice(platform: str, dtype: str, head_dim: int, chosen: str) -> None:
    log.info("attention_impl=auto on %s (dtype %s, head_dim %d): %s", platform, dtype, head_dim, chosen)


def attention(q: jnp.ndarray, k: jnp.ndarray, v: jnp.ndarray, segment_ids: jnp.ndarray, impl: str = "xla", *,
              plain_causal: bool = False, sliding_window: int | None = None,
              splash_blocks: tuple[int, int, int] = (512, 512, 512)) -> jnp.ndarray:
    """Causal self-attention of q [b, t, heads, d] over k/v [b, t, kv_heads, d] with the configured
    kernel (`resolve_attention_impl`); segment_ids [b, t] (0 = padding) as in `make_attention_mask`.

    `plain_causal` says segment_ids are all one (no packing, no padding), so the kernels may skip
    segment masking. `splash_blocks` = (block_q, block_kv, block_kv_compute). The output is named
    ATTENTION_OUT for the remat policies; splash names its own residuals, output included
    (model/splash.py), so naming its reshaped copy too would have save_attention keep both.
    """
    impl = resolve_attention_impl(impl, q.dtype, q.shape[-1])
    if impl == "splash":
        platform = target_platform()
        if platform not in ("tpu", "cpu"):
            raise ValueError(f"attention_impl='splash' is a TPU kernel (interpreted on CPU, for tests); on {platform} "
                             "use attention_impl='auto' or 'cudnn'")
        from mellama_jax.model import splash  # Pallas is imported only by runs that use it
        block_q, block_kv, block_kv_compute = splash_blocks
        batch_axes, head_axes = splash.context_axes()
        return splash.sharded_splash_attention(
            q, k, v, None if plain_causal else segment_ids, jax.sharding.get_abstract_mesh(),
            batch_axes, head_axes, sliding_window=sliding_window, block_q=block_q, block_kv=block_kv,
            block_kv_compute=block_kv_compute, interpret=platform == "cpu")
    if impl == "cudnn":
        mask = None if plain_causal else make_attention_mask(segment_ids, segment_ids, sliding_window=sliding_window)
        return checkpoint_name(cudnn_attention(q, k, v, mask, sliding_window), ATTENTION_OUT)
    mask = make_attention_mask(segment_ids, segment_ids, sliding_window=sliding_window)
    if impl == "dot_product":
        return checkpoint_name(dot_product_attention(q, k, v, mask), ATTENTION_OUT)
    return checkpoint_name(xla_attention(q, k, v, mask), ATTENTION_OUT)
