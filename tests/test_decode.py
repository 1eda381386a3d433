"""The decode fast path (model/decode.py): same tokens as the model's full forward, as a scanned
stacked-cache model (the path before it) and as transformers; sharded == unsharded; and, from XLA's
own cost analysis and optimized HLO, a decode step that reads each weight once and never rewrites
the cache."""
import functools
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hf_fixtures import make_hf_model
from mellama_jax import generate, load_pretrained
from mellama_jax import sharding as shd
from mellama_jax.model import decode
from mellama_jax.model.llama import Embedding, LMHead, Llama, RMSNorm, _scanned_layers, init_params, param_logical_axes
from mellama_jax.model.presets import get_preset
from mellama_jax.model.rope import rotary_tables

NEW = 10


@pytest.fixture(scope="module")
def hf_and_ours(tmp_path_factory):
    root = tmp_path_factory.mktemp("decode")
    model = make_hf_model(str(root / "hf"), "gqa", seed=5)
    config, params = load_pretrained(str(root / "hf"))
    return model, config, params


def left_padded(batch: int, length: int, vocab: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Prompts of lengths length, length-1, ... (at least 2), left-padded with 0."""
    rng = np.random.RandomState(seed)
    tokens = np.zeros((batch, length), np.int32)
    mask = np.zeros((batch, length), np.int32)
    for row in range(batch):
        n = max(length - 2 * row, 2)
        tokens[row, length - n:] = rng.randint(3, vocab, n)
        mask[row, length - n:] = 1
    return tokens, mask


@functools.partial(jax.jit, static_argnames=("config", "new"))
def full_forward_greedy(params, tokens, mask, *, config, new):
    """Reference without any cache: the training forward over the whole buffer, one token at a time
    (causality makes the not-yet-written slots irrelevant to the logits read)."""
    b, p = tokens.shape
    buf = jnp.concatenate([tokens, jnp.zeros((b, new), jnp.int32)], axis=1)
    seg = jnp.concatenate([mask, jnp.ones((b, new), jnp.int32)], axis=1)
    positions = jnp.maximum(jnp.cumsum(seg, axis=1) - 1, 0)

    def body(i, buf):
        logits = Llama(config).apply({"params": params}, buf, positions=positions, segment_ids=seg)
        token = jnp.argmax(jax.lax.dynamic_index_in_dim(logits, p + i - 1, 1, keepdims=False), -1)
        return jax.lax.dynamic_update_slice(buf, token[:, None].astype(jnp.int32), (0, p + i))

    return jax.lax.fori_loop(0, new, body, buf)


class ScannedCacheLlama(nn.Module):
    """The model as inference ran it before model/decode.py: layers scanned over the stacked weights
    (the same params tree as `Llama`), with a stacked cache {"k", "v": [L, b * kv, S, d],
    "segment_ids": [b, S]} as the scan's xs and ys. A reference, and the control of the HLO test."""

    config: object

    @nn.compact
    def __call__(self, tokens, positions, segment_ids, cache, cache_index):
        cfg = self.config
        embed = Embedding(cfg, name="embed_tokens")
        x = embed(tokens)
        cos, sin = rotary_tables(positions, cfg)
        kv_segment_ids = jax.lax.dynamic_update_slice(cache["segment_ids"], segment_ids, (0, cache_index))
        x, layers = _scanned_layers(cfg)(cfg, False, 0.0, name="layers")(
            x, {"k": cache["k"], "v": cache["v"]}, cos, sin, segment_ids, kv_segment_ids, cache_index)
        x = RMSNorm(cfg, name="final_norm")(x)
        logits = embed.attend(x) if cfg.tie_word_embeddings else LMHead(cfg, name="lm_head")(x)
        return logits, {**layers, "segment_ids": kv_segment_ids}


def init_stacked_cache(config, batch: int, length: int) -> dict:
    shape = (config.num_hidden_layers, batch * config.num_key_value_heads, length, config.head_dim)
    dtype = jnp.dtype(config.dtype)
    return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype),
            "segment_ids": jnp.zeros((batch, length), jnp.int32)}


