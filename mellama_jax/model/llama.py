"""The LLaMA-style decoder (LLaMA-2/3, Qwen2, Mistral) as pure-functional Flax linen modules.

Every parameter carries logical axis names (`nn.with_logical_partitioning`) and the main
activations are constrained by logical name (`nn.with_logical_constraint`), so the mapping onto a
device mesh is a table in the config, never code. Layers are scanned (`nn.scan`) so compile time
does not grow with depth, and rematerialised with a configurable policy.

`Llama` is the training (and full-sequence scoring) forward. Prefill and token-by-token decoding
run the same layers unrolled over per-layer weights and one KV cache (`mellama_jax.model.decode`):
a layer takes its cache as an explicit pytree and returns the updated one (never a hidden Flax
collection), which keeps generation a pure function.
"""
from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from mellama_jax.model.attention import attention, cache_rows, cached_attention, make_attention_mask, target_platform
from mellama_jax.model.config import (ATTENTION_OUT, ATTENTION_QKV, MLP_GATE_UP, PROJECTION_BY_NAME,
                                      SPLASH_INPUTS, SPLASH_RESIDUALS, LlamaConfig)
from mellama_jax.model.rope import apply_rotary, rotary_tables

Array = jnp.ndarray
_INIT_STD = 0.02


def _and_attention(policy):
    # The dots policies keep the q, k, v projections but not what the splash kernel makes (a Pallas
    # call, not a dot), so the backward pass would run its forward again for its output and
    # log-sum-exp (4% of LLaMA-3 8B's executed FLOPs at 8,192 tokens), and redo RoPE and the
    # kernel-layout copies of q, k, v. Kept instead: the kernel's inputs and residuals, for one
    # more [tokens, heads x head_dim] array per layer. Off splash the names match nothing, so the
    # policy is jax's own.
    return jax.checkpoint_policies.save_from_both_policies(
        policy, jax.checkpoint_policies.save_only_these_names(SPLASH_INPUTS, SPLASH_RESIDUALS))


REMAT_POLICIES = {
    "full": None,  # save nothing, recompute the whole layer
    "dots_saveable": _and_attention(jax.checkpoint_policies.dots_saveable),
    "dots_with_no_batch_dims_saveable": _and_attention(jax.checkpoint_policies.dots_with_no_batch_dims_saveable),
    "minimal": _and_attention(jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims),
    # Keep what attention needs and makes (no q/k/v projection, RoPE or attention recompute),
    # recompute the MLP: for LLaMA-2 13B less than half the per-token bytes the dots policies keep.
    # Under splash the kernel's own residuals are its output (attention.attention names the
    # attention output of the other kernels only).
    "save_attention": jax.checkpoint_policies.save_only_these_names(ATTENTION_QKV, ATTENTION_OUT,
                                                                    SPLASH_INPUTS, SPLASH_RESIDUALS),
    # Recompute the layer but for the attention output (under splash: the kernel's output and
    # log-sum-exp, so the kernel's forward runs once): full remat's memory plus one
    # [tokens, heads x head_dim] array per layer.
    "save_attention_out": jax.checkpoint_policies.save_only_these_names(ATTENTION_OUT, SPLASH_RESIDUALS),
    # Keep the MLP's gate and up projections, recompute the attention block.
    "save_mlp": jax.checkpoint_policies.save_only_these_names(MLP_GATE_UP),
}


def _param(module: nn.Module, name: str, shape: tuple, axes: tuple, config: LlamaConfig,
           init=nn.initializers.normal(_INIT_STD)) -> Array:
    """A parameter tagged with logical axis names, cast to the compute dtype for use."""
    value = module.param(name, nn.with_logical_partitioning(init, axes), shape,
                         jnp.dtype(config.param_dtype))
    return jnp.asarray(value, jnp.dtype(config.dtype))


def _kernel(module: nn.Module, name: str, config: LlamaConfig) -> Array:
    """The kernel [in..., out...] of one of model.config.PROJECTIONS, tagged with its logical axes."""
    p = PROJECTION_BY_NAME[name]
    return _param(module, name, p.in_shape(config) + p.out_shape(config), p.in_axes + p.out_axes, config)


