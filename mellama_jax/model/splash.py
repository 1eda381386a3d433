"""Splash attention: the Pallas TPU flash-attention kernel, with our masks, mapped over the mesh.

`jax.experimental.pallas.ops.tpu.splash_attention` never writes the [t, s] scores to HBM and skips
the blocks the mask leaves empty (the upper triangle, outside a sliding window). It takes one
sequence at a time, q [heads, t, d] and k/v [kv_heads, s, d]: grouped-query attention is native
(query head h reads kv head h // group), so K/V are never repeated. Pallas kernels are not
partitioned by XLA, so `sharded_splash_attention` runs the kernel per device under
`jax.shard_map`, batch over the batch mesh axes and heads over the head axes. On anything but a
TPU the kernel runs in Pallas interpret mode (tests on CPU).

Masks match `attention.make_attention_mask` for every real query: causal, within the sliding
window, same segment. Our mask also hides padding keys (segment 0) from padding queries, which
then see nothing; splash lets padding queries see the padding keys before them instead (a padding
query always sees itself, so no row is empty and outputs and gradients stay finite). The two
differ only on padding rows, whose loss_mask is 0 and which no real query reads.
"""
from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name
from jax.experimental.pallas.ops.tpu import splash_attention as sa
from jax.sharding import PartitionSpec as P

# The kernel tiles the kv axis in units of TPU vector lanes; block sizes are multiples of this.
from mellama_jax.model.config import SPLASH_LANES as LANES
from mellama_jax.model.config import SPLASH_INPUTS, SPLASH_RESIDUALS


