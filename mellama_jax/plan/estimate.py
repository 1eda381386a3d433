"""Analytic memory and step-time estimate of the train step on any mesh (GPU clusters included).

No GPU compile is possible without a GPU, so this models what XLA allocates per device:

- state (params, optimizer moments, step, rng): exact. The shardings come from the very Trainer
  the run builds (over an ``AbstractMesh`` of the cluster's shape), so padding aside these are the
  bytes a TPU compile reports as arguments.
- gradients: float32 like the master params and sharded like them (+ an accumulator when
  ``config.train.micro_batches > 1``); LoRA: adapters only.
- activations the layer scan keeps for the backward pass, per remat policy:
  ``full`` keeps each layer's input; ``dots_with_no_batch_dims_saveable``/``minimal`` also the
  projection outputs (q, k, v, o, gate, up, down); ``dots_saveable`` also the attention scores and
  outputs (batched dots, float32); ``none`` everything (norms, rotary, softmax, SwiGLU);
  ``save_attention`` the input plus the named q, k, v and attention output;
  ``save_attention_out`` the input and the attention output; ``save_mlp`` the input plus the named
  gate and up projections (model/llama.py). Under splash (TPU) every policy but
  ``full`` and ``save_mlp`` also keeps the kernel's forward residuals, its output and log-sum-exp,
  so the backward pass does not run the kernel's forward again.
- the transient peak of one layer's backward (that layer's activations, recomputed or kept, and
  its all-gathered weights) or of the loss (float32 logits and their gradient), the larger.

Very small programs read lower in a TPU compile than here: the TPU keeps small temporaries in
on-chip VMEM (128 MiB on v5e), which the compiler does not count as HBM.

The estimate is checked against the TPU compiler's numbers (tests/test_plan.py, ``TOLERANCE``).
Step time is a roofline: executed matmul FLOPs at the chip's peak vs ring-collective traffic at
NVLink / InfiniBand (GPU) or ICI (TPU) bandwidth, assuming perfect overlap.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import AbstractMesh, AxisType

from mellama_jax import sharding as shd
from mellama_jax.model.config import LlamaConfig
from mellama_jax.plan.hardware import Chip
from mellama_jax.train import metrics as metrics_lib

# |estimate - compiled| / compiled on the per-device total, as asserted by the tests.
TOLERANCE = 0.15


@dataclasses.dataclass
class Estimate:
    """Per-device bytes and time of one train step (analytic)."""

    cluster: str
    num_devices: int
    mesh: dict
    remat_policy: str
    seq_len: int
    rows_per_device: float  # rows of one micro-batch on one device
    state_bytes: int  # params + optimizer state + step + rng (exact shard sizes)
    params_bytes: int
    optimizer_bytes: int
    frozen_bytes: int  # LoRA: the frozen base (bf16 or as configured)
    grads_bytes: int
    saved_activation_bytes: int  # kept across all layers for the backward pass
    transient_bytes: int  # one layer's backward working set, or the loss's, whichever is larger
    batch_bytes: int
    hbm_bytes: int
    flops: float  # executed per device per step (recompute included)
    model_flops_per_step: float  # whole step, all devices (the MFU numerator)
    compute_s: float
    collective_s: float
    peak_flops: float

    @property
    def total_bytes(self) -> int:
        return (self.state_bytes + self.frozen_bytes + self.grads_bytes + self.saved_activation_bytes
                + self.transient_bytes + self.batch_bytes)

    @property
    def fits(self) -> bool:
        return self.total_bytes <= self.hbm_bytes

    @property
    def step_s(self) -> float:
        return max(self.compute_s, self.collective_s)

    @property
    def mfu(self) -> float:
        return self.model_flops_per_step / (self.num_devices * self.peak_flops * self.step_s)

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "total_bytes": self.total_bytes, "fits": self.fits,
                "step_s": self.step_s, "mfu": self.mfu}


def abstract_mesh(mesh_config: Any, num_devices: int) -> AbstractMesh:
    shape = shd.resolve_mesh_shape((mesh_config.data, mesh_config.fsdp, mesh_config.tensor),
                                   num_devices)
    return AbstractMesh(shape, shd.MESH_AXES, axis_types=(AxisType.Auto,) * len(shd.MESH_AXES))


def _shard_bytes(tree: Any, shardings: Any = None) -> int:
    leaves = jax.tree.leaves(tree)
    shards = jax.tree.leaves(shardings) if shardings is not None else [x.sharding for x in leaves]
    return sum(math.prod(s.shard_shape(x.shape)) * jnp.dtype(x.dtype).itemsize
               for x, s in zip(leaves, shards))


def _split(n: int, ways: int) -> float:
    """Per-device size of a dimension of ``n`` split ``ways`` ways (replicated if not divisible,
    as sharding.logical_to_mesh_spec does)."""
    return n / ways if ways > 1 and n % ways == 0 else float(n)


def layer_activation_bytes(mc: LlamaConfig, rows: float, seq: int, tensor: int,
                           fused_attention: bool = False, kernel_residuals: bool = False) -> dict:
    """Bytes of one layer's activations on one device, by kind (see the module docstring).

    ``fused_attention``: the [seq, seq] scores never reach HBM (cuDNN flash attention, splash).
    ``kernel_residuals``: the attention kernel's forward residuals can be kept (splash).
    Otherwise they are materialised: in float32 by ``dot_product`` (jax.nn.dot_product_attention's
    XLA path, as TPU compiles show) and by any float32 model, in the 16-bit compute dtype by our
    ``xla`` attention (model/attention.py), which is also what ``auto`` falls back to.
    """
    cd = jnp.dtype(mc.dtype).itemsize
    scores = 4 if mc.attention_impl == "dot_product" else cd  # bytes per score and per output
    h, d, s = mc.hidden_size, mc.head_dim, seq
    nq, nkv = _split(mc.num_attention_heads, tensor), _split(mc.num_key_value_heads, tensor)
    inter = _split(mc.intermediate_size, tensor)
    tok = rows * s
    square = 0.0 if fused_attention else 1.0  # [seq, seq] terms
    return {
        "carry": tok * h * cd,
        "attention_qkv": tok * (nq + 2 * nkv) * d * cd,
        "attention_out": tok * nq * d * cd,
        "mlp_gate_up": tok * 2 * inter * cd,
        "projection_outputs": tok * 2 * h * cd,  # o and down: what the dots policies keep besides
        "attention_dots": square * rows * nq * s * s * scores + tok * nq * d * scores,
        # splash's output and float32 log-sum-exp per query head (model/splash.py SPLASH_RESIDUALS)
        "kernel_residuals": (tok * nq * d * cd + tok * nq * 4) if kernel_residuals else 0.0,
        "elementwise": (tok * (2 * h + (nq + nkv) * d + inter) * cd
                        + square * (rows * nq * s * s * cd + rows * s * s)),  # norms, rotary q/k,
        # SwiGLU product; softmax probabilities and the mask
    }


_DOTS = ("carry", "attention_qkv", "mlp_gate_up", "projection_outputs")
SAVED_KINDS = {
    "full": ("carry",),
    "minimal": _DOTS,
    "dots_with_no_batch_dims_saveable": _DOTS,
    "dots_saveable": _DOTS + ("attention_dots",),
    "save_attention": ("carry", "attention_qkv", "attention_out"),
    "save_attention_out": ("carry", "attention_out"),
    "save_mlp": ("carry", "mlp_gate_up"),
    "none": _DOTS + ("attention_dots", "elementwise"),
}


def saved_kinds(policy: str, kernel_residuals: bool = False) -> tuple[str, ...]:
    """The layer_activation_bytes kinds ``policy`` keeps; with the attention kernel's residuals
    kept (splash), save_attention keeps those in place of its own copy of the attention output."""
    kinds = SAVED_KINDS[policy]
    if not kernel_residuals or policy in ("full", "save_mlp", "none"):
        return kinds
    return tuple(k for k in kinds if k != "attention_out") + ("kernel_residuals",)


def executed_flops_per_token(mc: LlamaConfig, seq: int, lora: bool = False,
                             kernel_residuals: bool = False) -> float:
    """Matmul FLOPs per token one step executes, remat recomputation included (``kernel_residuals``:
    the attention kernel's forward is not run again where the policy keeps its residuals)."""
    n_layer = metrics_lib.matmul_params(mc) - mc.hidden_size * mc.vocab_size  # minus the LM head
    attn_fwd = 4.0 * mc.num_hidden_layers * mc.num_attention_heads * mc.head_dim * seq
    proj_fwd = 2.0 * n_layer
    head_fwd = 2.0 * mc.hidden_size * mc.vocab_size
    # forward + input gradients (+ weight gradients unless the weights are frozen LoRA bases)
    passes = 2.0 if lora else 3.0
    total = passes * (proj_fwd + head_fwd) + 3.0 * attn_fwd
    policy = mc.remat_policy
    mlp_fwd = 2.0 * 3 * mc.hidden_size * mc.intermediate_size * mc.num_hidden_layers
    if policy == "full":
        total += proj_fwd + attn_fwd
    elif policy in ("minimal", "dots_with_no_batch_dims_saveable") and not kernel_residuals:
        total += attn_fwd  # the batched attention dots are recomputed
    elif policy == "save_attention":
        total += mlp_fwd  # the MLP's three projections are recomputed
    elif policy == "save_attention_out":  # the projections, and attention unless its kernel's residuals are kept
        total += proj_fwd + (0.0 if kernel_residuals else attn_fwd)
    elif policy == "save_mlp":
        total += proj_fwd - mlp_fwd + attn_fwd  # the attention block is recomputed
    return total


def _collective_seconds(mc: LlamaConfig, mesh: dict, chip: Chip, param_count: float,
                        trainable_count: float, rows: float, seq: int, micro: int,
                        recompute_layers: bool) -> float:
    """Ring all-gather / reduce-scatter / all-reduce bytes per device over each axis' link."""
    cd = jnp.dtype(mc.dtype).itemsize
    d, f, t = mesh["data"], mesh["fsdp"], mesh["tensor"]

    def bandwidth(span: int) -> float:
        if chip.gpus_per_node and span > chip.gpus_per_node:
            return chip.scale_out_bandwidth
        return chip.interconnect_bandwidth

    seconds = 0.0
    if f > 1:  # params all-gathered; grads reduce-scattered every micro-batch
        # One micro-batch: gathered in the forward and again in the backward. Several: XLA hoists
        # the (loop-invariant) gathered weights out of the micro-batch loop, once per step.
        gathers = 1 if micro > 1 else 2
        frac = (f - 1) / f
        sent = gathers * frac * param_count / t * cd + micro * frac * trainable_count / t * 4
        seconds += sent / bandwidth(f * t)
    if d > 1:
        seconds += 2 * (d - 1) / d * trainable_count / (f * t) * 4 / bandwidth(d * f * t)
    if t > 1:  # two all-reduces of [rows, seq, hidden] per layer, forward and backward
        per = 2 * (t - 1) / t * rows * seq * mc.hidden_size * cd
        count = mc.num_hidden_layers * (2 + 2 + (2 if recompute_layers else 0)) * micro
        seconds += per * count / bandwidth(t)
    return seconds


def estimate(config: Any, model_config: LlamaConfig, num_devices: int, chip: Chip,
             cluster_name: str = "", devices_per_chip: int = 1,
             fused_attention: bool = False, kernel_residuals: bool = False) -> Estimate:
    """Analytic per-device memory and step time of ``config``'s train step on ``num_devices``."""
    from mellama_jax.train import loop

    mc = model_config
    mesh = abstract_mesh(config.mesh, num_devices)
    loop.validate_batch_layout(config, mesh)  # the batch launch.py would refuse on this mesh
    trainer = loop.Trainer(config, mc, mesh)
    state = trainer.abstract_state()
    state_bytes = _shard_bytes(state)
    params_bytes = _shard_bytes(state.params)
    opt_bytes = _shard_bytes(state.opt_state)
    frozen = 0
    lora = trainer.lora is not None
    if lora:
        frozen = _shard_bytes(trainer.frozen_shapes, trainer.frozen_shardings)
    micro = int(config.train.micro_batches)
    gbs, seq = int(config.train.global_batch_size), int(config.data.seq_len)
    shape = dict(mesh.shape)
    rows = gbs / micro / (shape["data"] * shape["fsdp"])
    t = shape["tensor"]
    grads = params_bytes * (2 if micro > 1 else 1)  # gradients in the params' dtype (+ accumulator)

    layer = layer_activation_bytes(mc, rows, seq, t, fused_attention, kernel_residuals)
    policy = mc.remat_policy
    saved_layer = sum(layer[k] for k in saved_kinds(policy, kernel_residuals))
    all_layer = sum(layer.values())
    saved = mc.num_hidden_layers * saved_layer
    cd = jnp.dtype(mc.dtype).itemsize
    base_params = mc.num_params()
    layer_weights = (base_params - 2 * mc.vocab_size * mc.hidden_size) / mc.num_hidden_layers
    gathered = 2 * layer_weights / t * cd  # this layer's and the prefetched next one's weights
    # One layer's activations at a time during the backward pass (recomputed or not): matches
    # the TPU compiler's temporaries within TOLERANCE on the shapes in tests/test_plan.py.
    layer_ws = all_layer + gathered
    vocab = _split(mc.vocab_size, t) if config.train.loss_impl == "vocab_parallel" else mc.vocab_size
    loss_ws = 3 * rows * seq * vocab * 4
    transient = max(layer_ws, loss_ws)
    if micro > 1 and shape["fsdp"] > 1:
        # The hoisted all-gathered weights (see _collective_seconds) stay resident all step; the
        # 70B v5p compile in README.md shows this as ~16 GiB of temporaries per device.
        transient += base_params / t * cd
    batch = int(gbs / (shape["data"] * shape["fsdp"]) * seq * 4 * 5)

    tokens = gbs * seq
    flops_dev = executed_flops_per_token(mc, seq, lora, kernel_residuals) * tokens / num_devices
    peak = chip.peak_flops / devices_per_chip
    trainable = sum(x.size for x in jax.tree.leaves(trainer.abstract_params))
    comm = _collective_seconds(mc, shape, chip, base_params, trainable, rows, seq, micro,
                               policy in ("full",))
    return Estimate(
        cluster=cluster_name, num_devices=num_devices, mesh=shape, remat_policy=policy,
        seq_len=seq, rows_per_device=rows, state_bytes=state_bytes, params_bytes=params_bytes,
        optimizer_bytes=opt_bytes, frozen_bytes=frozen, grads_bytes=int(grads),
        saved_activation_bytes=int(saved), transient_bytes=int(transient), batch_bytes=batch,
        hbm_bytes=chip.hbm_bytes // devices_per_chip, flops=flops_dev,
        model_flops_per_step=metrics_lib.flops_per_token(mc, seq) * tokens,
        compute_s=flops_dev / peak, collective_s=comm, peak_flops=peak)