def project(x: Array, kernel: Array, n_in: int = 1) -> Array:
    """x [..., in...] @ kernel [in..., out...] -> [..., out...], contracting x's last `n_in` dims.

    On CPU: one 2-D matmul [tokens, in] @ [in, out] between reshapes (bitcasts in row-major
    layout), so autodiff gives the backward as 2-D dots too (dx = dy W^T, dW = x^T dy), which
    XLA:CPU runs on the stored operands; with the multi-dim contraction XLA:CPU transposed the
    weight gradient's operands on every step (tests/test_train_step_hlo.py). Elsewhere: the
    multi-dim dot_general, which TPU layout assignment handles without copies, while the
    reshapes there merge a sharded batch axis with the length axis (measured on the 13B recipe's
    v5p-32 compile: 60.4 GiB and a 15.3 s HBM-bound step, against 59.9 GiB and 13.6 s). Same
    products and sums either way; the platform is the traced program's (attention.target_platform).
    """
    in_shape, out_shape = kernel.shape[:n_in], kernel.shape[n_in:]
    if x.shape[x.ndim - n_in:] != in_shape:
        raise ValueError(f"project: x {x.shape} does not end in the kernel's input dims {in_shape}")
    if target_platform() != "cpu":
        dims = (tuple(range(x.ndim - n_in, x.ndim)), tuple(range(n_in)))
        return jax.lax.dot_general(x, kernel, (dims, ((), ())))
    lead = x.shape[:x.ndim - n_in]
    k = math.prod(in_shape)
    y = x.reshape(-1, k) @ kernel.reshape(k, -1)
    return y.reshape(*lead, *out_shape)


def _bias(module: nn.Module, name: str, y: Array, config: LlamaConfig) -> Array:
    """y + the bias of projection `name` when this model has one (Qwen2's q/k/v, LLaMA's attention_bias).

    The bias has the projection's output dims and logical axes, so it shards like the kernel's outputs.
    """
    p = PROJECTION_BY_NAME[name]
    if p not in config.bias_projections:
        return y
    return y + _param(module, p.bias_name, p.out_shape(config), p.out_axes, config, nn.initializers.zeros)


def _with_lora(module: nn.Module, name: str, x: Array, y: Array, eq_a: str, eq_b: str,
               dropout: float) -> Array:
    """y + (dropout(x) @ A) @ B when the "lora" collection holds an adapter `name` (see model/lora.py).

    The low-rank product is computed on the activations, never as a full-size weight delta, so LoRA
    costs O(rank) extra per token at any model size. B arrives pre-scaled by alpha / rank.
    """
    if not module.has_variable("lora", name):
        return y
    adapter = module.get_variable("lora", name)
    if dropout > 0 and module.has_rng("dropout"):
        keep = jax.random.bernoulli(module.make_rng("dropout"), 1.0 - dropout, x.shape)
        x = jnp.where(keep, x / (1.0 - dropout), 0).astype(x.dtype)
    low = jnp.einsum(eq_a, x, jnp.asarray(adapter["a"], x.dtype))
    return y + jnp.einsum(eq_b, low, jnp.asarray(adapter["b"], x.dtype)).astype(y.dtype)


class RMSNorm(nn.Module):
    """Root-mean-square norm; statistics in float32 as in the HF reference."""

    config: LlamaConfig

    @nn.compact
    def __call__(self, x: Array) -> Array:
        scale = _param(self, "scale", (x.shape[-1],), ("norm",), self.config, nn.initializers.ones)
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.config.rms_norm_eps)
        return normed.astype(jnp.dtype(self.config.dtype)) * scale