def block_sizes(seq_len: int, block_q: int, block_kv: int, block_kv_compute: int) -> tuple[sa.BlockSizes, int]:
    """(BlockSizes, padded length) for a sequence of `seq_len`: the configured blocks, clamped to
    the sequence (rounded up to whole lanes); the sequence is padded to a whole number of blocks."""
    for name, value in (("splash_block_q", block_q), ("splash_block_kv", block_kv),
                        ("splash_block_kv_compute", block_kv_compute)):
        if value <= 0 or value % LANES:
            raise ValueError(f"LlamaConfig.{name}={value}: must be a positive multiple of {LANES}")
    lanes = -(-seq_len // LANES) * LANES
    bq, bkv = min(block_q, lanes), min(block_kv, lanes)
    # block_kv must be a multiple of block_kv_compute; after clamping, take their common tile.
    bkvc = math.gcd(bkv, min(block_kv_compute, bkv))
    step = math.lcm(bq, bkv)
    padded = -(-seq_len // step) * step
    sizes = sa.BlockSizes(block_q=bq, block_kv=bkv, block_kv_compute=bkvc,
                          block_q_dkv=bq, block_kv_dkv=bkv, block_kv_dkv_compute=bkvc,
                          block_q_dq=bq, block_kv_dq=bkv)
    return sizes, padded


def _kernel(heads: int, length: int, sliding_window: int | None, sizes: sa.BlockSizes, interpret: bool):
    """The splash kernel for `heads` query heads over a self-attention of `length` slots. (Built per
    trace: it holds its block-sparsity tables as arrays; the numpy work behind them is cached.)"""
    shape = (length, length)
    # LocalMask (W - 1 keys back, none ahead) is causal and keeps q - j < W: HF's sliding window.
    one = sa.CausalMask(shape) if sliding_window is None else sa.LocalMask(shape, (sliding_window - 1, 0), 0)
    # The forward's residuals carry a checkpoint_name: a remat policy that saves them skips the
    # kernel's second forward run in the backward pass (model/llama.py REMAT_POLICIES).
    return sa.make_splash_mha(sa.MultiHeadMask([one] * heads), block_sizes=sizes, head_shards=1,
                              q_seq_shards=1, interpret=interpret,
                              residual_checkpoint_name=SPLASH_RESIDUALS)


def splash_attention(q: jnp.ndarray, k: jnp.ndarray, v: jnp.ndarray, segment_ids: jnp.ndarray | None = None, *,
                     sliding_window: int | None = None, block_q: int = 512, block_kv: int = 512,
                     block_kv_compute: int = 512, interpret: bool = False) -> jnp.ndarray:
    """Causal self-attention of q [b, t, heads, d] over k/v [b, t, kv_heads, d] on one device.

    segment_ids [b, t] (0 = padding) keep packed documents apart; None = one document per row.
    Scaled by 1/sqrt(d) like `attention.xla_attention`.
    """
    b, t, heads, d = q.shape
    if k.shape[1] != t:
        raise ValueError(f"splash attention is self-attention: q has {t} slots, k has {k.shape[1]}")
    sizes, padded = block_sizes(t, block_q, block_kv, block_kv_compute)
    kernel = _kernel(heads, padded, sliding_window, sizes, interpret)
    # Slots past t are keys no real query can see (they are in every query's future) and queries
    # whose rows are sliced off.
    pad = ((0, 0), (0, padded - t), (0, 0), (0, 0))
    q, k, v = (jnp.swapaxes(jnp.pad(x, pad), 1, 2) for x in (q * jnp.asarray(d ** -0.5, q.dtype), k, v))
    # The kernel's inputs in its layout are what its backward kernels read: a policy that keeps
    # them (model/llama.py) spares the backward pass scaling, padding and transposing them (and
    # RoPE) again, and needs no other copy of q, k, v.
    q, k, v = (checkpoint_name(x, SPLASH_INPUTS) for x in (q, k, v))
    if segment_ids is None:
        out = jax.vmap(kernel)(q, k, v)
    else:
        seg = jnp.pad(segment_ids.astype(jnp.int32), ((0, 0), (0, padded - t)))
        out = jax.vmap(lambda q, k, v, s: kernel(q, k, v, segment_ids=sa.SegmentIds(s, s)))(q, k, v, seg)
    return jnp.swapaxes(out, 1, 2)[:, :t]


def _size(mesh, axes: Sequence[str]) -> int:
    return math.prod(mesh.shape[a] for a in axes)


def usable_axes(mesh, axes: Sequence[str], dim: int) -> tuple[str, ...]:
    """The mesh axes of `axes` (size > 1) that split a dimension of size `dim` evenly; () if none."""
    axes = tuple(a for a in axes if a in mesh.shape and mesh.shape[a] > 1)
    return axes if axes and dim % _size(mesh, axes) == 0 else ()


def _local_kv(k: jnp.ndarray, heads: int, local_heads: int, head_axes: tuple[str, ...]) -> jnp.ndarray:
    """The kv heads the local query heads read, from all kv heads [b, t, kv, d] (kv heads could not
    be split like the query heads: fewer kv heads than head shards)."""
    kv = k.shape[2]
    group = heads // kv
    shard = jax.lax.axis_index(head_axes)
    first = shard * local_heads  # the first local query head
    if local_heads % group == 0:  # whole groups: local_heads // group kv heads
        n = local_heads // group
    elif group % local_heads == 0:  # part of one group: its one kv head
        n = 1
    else:  # groups straddle shards: repeat to one kv head per query head, then slice
        k = jnp.repeat(k, group, axis=2)
        return jax.lax.dynamic_slice_in_dim(k, first, local_heads, axis=2)
    return jax.lax.dynamic_slice_in_dim(k, first // group, n, axis=2)


def sharded_splash_attention(q: jnp.ndarray, k: jnp.ndarray, v: jnp.ndarray, segment_ids: jnp.ndarray | None,
                             mesh, batch_axes: Sequence[str] = (), head_axes: Sequence[str] = (),
                             **kwargs) -> jnp.ndarray:
    """`splash_attention` run per device under `jax.shard_map` over `mesh` (a Mesh or AbstractMesh):
    batch split over `batch_axes`, query heads over `head_axes` (kv heads too when they divide; else
    each device takes the kv heads its query heads read). Axes that do not divide are dropped.
    The sequence is whole on every device. `mesh=None` or a one-device mesh: `splash_attention`.
    """
    if mesh is None or mesh.empty or mesh.size == 1:
        return splash_attention(q, k, v, segment_ids, **kwargs)
    b, heads, kv = q.shape[0], q.shape[2], k.shape[2]
    batch_axes = usable_axes(mesh, batch_axes, b)
    head_axes = usable_axes(mesh, head_axes, heads)
    kv_split = bool(head_axes) and kv % _size(mesh, head_axes) == 0
    batch = batch_axes or None
    q_spec = P(batch, None, head_axes or None, None)
    kv_spec = P(batch, None, head_axes if kv_split else None, None)

    def body(q, k, v, *seg):
        if head_axes and not kv_split:
            k = _local_kv(k, heads, q.shape[2], head_axes)
            v = _local_kv(v, heads, q.shape[2], head_axes)
        return splash_attention(q, k, v, seg[0] if seg else None, **kwargs)

    args, specs = (q, k, v), (q_spec, kv_spec, kv_spec)
    if segment_ids is not None:
        args, specs = args + (segment_ids,), specs + (P(batch, None),)
    return jax.shard_map(body, mesh=mesh, in_specs=specs, out_specs=q_spec, check_vma=False)(*args)


def context_axes() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(batch mesh axes, head mesh axes) of the activations under the current Flax logical-axis
    rules ("activation_batch", "activation_heads"); () for a name the rules do not map."""
    import flax.linen as nn

    rules: dict = {}
    for name, mesh_axes in nn.get_logical_axis_rules():
        rules.setdefault(name, mesh_axes)  # Flax reads the first rule for a name

    def axes(name: str) -> tuple[str, ...]:
        value = rules.get(name)
        if value is None:
            return ()
        return (value,) if isinstance(value, str) else tuple(value)

    return axes("activation_batch"), axes("activation_heads")
