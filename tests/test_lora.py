"""LoRA against PEFT: same A/B -> same logits; zero B -> the base exactly; merge and PEFT export."""
from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mellama_jax.checkpoint import lora_io
from mellama_jax.model import lora
from mellama_jax.model.llama import Llama

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")


def _hf_and_ours(tmp_path, variant="gqa"):
    from hf_fixtures import make_hf_model
    from mellama_jax.checkpoint.load import load_pretrained

    model = make_hf_model(str(tmp_path / "hf"), variant)
    config, params = load_pretrained(str(tmp_path / "hf"))
    return model, config.replace(dtype="float32", param_dtype="float32"), params


def _random_adapters(config, spec, seed=1):
    adapters = lora.init_adapters(config, spec, jax.random.PRNGKey(seed))
    # B is zero at init; give it values so the adapters change the output.
    return jax.tree_util.tree_map_with_path(
        lambda p, x: 0.05 * jax.random.normal(jax.random.PRNGKey(hash(jax.tree_util.keystr(p)) % 1000), x.shape)
        if p[-1].key == "b" else x, adapters)


def _peft_model(model, spec, adapters, config):
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(r=spec.rank, lora_alpha=spec.alpha, lora_dropout=0.0,
                     target_modules=[lora.TARGETS[t].module[1] for t in spec.targets])
    pm = get_peft_model(model, cfg).eval()
    state = {k.replace(".weight", ".default.weight"): torch.tensor(v)
             for k, v in lora_io.peft_tensors(adapters, config, spec).items()}
    missing = pm.load_state_dict(state, strict=False)
    assert not missing.unexpected_keys, missing.unexpected_keys
    return pm


@pytest.mark.parametrize("variant,targets", [
    ("gqa", "q,k,v,o,gate,up,down"),
    pytest.param("mqa_theta1e6", "q,v", marks=pytest.mark.slow),
    pytest.param("odd_vocab_mlp", "o,down", marks=pytest.mark.slow)])
def test_lora_forward_matches_peft(tmp_path, variant, targets):
    model, config, params = _hf_and_ours(tmp_path, variant)
    spec = lora.LoraSpec(rank=4, alpha=8.0, targets=lora._parse_targets(targets))
    adapters = _random_adapters(config, spec)
    tokens = np.random.default_rng(0).integers(0, config.vocab_size, (2, 11))
    ours = Llama(config).apply({"params": params, "lora": lora.scaled(adapters, spec)}, jnp.asarray(tokens))
    pm = _peft_model(model, spec, adapters, config)
    with torch.no_grad():
        ref = pm(torch.tensor(tokens)).logits.numpy()
    base = Llama(config).apply({"params": params}, jnp.asarray(tokens))
    assert np.abs(np.asarray(base) - ref).max() > 1e-3  # the adapters do change the output
    assert np.abs(np.asarray(ours) - ref).max() <= 1e-4


def test_zero_b_is_base_exactly(tmp_path):
    _, config, params = _hf_and_ours(tmp_path)
    spec = lora.LoraSpec(rank=4, alpha=32.0)
    adapters = lora.init_adapters(config, spec, jax.random.PRNGKey(0))
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, config.vocab_size, (2, 9)))
    base = Llama(config).apply({"params": params}, tokens)
    adapted = Llama(config).apply({"params": params, "lora": lora.scaled(adapters, spec)}, tokens)
    np.testing.assert_array_equal(np.asarray(base), np.asarray(adapted))


def test_merge_matches_adapters_and_peft_roundtrip(tmp_path):
    _, config, params = _hf_and_ours(tmp_path)
    spec = lora.LoraSpec(rank=3, alpha=6.0)
    adapters = _random_adapters(config, spec)
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, config.vocab_size, (2, 9)))
    adapted = Llama(config).apply({"params": params, "lora": lora.scaled(adapters, spec)}, tokens)
    merged = Llama(config).apply({"params": lora.merge(params, adapters, spec)}, tokens)
    assert np.abs(np.asarray(adapted) - np.asarray(merged)).max() <= 1e-4
    back = lora_io.adapters_from_peft(lora_io.peft_tensors(adapters, config, spec), config, spec)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), b), adapters, back)


def test_dropout_only_in_training():
    from mellama_jax.model.presets import get_preset

    config = get_preset("tiny").replace(dtype="float32", num_hidden_layers=1, vocab_size=64)
    from mellama_jax.model.llama import init_params
    params = init_params(config, jax.random.PRNGKey(0))
    spec = lora.LoraSpec(rank=2, alpha=2.0, dropout=0.5, targets=("q",))
    adapters = _random_adapters(config, spec)
    tokens = jnp.ones((1, 8), jnp.int32)
    model = Llama(config, lora_dropout=0.5)
    variables = {"params": params, "lora": lora.scaled(adapters, spec)}
    no_rng = model.apply(variables, tokens)
    again = Llama(config).apply(variables, tokens)
    np.testing.assert_array_equal(np.asarray(no_rng), np.asarray(again))
    dropped = model.apply(variables, tokens, rngs={"dropout": jax.random.PRNGKey(3)})
    assert np.abs(np.asarray(dropped) - np.asarray(no_rng)).max() > 0


def test_spec_from_config_errors():
    import ml_collections

    c = ml_collections.ConfigDict(dict(enabled=True, rank=4, alpha=8.0, dropout=0.0, targets="q,x"))
    with pytest.raises(ValueError, match="config.lora.targets.*'x'"):
        lora.spec_from_config(c)
    c.targets = "q_proj,gate"
    assert lora.spec_from_config(c).targets == ("q", "gate")
    c.enabled = False
    assert lora.spec_from_config(c) is None