class Attention(nn.Module):
    """Grouped-query self-attention with rotary positions and an optional KV cache.

    `plain_causal` says the caller passed no segment ids and no cache, so the mask is just
    lower-triangular and the kernels may skip segment masking.
    """

    config: LlamaConfig
    plain_causal: bool = False
    lora_dropout: float = 0.0

    @nn.compact
    def __call__(self, x: Array, cos: Array, sin: Array, segment_ids: Array, cache: dict | None,
                 cache_index: Array | None) -> tuple[Array, dict | None]:
        cfg = self.config
        wq, wk, wv, wo = (_kernel(self, name, cfg) for name in ("q_proj", "k_proj", "v_proj", "o_proj"))

        q = _bias(self, "q_proj", project(x, wq), cfg)
        k = _bias(self, "k_proj", project(x, wk), cfg)
        v = _bias(self, "v_proj", project(x, wv), cfg)
        q = _with_lora(self, "q_proj", x, q, "bse,er->bsr", "bsr,rhd->bshd", self.lora_dropout)
        k = _with_lora(self, "k_proj", x, k, "bse,er->bsr", "bsr,rhd->bshd", self.lora_dropout)
        v = _with_lora(self, "v_proj", x, v, "bse,er->bsr", "bsr,rhd->bshd", self.lora_dropout)
        q = nn.with_logical_constraint(q, ("activation_batch", "activation_length", "activation_heads", "activation_head_dim"))
        k = nn.with_logical_constraint(k, ("activation_batch", "activation_length", "activation_kv_heads", "activation_head_dim"))
        v = nn.with_logical_constraint(v, ("activation_batch", "activation_length", "activation_kv_heads", "activation_head_dim"))
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        q, k, v = (checkpoint_name(t, ATTENTION_QKV) for t in (q, k, v))

        if cache is None:
            out = attention(q, k, v, segment_ids, cfg.attention_impl, plain_causal=self.plain_causal,
                            sliding_window=cfg.sliding_window, splash_blocks=cfg.splash_blocks)
            new_cache = None
        else:
            # The cache holds one row per (sequence, kv head): [b * kv_heads, S, d], the layout the
            # attention matmuls read, so a decode step reads it in place, never transposed. The
            # chunk is written at cache_index, then attends over the whole cache; XLA updates the
            # t slots in place.
            start = (0, cache_index, 0)
            keys = jax.lax.dynamic_update_slice(cache["k"], cache_rows(k).astype(cache["k"].dtype), start)
            values = jax.lax.dynamic_update_slice(cache["v"], cache_rows(v).astype(cache["v"].dtype), start)
            mask = make_attention_mask(segment_ids, cache["segment_ids"], q_offset=cache_index,
                                       sliding_window=cfg.sliding_window)
            out = cached_attention(q, keys.astype(q.dtype), values.astype(q.dtype), mask)
            new_cache = {"k": keys, "v": values}
        out = nn.with_logical_constraint(out, ("activation_batch", "activation_length", "activation_heads", "activation_head_dim"))
        y = _bias(self, "o_proj", project(out, wo, n_in=2), cfg)
        return _with_lora(self, "o_proj", out, y, "bshd,hdr->bsr", "bsr,re->bse", self.lora_dropout), new_cache


class MLP(nn.Module):
    """SwiGLU feed-forward block."""

    config: LlamaConfig
    lora_dropout: float = 0.0

    @nn.compact
    def __call__(self, x: Array) -> Array:
        cfg = self.config
        gate = project(x, _kernel(self, "gate_proj", cfg))
        up = project(x, _kernel(self, "up_proj", cfg))
        gate = _with_lora(self, "gate_proj", x, gate, "bse,er->bsr", "bsr,ri->bsi", self.lora_dropout)
        up = _with_lora(self, "up_proj", x, up, "bse,er->bsr", "bsr,ri->bsi", self.lora_dropout)
        gate, up = checkpoint_name(gate, MLP_GATE_UP), checkpoint_name(up, MLP_GATE_UP)
        hidden = nn.with_logical_constraint(nn.silu(gate) * up, ("activation_batch", "activation_length", "activation_mlp"))
        out = project(hidden, _kernel(self, "down_proj", cfg))
        return _with_lora(self, "down_proj", hidden, out, "bsi,ir->bsr", "bsr,re->bse", self.lora_dropout)


class Embedding(nn.Module):
    """Token embedding table [vocab, embed]; `attend` is the tied LM head."""

    config: LlamaConfig

    def setup(self) -> None:
        cfg = self.config
        self.embedding = self.param(
            "embedding", nn.with_logical_partitioning(nn.initializers.normal(_INIT_STD), ("vocab", "embed")),
            (cfg.vocab_size, cfg.hidden_size), jnp.dtype(cfg.param_dtype))

    def __call__(self, tokens: Array) -> Array:
        return jnp.take(jnp.asarray(self.embedding, jnp.dtype(self.config.dtype)), tokens, axis=0)

    def attend(self, x: Array) -> Array:
        table = jnp.asarray(self.embedding, jnp.dtype(self.config.dtype))
        logits = jnp.einsum("bse,ve->bsv", x, table, preferred_element_type=jnp.float32)
        return nn.with_logical_constraint(logits, ("activation_batch", "activation_length", "activation_vocab"))


class LMHead(nn.Module):
    """Untied output projection [embed, vocab]; logits always in float32."""

    config: LlamaConfig

    @nn.compact
    def __call__(self, x: Array) -> Array:
        cfg = self.config
        kernel = _param(self, "kernel", (cfg.hidden_size, cfg.vocab_size), ("embed", "vocab"), cfg)
        logits = jnp.einsum("bse,ev->bsv", x, kernel, preferred_element_type=jnp.float32)
        return nn.with_logical_constraint(logits, ("activation_batch", "activation_length", "activation_vocab"))


