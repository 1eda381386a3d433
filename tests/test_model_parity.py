"""Parity ladder against transformers: norm, rotary, whole model, both attention kernels."""
import numpy as np
import pytest

import jax
import jax.numpy as jnp

from hf_fixtures import HF_VARIANTS, hf_logits, make_hf_model, rewrite_config
from mellama_jax import Llama, load_pretrained
from mellama_jax.cli.convert import main as convert_main


@pytest.fixture(scope="module", params=sorted(HF_VARIANTS))
def converted(request, tmp_path_factory):
    """(variant, HF model, config, params) after `hf_to_orbax` through the CLI entry point."""
    root = tmp_path_factory.mktemp(request.param)
    model = make_hf_model(str(root / "hf"), request.param)
    assert convert_main(["hf_to_orbax", "--hf_dir", str(root / "hf"), "--out", str(root / "ckpt")]) == 0
    config, params = load_pretrained(str(root / "ckpt"))
    return request.param, model, config, params


def random_tokens(vocab: int, shape=(2, 23), seed=0) -> np.ndarray:
    return np.random.RandomState(seed).randint(0, vocab, shape).astype(np.int32)


@pytest.mark.parametrize("impl", ["xla", "dot_product"])
def test_logits_match_transformers(converted, impl):
    variant, model, config, params = converted
    tokens = random_tokens(config.vocab_size)
    ours = Llama(config.replace(attention_impl=impl)).apply({"params": params}, jnp.asarray(tokens))
    assert ours.dtype == jnp.float32 and ours.shape == (2, 23, config.vocab_size)
    np.testing.assert_allclose(np.asarray(ours), hf_logits(model, tokens), atol=1e-4, rtol=0)


def test_rms_norm_matches_transformers():
    import torch
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    from mellama_jax.model.llama import RMSNorm
    from mellama_jax.model.presets import get_preset

    x = np.random.RandomState(0).randn(2, 5, 64).astype(np.float32) * 3
    weight = np.random.RandomState(1).randn(64).astype(np.float32)
    ref = LlamaRMSNorm(64, eps=1e-6)
    ref.weight.data = torch.tensor(weight)
    config = get_preset("tiny", rms_norm_eps=1e-6)
    ours = RMSNorm(config).apply({"params": {"scale": weight}}, jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(ours), ref(torch.tensor(x)).detach().numpy(), atol=1e-5)


@pytest.mark.parametrize("variant", ["gqa", "linear_scaling_tied", "llama3_scaling", "mqa_theta1e6"])
def test_rotary_frequencies_match_transformers(variant):
    from transformers import LlamaConfig as HFConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    from mellama_jax.checkpoint.hf import config_from_hf
    from mellama_jax.model.rope import inverse_frequencies

    hf_config = HFConfig(**HF_VARIANTS[variant], max_position_embeddings=128)
    ours = config_from_hf(hf_config.to_dict())
    reference = LlamaRotaryEmbedding(hf_config).inv_freq.numpy()
    np.testing.assert_allclose(inverse_frequencies(ours), reference, rtol=1e-6)


def test_transformers4_config_layout_converts_the_same(tmp_path):
    """LLaMA-2 downloads carry top-level rope_theta / rope_scaling / torch_dtype (transformers 4.x)."""
    model = make_hf_model(str(tmp_path / "hf"), "llama3_scaling")
    config5, _ = load_pretrained(str(tmp_path / "hf"))
    hf4 = rewrite_config(str(tmp_path / "hf"), rope_parameters=None, dtype=None, torch_dtype="float32",
                         rope_theta=500000.0,
                         rope_scaling={"type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                       "high_freq_factor": 4.0, "original_max_position_embeddings": 16})
    assert "rope_parameters" not in hf4
    config4, params = load_pretrained(str(tmp_path / "hf"))
    assert config4 == config5 and config4.rope_theta == 500000.0
    tokens = random_tokens(config4.vocab_size)
    ours = Llama(config4).apply({"params": params}, jnp.asarray(tokens))
    np.testing.assert_allclose(np.asarray(ours), hf_logits(model, tokens), atol=1e-4)


def test_single_file_and_pytorch_bin_checkpoints(tmp_path):
    import torch

    model = make_hf_model(str(tmp_path / "single"), "gqa", max_shard_size=None)
    assert (tmp_path / "single" / "model.safetensors").exists()
    config, params = load_pretrained(str(tmp_path / "single"))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "config.json").write_text((tmp_path / "single" / "config.json").read_text())
    torch.save(model.state_dict(), bin_dir / "pytorch_model.bin")
    config_bin, params_bin = load_pretrained(str(bin_dir))
    assert config_bin == config
    jax.tree_util.tree_map(np.testing.assert_array_equal, params, params_bin)


def test_packed_documents_match_separate_runs(converted):
    """Two documents packed into one row (segment_ids, restarted positions) == each run alone."""
    _, _, config, params = converted
    model = Llama(config)
    a, b = random_tokens(config.vocab_size, (1, 7), 1), random_tokens(config.vocab_size, (1, 9), 2)
    packed = np.concatenate([a, b, np.zeros((1, 4), np.int32)], axis=1)
    segments = np.array([[1] * 7 + [2] * 9 + [0] * 4], np.int32)
    positions = np.array([list(range(7)) + list(range(9)) + [0] * 4], np.int32)
    out = model.apply({"params": params}, packed, positions=positions, segment_ids=segments)
    alone_a = model.apply({"params": params}, a)
    alone_b = model.apply({"params": params}, b)
    np.testing.assert_allclose(out[:, :7], alone_a, atol=1e-5)
    np.testing.assert_allclose(out[:, 7:16], alone_b, atol=1e-5)


def test_prefix_predictions_do_not_depend_on_sequence_length(converted):
    _, _, config, params = converted
    tokens = random_tokens(config.vocab_size, (1, 20))
    model = Llama(config)
    full = model.apply({"params": params}, tokens)
    prefix = model.apply({"params": params}, tokens[:, :11])
    np.testing.assert_allclose(full[:, :11], prefix, atol=1e-5)
