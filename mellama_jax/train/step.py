"""The jitted train step: loss, gradient accumulation over micro-batches, AdamW update.

Mixed precision lives in the model config: params are stored in ``param_dtype`` (float32 master
weights, also what the optimizer updates) and cast to ``dtype`` (bfloat16) for the matmuls; the
loss is always computed in float32.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from mellama_jax.config_validation import LossImpl
from mellama_jax.model.config import LlamaConfig
from mellama_jax.model.llama import Llama, lm_head_kernel
from mellama_jax.model.lora import scaled
from mellama_jax.sharding import BATCH_AXES, mesh_context, rules_as_tuple
from mellama_jax.train import loss as loss_lib
from mellama_jax.train.state import TrainState

BATCH_KEYS = ("inputs", "targets", "positions", "segment_ids", "loss_mask")

LossFn = Callable[..., tuple[jax.Array, loss_lib.LossSums]]


def make_loss_fn(model_config: LlamaConfig, mesh: Mesh, *, loss_impl: str = "vocab_parallel",
                 z_loss: float = 0.0, packed_documents: bool = True, lora: Any = None) -> LossFn:
    """(params, batch[, frozen, rng]) -> (sum objective, LossSums). Sums, not means, so micro-batches add up.

    With `lora` (a model.lora.LoraSpec), `params` are the trainable adapters and `frozen` the base
    params: the gradient is taken w.r.t. the adapters only; `rng` drives LoRA dropout.

    `packed_documents=False` declares that rows are plain causal windows (positions 0..s-1, padding
    only at the end): the model then gets no segment ids, which is exact for every real token and
    lets a kernel without segment support (cuDNN flash attention) run.
    """
    loss_impl = LossImpl.parse(loss_impl, "train.loss_impl")
    model = Llama(model_config, lora_dropout=lora.dropout if lora is not None else 0.0)

    def loss_fn(params, batch, frozen=None, rng=None):
        kwargs = dict(positions=batch["positions"], segment_ids=batch["segment_ids"]) if packed_documents else {}
        base = params
        variables = {"params": params}
        if lora is not None:
            base = frozen
            variables = {"params": frozen, "lora": scaled(params, lora)}
            if rng is not None and lora.dropout > 0:
                kwargs["rngs"] = {"dropout": rng}
        batch_size = batch["inputs"].shape[0]
        if loss_impl is LossImpl.VOCAB_PARALLEL and loss_lib.vocab_parallel_supported(
                mesh, model_config.vocab_size, batch_size):
            hidden = model.apply(variables, batch["inputs"], return_hidden=True, **kwargs)
            nll, log_z = loss_lib.vocab_parallel_token_losses(
                hidden, lm_head_kernel(base, model_config), batch["targets"], mesh)
        else:
            logits = model.apply(variables, batch["inputs"], **kwargs)
            nll, log_z = loss_lib.token_losses(logits, batch["targets"])
        sums = loss_lib.loss_sums(nll, log_z, batch["loss_mask"])
        return sums.nll + z_loss * sums.z, sums

    return loss_fn


def split_micro_batches(batch: dict, k: int) -> dict:
    """[B, ...] -> [k, B/k, ...] taking rows i, i+k, i+2k, ... for micro-batch i.

    Strided (not contiguous) so every device keeps only its own rows in every micro-batch: a
    contiguous split of a batch-sharded array would put micro-batch 0 on the first devices only.
    """
    def split(x):
        b = x.shape[0]
        if b % k:
            raise ValueError(f"batch of {b} rows cannot be split into config.train.micro_batches={k}")
        return jnp.swapaxes(x.reshape((b // k, k) + x.shape[1:]), 0, 1)
    return jax.tree.map(split, batch)


def accumulate_gradients(loss_fn: LossFn, params: Any, batch: dict, k: int, frozen: Any = None,
                         rng: jax.Array | None = None):
    """Sum of gradients and LossSums over k micro-batches (k == 1: one plain backward pass).

    Gradients are w.r.t. `params` only (`frozen`, the LoRA base, gets none); micro-batch i gets
    the key fold_in(rng, i)."""
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    if k == 1:
        (_, sums), grads = grad_fn(params, batch, frozen, rng)
        return grads, sums
    micro = split_micro_batches(batch, k)
    if not jax.sharding.get_abstract_mesh().empty:
        micro = jax.lax.with_sharding_constraint(micro, P(None, BATCH_AXES))

    def body(carry, xs):
        g_acc, s_acc = carry
        i, mb = xs
        key = None if rng is None else jax.random.fold_in(rng, i)
        (_, sums), grads = grad_fn(params, mb, frozen, key)
        return (jax.tree.map(jnp.add, g_acc, grads), jax.tree.map(jnp.add, s_acc, sums)), None

    zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
    zero_sums = loss_lib.LossSums(*(jnp.zeros((), jnp.float32) for _ in range(3)))
    (grads, sums), _ = jax.lax.scan(body, (zeros, zero_sums), (jnp.arange(k), micro))
    return grads, sums


def make_train_step(model_config: LlamaConfig, optimizer: optax.GradientTransformation,
                    schedule: optax.Schedule, mesh: Mesh, *, micro_batches: int = 1,
                    loss_impl: str = "vocab_parallel", z_loss: float = 0.0, packed_documents: bool = True,
                    lora: Any = None) -> Callable[..., tuple[TrainState, dict]]:
    """The un-jitted step (state, batch[, frozen]) -> (state, metrics); see ``jit_train_step``.

    With `lora`, state.params are the adapters and `frozen` the base params (never updated)."""
    loss_fn = make_loss_fn(model_config, mesh, loss_impl=loss_impl, z_loss=z_loss,
                           packed_documents=packed_documents, lora=lora)

    def train_step(state: TrainState, batch: dict, frozen: Any = None) -> tuple[TrainState, dict]:
        batch = {k: batch[k] for k in BATCH_KEYS}
        rng = None
        if lora is not None and lora.dropout > 0:
            rng = jax.random.fold_in(state.rng, state.step)  # raw uint32[2] key
        grads, sums = accumulate_gradients(loss_fn, state.params, batch, micro_batches, frozen, rng)
        denom = jnp.maximum(sums.weight, 1.0)
        grads = jax.tree.map(lambda g, p: (g / denom).astype(p.dtype), grads, state.params)
        objective, nll = loss_lib.loss_from_sums(sums, z_loss)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {
            "loss": nll,
            "objective": objective,
            "z_loss": sums.z / denom,
            "grad_norm": optax.global_norm(grads),
            "learning_rate": jnp.asarray(schedule(state.step), jnp.float32),
            "tokens": sums.weight,
        }
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
        return new_state, metrics

    return train_step


def batch_shardings(mesh: Mesh) -> dict:
    return {k: NamedSharding(mesh, P(BATCH_AXES)) for k in BATCH_KEYS}


def with_mesh_context(fn: Callable, mesh: Mesh, rules: Any) -> Callable:
    """Runs ``fn`` (and so its tracing) inside the mesh and the logical-axis-rules contexts."""
    rules = rules_as_tuple(rules)

    def wrapped(*args, **kwargs):
        with mesh_context(mesh, rules):
            return fn(*args, **kwargs)
    wrapped.inner = fn
    return wrapped


def jit_train_step(step_fn: Callable, state_shardings: TrainState, mesh: Mesh, rules: Any,
                   frozen_shardings: Any = None):
    """jit with explicit in/out shardings; the old state's buffers are donated to the new one.

    `frozen_shardings` (LoRA): the step takes the frozen base params as a third argument."""
    replicated = NamedSharding(mesh, P())
    in_shardings = (state_shardings, batch_shardings(mesh))
    if frozen_shardings is not None:
        in_shardings += (frozen_shardings,)
    jitted = jax.jit(step_fn, in_shardings=in_shardings,
                     out_shardings=(state_shardings, replicated), donate_argnums=(0,))
    return with_mesh_context(jitted, mesh, rules)


def make_eval_step(model_config: LlamaConfig, mesh: Mesh, rules: Any, param_shardings: Any,
                   loss_impl: str = "vocab_parallel", packed_documents: bool = True, lora: Any = None,
                   frozen_shardings: Any = None) -> Callable[..., loss_lib.LossSums]:
    """jitted (params, batch[, frozen]) -> LossSums of next-token cross-entropy (no z-loss, no dropout)."""
    loss_fn = make_loss_fn(model_config, mesh, loss_impl=loss_impl, packed_documents=packed_documents,
                           lora=lora)

    def eval_step(params, batch, frozen=None):
        return loss_fn(params, {k: batch[k] for k in BATCH_KEYS}, frozen)[1]

    replicated = NamedSharding(mesh, P())
    in_shardings = (param_shardings, batch_shardings(mesh))
    if frozen_shardings is not None:
        in_shardings += (frozen_shardings,)
    jitted = jax.jit(eval_step, in_shardings=in_shardings, out_shardings=replicated)
    return with_mesh_context(jitted, mesh, rules)