@functools.partial(jax.jit, static_argnames=("config", "new"))
def scanned_cache_greedy(params, tokens, mask, *, config, new):
    """Reference through the scanned model's stacked cache; this was `generate`'s loop before the
    fast path."""
    model = ScannedCacheLlama(config)
    b, p = tokens.shape
    cache = init_stacked_cache(config, b, p + new)
    positions = jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0)
    logits, cache = model.apply({"params": params}, tokens, positions, mask, cache, jnp.int32(0))
    token = jnp.argmax(logits[:, -1], -1).astype(jnp.int32)
    out = [token]
    position = positions[:, -1] + 1
    for i in range(new - 1):
        logits, cache = model.apply({"params": params}, token[:, None], position[:, None],
                                    jnp.ones((b, 1), jnp.int32), cache, jnp.int32(p + i))
        token = jnp.argmax(logits[:, -1], -1).astype(jnp.int32)
        out.append(token)
        position = position + 1
    return jnp.concatenate([tokens, jnp.stack(out, 1)], axis=1)


def hf_greedy(model, tokens, mask, new_tokens):
    import torch

    with torch.no_grad():
        return model.generate(torch.tensor(tokens), attention_mask=torch.tensor(mask), do_sample=False,
                              max_new_tokens=new_tokens, min_new_tokens=new_tokens, eos_token_id=None,
                              pad_token_id=0).numpy()


@pytest.mark.parametrize("batch,padded", [(1, False), (8, True), (8, False)])
def test_fast_path_matches_full_forward_scanned_cache_and_transformers(hf_and_ours, batch, padded):
    model, config, params = hf_and_ours
    tokens, mask = left_padded(batch, 14, config.vocab_size, seed=batch)
    if not padded:
        mask = np.ones_like(mask)
        tokens = np.where(tokens == 0, 5, tokens).astype(np.int32)
    ours = np.asarray(generate(config, params, tokens, NEW, prompt_mask=mask))
    np.testing.assert_array_equal(ours, np.asarray(full_forward_greedy(params, tokens, mask, config=config, new=NEW)))
    np.testing.assert_array_equal(ours, np.asarray(scanned_cache_greedy(params, tokens, mask, config=config, new=NEW)))
    np.testing.assert_array_equal(ours[:, 14:], hf_greedy(model, tokens, mask, NEW)[:, 14:])


def test_prepared_params_give_the_same_tokens(hf_and_ours):
    _, config, params = hf_and_ours
    tokens, mask = left_padded(2, 9, config.vocab_size, seed=11)
    prepared = jax.jit(decode.prepare_params, static_argnums=0)(config, params)
    assert isinstance(prepared, decode.DecodeParams) and len(prepared.layers) == config.num_hidden_layers
    np.testing.assert_array_equal(np.asarray(generate(config, prepared, tokens, NEW, prompt_mask=mask)),
                                  np.asarray(generate(config, params, tokens, NEW, prompt_mask=mask)))


def test_kv_cache_take_rows_picks_whole_sequences():
    """KVCache names its batch axis: take_rows gathers every layer's kv-head rows of each sequence."""
    config = get_preset("tiny")
    kv, length, d = config.num_key_value_heads, 5, config.head_dim
    cache = decode.init_cache(config, 3, length)
    assert (cache.batch, cache.length) == (3, length) and len(cache.k) == config.num_hidden_layers
    assert cache.k[0].shape == (3 * kv, length, d)
    numbered = jnp.broadcast_to(jnp.arange(3 * kv, dtype=cache.k[0].dtype)[:, None, None], cache.k[0].shape)
    cache = cache.replace(k=(numbered,) * len(cache.k), segment_ids=jnp.arange(3)[:, None] * jnp.ones((1, length), jnp.int32))
    taken = cache.take_rows(jnp.array([2, 0, 2]))
    rows = np.concatenate([np.arange(2 * kv, 3 * kv), np.arange(0, kv), np.arange(2 * kv, 3 * kv)])
    np.testing.assert_array_equal(np.asarray(taken.k[-1][:, 0, 0]), rows)
    np.testing.assert_array_equal(np.asarray(taken.segment_ids[:, 0]), [2, 0, 2])
    assert taken.batch == 3 and taken.v[0].shape == (3 * kv, length, d)


def test_sharded_generate_equals_unsharded(hf_and_ours):
    _, config, params = hf_and_ours
    assert jax.device_count() == 8
    tokens, mask = left_padded(8, 12, config.vocab_size, seed=3)
    expected = np.asarray(generate(config, params, tokens, NEW, prompt_mask=mask))
    mesh = shd.make_mesh(type("M", (), dict(data=2, fsdp=2, tensor=2))())
    shardings = shd.logical_to_sharding(param_logical_axes(config), mesh, shd.DEFAULT_RULES, shapes=params)
    placed = jax.device_put(params, shardings)
    assert not placed["layers"]["mlp"]["up_proj"].sharding.is_fully_replicated
    with shd.mesh_context(mesh, shd.DEFAULT_RULES):
        out = generate(config, placed, jax.device_put(tokens, shd.batch_sharding(mesh)), NEW,
                       prompt_mask=jax.device_put(mask, shd.batch_sharding(mesh)))
    np.testing.assert_array_equal(np.asarray(out), expected)


