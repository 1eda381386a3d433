"""Autoregressive generation: one prefill over the prompt, then a jit-compiled decode loop over a
preallocated KV cache. Pure function of (params, tokens, rng); left padding via a prompt mask.

Prefill and decode step are `mellama_jax.model.decode`'s (the path evaluation scores with too): the
layers run unrolled over per-layer weights and one `KVCache`, so each decode step reads every weight
once.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from mellama_jax.model.config import LlamaConfig
from mellama_jax.model import decode


def sample_next(logits: jnp.ndarray, rng: jax.Array, temperature: float, top_p: float) -> jnp.ndarray:
    """Greedy when temperature == 0, else nucleus sampling; logits [b, vocab] float32."""
    if temperature == 0.0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits / temperature
    if top_p < 1.0:
        sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]
        cumulative = jnp.cumsum(jax.nn.softmax(sorted_logits, axis=-1), axis=-1)
        # Keep the smallest prefix whose mass reaches top_p (always at least the top token).
        cutoff_index = jnp.sum(cumulative < top_p, axis=-1, keepdims=True)
        cutoff = jnp.take_along_axis(sorted_logits, cutoff_index, axis=-1)
        logits = jnp.where(logits < cutoff, -jnp.inf, logits)
    return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)


def _sample_rows(logits: jnp.ndarray, row_keys: jax.Array, step: jnp.ndarray, temperature: float,
                 top_p: float) -> jnp.ndarray:
    """sample_next with one key per row: row r at decode step i draws with fold_in(row_keys[r], i), so a
    row's tokens depend on its own key only, never on its batch position or the batch size."""
    if temperature == 0.0:
        return sample_next(logits, row_keys[0], 0.0, top_p)
    step_keys = jax.vmap(lambda k: jax.random.fold_in(k, step))(row_keys)
    return jax.vmap(lambda l, k: sample_next(l[None], k, temperature, top_p)[0])(logits, step_keys)


def _ends_with_stop(recent: jnp.ndarray, stop_ids: jnp.ndarray) -> jnp.ndarray:
    """Whether each row's last generated tokens `recent` [b, L] end with one of the stop token-id
    sequences `stop_ids` [n, L] (left-padded with -1, which matches anything; `recent` starts as -2,
    so a sequence longer than what was generated never matches)."""
    hit = (recent[:, None, :] == stop_ids[None]) | (stop_ids[None] < 0)
    return jnp.any(jnp.all(hit, axis=-1), axis=-1)


@functools.partial(jax.jit, static_argnames=("config", "max_new_tokens", "temperature", "top_p", "eos_id",
                                             "per_row"))
def _generate(params, prompt_tokens, prompt_mask, rng, stop_ids, active, *, config: LlamaConfig, max_new_tokens: int,
              temperature: float, top_p: float, eos_id: int | None, per_row: bool):
    batch, prompt_len = prompt_tokens.shape
    pad_id = 0 if config.pad_token_id is None else config.pad_token_id
    # Per-layer weights (see model/decode.py): the decode loop below then reads each weight once per
    # token and writes only the new token's keys and values.
    params = decode.prepare_params(config, params)
    logits, cache, next_position = decode.prefill(config, params, prompt_tokens, prompt_mask,
                                                  prompt_len + max_new_tokens)

    out = jnp.concatenate([prompt_tokens, jnp.full((batch, max_new_tokens), pad_id, jnp.int32)], axis=1)

    if per_row:
        row_keys = jax.random.wrap_key_data(rng)  # [b, key words] -> b typed keys
    stop_len = stop_ids.shape[1]

    def step(state):
        i, last_logits, cache, out, done, position, rng, recent = state
        if per_row:
            token = _sample_rows(last_logits, row_keys, i, temperature, top_p)
        else:
            rng, sample_rng = jax.random.split(rng)
            token = sample_next(last_logits, sample_rng, temperature, top_p)
        token = jnp.where(done, pad_id, token)
        out = jax.lax.dynamic_update_slice(out, token[:, None], (0, prompt_len + i))
        if eos_id is not None:
            done = done | (token == eos_id)
        if stop_len:  # a row whose tokens now end with a stop sequence has ended
            recent = jnp.concatenate([recent[:, 1:], token[:, None]], axis=1)
            done = done | _ends_with_stop(recent, stop_ids)
        logits, cache = decode.decode_step(config, params, token, position, cache, prompt_len + i)
        return i + 1, logits, cache, out, done, position + 1, rng, recent

    def keep_going(state):
        i, done = state[0], state[4]
        return (i < max_new_tokens) & ~jnp.all(done)

    done = ~active  # rows that only fill the batch are done from the start
    recent = jnp.full((batch, stop_len), -2, jnp.int32)
    state = (jnp.int32(0), logits[:, -1], cache, out, done, next_position, rng, recent)
    final = jax.lax.while_loop(keep_going, step, state)
    return final[3], final[0]