class DecoderLayer(nn.Module):
    """One pre-norm transformer block; the scan body (carry = hidden states, xs = this layer's cache)."""

    config: LlamaConfig
    plain_causal: bool = False
    lora_dropout: float = 0.0

    @nn.compact
    def __call__(self, x: Array, cache: dict | None, cos: Array, sin: Array, segment_ids: Array,
                 kv_segment_ids: Array | None, cache_index: Array | None) -> tuple[Array, dict | None]:
        layer_cache = None if cache is None else {**cache, "segment_ids": kv_segment_ids}
        attn_out, new_cache = Attention(self.config, self.plain_causal, self.lora_dropout, name="attention")(
            RMSNorm(self.config, name="input_norm")(x), cos, sin, segment_ids, layer_cache, cache_index)
        x = x + attn_out
        x = x + MLP(self.config, self.lora_dropout, name="mlp")(RMSNorm(self.config, name="post_attention_norm")(x))
        x = nn.with_logical_constraint(x, ("activation_batch", "activation_length", "activation_embed"))
        return x, new_cache


def _scanned_layers(config: LlamaConfig):
    layer = DecoderLayer
    if config.remat_policy != "none":
        layer = nn.remat(layer, policy=REMAT_POLICIES[config.remat_policy], prevent_cse=False)
    return nn.scan(
        layer,
        variable_axes={"params": 0, "lora": 0},  # LoRA adapters are stacked over layers too
        split_rngs={"params": True, "dropout": True},
        in_axes=(0, nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast),
        out_axes=0,
        length=config.num_hidden_layers,
        metadata_params={nn.PARTITION_NAME: "layers"},
    )


class Llama(nn.Module):
    """LLaMA-style causal language model: tokens [b, s] -> float32 logits [b, s, vocab].

    LoRA adapters, when given as a "lora" variable collection, are added inside the projections;
    `lora_dropout` applies to their inputs when a "dropout" rng is passed (training only).
    """

    config: LlamaConfig
    lora_dropout: float = 0.0

    @nn.compact
    def __call__(self, tokens: Array, positions: Array | None = None, segment_ids: Array | None = None,
                 return_hidden: bool = False) -> Any:
        """Forward pass.

        positions default to 0..s-1; segment_ids (0 = padding) restrict attention to each packed
        document.
        """
        cfg = self.config
        b, s = tokens.shape
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(s, dtype=jnp.int32), (b, s))
        plain_causal = segment_ids is None
        if segment_ids is None:
            segment_ids = jnp.ones((b, s), jnp.int32)

        embed = Embedding(cfg, name="embed_tokens")
        x = embed(tokens)
        x = nn.with_logical_constraint(x, ("activation_batch", "activation_length", "activation_embed"))
        cos, sin = rotary_tables(positions, cfg)

        x, _ = _scanned_layers(cfg)(cfg, plain_causal, self.lora_dropout, name="layers")(
            x, None, cos, sin, segment_ids, None, None)
        x = RMSNorm(cfg, name="final_norm")(x)

        if return_hidden:
            return x
        if cfg.tie_word_embeddings:
            return embed.attend(x)
        return LMHead(cfg, name="lm_head")(x)


def lm_head_kernel(params: dict, config: LlamaConfig) -> Array:
    """The output projection [embed, vocab] (the transposed embedding when tied)."""
    if config.tie_word_embeddings:
        return params["embed_tokens"]["embedding"].T
    return params["lm_head"]["kernel"]


def _init_boxed(config: LlamaConfig, rng: jax.Array) -> Any:
    """Params still wrapped in their logical-partitioning metadata boxes."""
    return Llama(config).init(rng, jnp.zeros((1, 1), jnp.int32))["params"]


def _abstract_boxed_params(config: LlamaConfig) -> Any:
    return jax.eval_shape(lambda rng: _init_boxed(config, rng), jax.random.key(0))


def init_params(config: LlamaConfig, rng: jax.Array) -> dict:
    """Randomly initialised parameters as a plain (unboxed) pytree in `config.param_dtype`."""
    return nn.unbox(jax.jit(lambda key: _init_boxed(config, key))(rng))


def param_logical_axes(config: LlamaConfig) -> Any:
    """PartitionSpecs of logical axis names, same tree as the params; allocates nothing."""
    return nn.get_partition_spec(_abstract_boxed_params(config))


def param_shapes(config: LlamaConfig) -> Any:
    """ShapeDtypeStructs of the unboxed params, for restoring and counting without allocation."""
    return nn.unbox(_abstract_boxed_params(config))