# ---- what XLA says about the compiled decode ------------------------------------------------------

def _bytes_accessed(compiled) -> float:
    cost = compiled.cost_analysis()
    return (cost[0] if isinstance(cost, list) else cost)["bytes accessed"]


def compiled_decode_step(config, batch: int, length: int):
    params = jax.eval_shape(lambda: decode.prepare_params(config, init_params(config, jax.random.key(0))))
    caches = jax.eval_shape(lambda: decode.init_cache(config, batch, length))
    row = jax.ShapeDtypeStruct((batch,), jnp.int32)
    step = jax.jit(functools.partial(decode.decode_step, config), donate_argnums=(3,))
    return step.lower(params, row, row, caches, jax.ShapeDtypeStruct((), jnp.int32)).compile()


def test_decode_step_reads_each_weight_once():
    """bytes accessed / (every weight once + the K/V cache once) <= 1.2 for the tiny preset."""
    config, batch, length = get_preset("tiny"), 1, 128
    minimum = decode.min_step_bytes(config, batch, length)
    ratio = _bytes_accessed(compiled_decode_step(config, batch, length)) / minimum["total"]
    assert 0.99 <= ratio <= 1.2, ratio


def _while_body(hlo: str) -> str:
    body = re.search(r"while\(.*?body=%?([\w.\-]+)", hlo).group(1)
    start = hlo.index(f"%{body} (")
    return hlo[start:hlo.index("\n}\n", start)]


def _big_copies(computation: str, min_elements: int) -> list[str]:
    """Instructions that copy, transpose or slice out >= min_elements (weights or a cache) per run."""
    found = []
    for line in computation.splitlines():
        m = re.match(r"\s*(?:ROOT )?%(\S+) = [a-z0-9]+\[([0-9,]*)\]\S* ([a-z\-]+)\(", line)
        if not m:
            continue
        name, dims, op = m.groups()
        size = int(np.prod([int(d) for d in dims.split(",") if d])) if dims else 1
        copying = op in ("copy", "transpose", "dynamic-slice") or (
            op == "fusion" and re.search(r"copy|transpose|dynamic-slice", name) and "dynamic-update-slice" not in name)
        if copying and size >= min_elements:
            found.append(line.strip()[:160])
    return found


def test_decode_loop_copies_no_weight_and_no_cache():
    """In the compiled generate loop, nothing weight- or cache-sized is copied, transposed or sliced
    out per token; the same check finds the per-layer weight copies in the scanned-cache loop."""
    config, batch, prompt, new = get_preset("tiny"), 1, 8, 24
    smallest = min(config.hidden_size * config.head_dim,  # k_proj of one kv head group
                   batch * config.num_key_value_heads * (prompt + new) * config.head_dim)  # one layer's K
    params = jax.eval_shape(lambda: init_params(config, jax.random.key(0)))
    tokens = jax.ShapeDtypeStruct((batch, prompt), jnp.int32)
    from mellama_jax.model.generate import _generate

    no_stops = jax.ShapeDtypeStruct((0, 0), jnp.int32)  # the stop-sequence table generate() passes by default
    active = jax.ShapeDtypeStruct((batch,), jnp.bool_)
    fast = _generate.lower(params, tokens, tokens, jax.random.key(0), no_stops, active, config=config,
                           max_new_tokens=new, temperature=0.0, top_p=1.0, eos_id=None,
                           per_row=False).compile().as_text()
    assert _big_copies(_while_body(fast), smallest) == []

    def scanned_loop(params, tokens):  # the pre-fast-path loop body: scanned layers, stacked cache
        model = ScannedCacheLlama(config)
        cache = init_stacked_cache(config, batch, prompt + new)

        def step(i, carry):
            cache, token = carry
            logits, cache = model.apply({"params": params}, token, jnp.full((batch, 1), prompt + i),
                                        jnp.ones((batch, 1), jnp.int32), cache, prompt + i)
            return cache, jnp.argmax(logits[:, -1], -1)[:, None].astype(jnp.int32)
        return jax.lax.fori_loop(0, new, step, (cache, tokens[:, -1:]))[1]

    slow = jax.jit(scanned_loop).lower(params, tokens).compile().as_text()
    # Its outer loop's body holds the layer scan; the weight slices are in that scan's body.
    assert len(_big_copies(slow, smallest)) >= 4, "control: the scanned loop should copy weights"