def _last_column_all_ones(mask: jax.Array) -> bool:
    """Whether every row's last prompt slot is real; on a multi-process array each process checks the
    rows it holds (the others are checked by their own processes)."""
    if mask.is_fully_addressable:
        return bool(np.all(np.asarray(mask)[:, -1] != 0))
    last = mask.shape[1] - 1
    for shard in mask.addressable_shards:
        columns = range(mask.shape[1])[shard.index[1]]
        if last in columns and np.any(np.asarray(shard.data)[:, columns.index(last)] == 0):
            return False
    return True


def generate(config: LlamaConfig, params, prompt_tokens, max_new_tokens: int, temperature: float = 0.0,
             top_p: float = 1.0, eos_id: int | None = None, rng: jax.Array | None = None,
             prompt_mask=None, row_keys=None, stop_ids=None, active=None, return_steps: bool = False):
    """Continue `prompt_tokens` [b, t] by `max_new_tokens`; returns int32 [b, t + max_new_tokens].

    Batches of different prompt lengths are left-padded, with `prompt_mask` (1 = real token) saying
    which tokens are real. Greedy when temperature is 0. After `eos_id` a row emits padding
    (`config.pad_token_id`, or 0); `eos_id=None` never stops early. `params` are the model's params,
    or `decode.prepare_params(config, params)` computed once for many calls. Inputs may be global
    arrays sharded over several processes.

    Sampling keys: `rng` (one key, split per step for the whole batch) or `row_keys`, uint32 key data
    [b, 2] (`jax.random.key_data` of one key per row): row r's step-i token is drawn with
    fold_in(row_keys[r], i), so its samples do not depend on which rows share its batch.
    `stop_ids` [n, L] int: token-id sequences (left-padded with -1) that end a row as EOS does, checked
    on device after every token, so a batch stops once every row has hit EOS or a stop sequence.
    `active` [b] bool (default all): False marks a row that only fills the batch; it emits padding
    and never keeps the loop running. With `return_steps`, returns (tokens, number of decode steps run).
    """
    prompt_tokens = jnp.asarray(prompt_tokens, jnp.int32)
    if prompt_tokens.ndim != 2:
        raise ValueError(f"prompt_tokens must be [batch, length], got shape {prompt_tokens.shape}")
    if prompt_mask is None:
        prompt_mask = jnp.ones_like(prompt_tokens)
    prompt_mask = jnp.asarray(prompt_mask, jnp.int32)
    if prompt_mask.shape != prompt_tokens.shape:
        raise ValueError(f"prompt_mask shape {prompt_mask.shape} != prompt_tokens shape {prompt_tokens.shape}")
    if not _last_column_all_ones(prompt_mask):
        raise ValueError("prompts must be left-padded: the last column of prompt_mask must be all ones")
    total = prompt_tokens.shape[1] + max_new_tokens
    if total > config.max_position_embeddings:
        raise ValueError(f"prompt length + max_new_tokens = {total} exceeds "
                         f"max_position_embeddings={config.max_position_embeddings}")
    if temperature < 0 or not 0 < top_p <= 1:
        raise ValueError(f"need temperature >= 0 and 0 < top_p <= 1, got {temperature}, {top_p}")
    per_row = row_keys is not None
    if per_row:
        if rng is not None:
            raise ValueError("pass rng (one key for the batch) or row_keys (one per row), not both")
        rng = row_keys if isinstance(row_keys, jax.Array) else jnp.asarray(row_keys, jnp.uint32)
        if rng.ndim != 2 or rng.shape[0] != prompt_tokens.shape[0]:
            raise ValueError(f"row_keys must be [batch, key words] uint32 key data, got shape {rng.shape}")
    elif rng is None:
        if temperature > 0:
            raise ValueError("sampling (temperature > 0) needs an explicit rng key")
        rng = jax.random.key(0)
    if stop_ids is None:
        stop_ids = np.zeros((0, 0), np.int32)
    stop_ids = jnp.asarray(stop_ids, jnp.int32)
    if stop_ids.ndim != 2:
        raise ValueError(f"stop_ids must be [sequences, length], got shape {stop_ids.shape}")
    active = jnp.ones((prompt_tokens.shape[0],), bool) if active is None else jnp.asarray(active, bool)
    out, steps = _generate(params, prompt_tokens, prompt_mask, rng, stop_ids, active, config=config,
                           max_new_tokens=int(max_new_tokens), temperature=float(temperature), top_p=float(top_p),
                           eos_id=eos_id, per_row=per_row)
    return (out, steps) if return_steps else out
