"""LLaMA-3, Qwen2 and Mistral against transformers: tiny random models of each family converted
through the model artifact, logits, greedy KV-cache generation (a sliding window shorter than the
text), the export round trip, and clear refusals of what the decoder does not implement."""
from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mellama_jax import Llama, generate, load_pretrained
from mellama_jax.checkpoint.hf import ConversionError, config_from_hf
from mellama_jax.checkpoint.hf_dir import read_hf_config
from mellama_jax.cli.convert import main as convert_main
from mellama_jax.model.attention import cudnn_attention, make_attention_mask, xla_attention

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

SHAPE = dict(vocab_size=256, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=128)
WINDOW = 5
FAMILIES = {
    # LLaMA-3.2-shaped: GQA, rope_theta 5e5 with llama3 scaling, tied embeddings.
    "llama3": ("LlamaConfig", "LlamaForCausalLM",
               dict(rope_theta=500000.0, tie_word_embeddings=True, bos_token_id=250, eos_token_id=251,
                    rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                                  "high_freq_factor": 4.0, "original_max_position_embeddings": 16})),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", dict(rope_theta=1e6, tie_word_embeddings=True)),
    # A window shorter than every test sequence, so it changes the logits.
    "mistral": ("MistralConfig", "MistralForCausalLM", dict(sliding_window=WINDOW)),
    # Qwen2 with its sliding window on every layer (max_window_layers=0).
    "qwen2_window": ("Qwen2Config", "Qwen2ForCausalLM",
                     dict(use_sliding_window=True, sliding_window=WINDOW, max_window_layers=0)),
}


def make_family(directory: str, family: str, seed: int = 0):
    """A random transformers model of `family` saved to `directory`; biases and norms perturbed so
    a dropped or misplaced one would show."""
    config_cls, model_cls, extra = FAMILIES[family]
    torch.manual_seed(seed)
    model = getattr(transformers, model_cls)(getattr(transformers, config_cls)(**SHAPE, **extra)).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name or name.endswith(".bias"):
                param.add_(0.2 * torch.randn_like(param))
    model.save_pretrained(directory, max_shard_size="40KB")
    return model


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request, tmp_path_factory):
    """(family, transformers model, our config, our params, artifact dir) after hf_to_orbax."""
    root = tmp_path_factory.mktemp(request.param)
    model = make_family(str(root / "hf"), request.param)
    assert convert_main(["hf_to_orbax", "--hf_dir", str(root / "hf"), "--out", str(root / "ckpt")]) == 0
    config, params = load_pretrained(str(root / "ckpt"))
    return request.param, model, config, params, root


def tokens(shape=(2, 19), seed=0) -> np.ndarray:
    return np.random.RandomState(seed).randint(0, SHAPE["vocab_size"], shape).astype(np.int32)


def hf_logits(model, ids: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    with torch.no_grad():
        kwargs = {} if mask is None else {"attention_mask": torch.tensor(mask)}
        return model(torch.tensor(ids), **kwargs).logits.float().numpy()


def test_config_reads_the_family(family):
    name, model, config, params, _ = family
    assert config.model_type == model.config.model_type
    layer = params["layers"]["attention"]
    if name.startswith("qwen2"):
        assert config.attention_bias and not config.attention_out_bias
        assert layer["q_bias"].shape == (2, 4, 16) and layer["k_bias"].shape == (2, 2, 16) and "o_bias" not in layer
    else:
        assert not config.attention_bias and "q_bias" not in layer
    assert config.sliding_window == (WINDOW if name in ("mistral", "qwen2_window") else None)
    tied = name in ("llama3", "qwen2")
    assert config.tie_word_embeddings == tied and ("lm_head" in params) == (not tied)
    n_hf = sum(p.numel() for p in model.parameters())
    assert config.num_params() == n_hf


@pytest.mark.parametrize("impl", ["xla", "dot_product"])
def test_logits_match_transformers(family, impl):
    name, model, config, params, _ = family
    ids = tokens()
    ours = Llama(config.replace(attention_impl=impl)).apply({"params": params}, jnp.asarray(ids))
    np.testing.assert_allclose(np.asarray(ours), hf_logits(model, ids), atol=1e-4, rtol=0)
    if config.sliding_window is not None:  # the window matters at this length
        full = Llama(config.replace(sliding_window=None)).apply({"params": params}, jnp.asarray(ids))
        assert np.abs(np.asarray(full) - hf_logits(model, ids)).max() > 1e-2


def test_greedy_kv_cache_generation_matches_transformers(family):
    """Prefill + decode through our KV cache equals transformers' generate, left padding included;
    with a window, prompt + generation (6 + 12 tokens) is far longer than the window (5)."""
    name, model, config, params, _ = family
    ids = tokens((2, 6), seed=1)
    mask = np.ones_like(ids)
    ids[1, :2], mask[1, :2] = 0, 0  # row 1: a 4-token prompt, left-padded
    new = 12
    with torch.no_grad():
        ref = model.generate(torch.tensor(ids), attention_mask=torch.tensor(mask), max_new_tokens=new,
                             min_new_tokens=new, do_sample=False, pad_token_id=0, eos_token_id=None).numpy()
    ours = np.asarray(generate(config, params, ids, max_new_tokens=new, temperature=0.0, eos_id=None,
                               rng=jax.random.key(0), prompt_mask=mask))
    np.testing.assert_array_equal(ours[:, 6:], ref[:, 6:])


def test_export_round_trip_loads_in_transformers(family):
    name, model, config, params, root = family
    out = root / "export"
    assert convert_main(["orbax_to_hf", "--ckpt", str(root / "ckpt"), "--out", str(out)]) == 0
    saved = json.loads((out / "config.json").read_text())
    expected_class = FAMILIES[name][1]
    assert saved["model_type"] == model.config.model_type and saved["architectures"] == [expected_class]
    again = transformers.AutoModelForCausalLM.from_pretrained(str(out)).eval()
    assert type(again).__name__ == expected_class
    assert getattr(again.config, "sliding_window", None) == getattr(model.config, "sliding_window", None)
    ids = tokens(seed=2)
    np.testing.assert_allclose(hf_logits(again, ids), hf_logits(model, ids), atol=1e-5, rtol=0)
    # and back: the exported directory is an artifact with the same config
    config2, params2 = load_pretrained(str(out))
    assert config2.replace(param_dtype=config.param_dtype) == config
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(params2)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_window_mask_is_transformers_mask():
    """kv_idx > q_idx - W and causal, as transformers' sliding_window_causal_mask_function."""
    from transformers.masking_utils import sliding_window_causal_mask_function

    seg = jnp.ones((1, 9), jnp.int32)
    ours = np.asarray(make_attention_mask(seg, seg, sliding_window=3))[0, 0]
    fn = sliding_window_causal_mask_function(3)
    t = torch.tensor
    ref = np.array([[bool(fn(t(0), t(0), t(q), t(k))) for k in range(9)] for q in range(9)])
    np.testing.assert_array_equal(ours, ref)
    assert ours.sum(axis=1).max() == 3


def test_window_on_every_attention_path():
    """The cuDNN path's local window (run here with XLA) and packed segments agree with the masked reference."""
    rng = np.random.RandomState(0)
    q, k, v = (jnp.asarray(rng.randn(2, 11, 4 if i == 0 else 2, 8).astype(np.float32)) for i in range(3))
    seg = jnp.ones((2, 11), jnp.int32)
    ref = xla_attention(q, k, v, make_attention_mask(seg, seg, sliding_window=4))
    np.testing.assert_allclose(np.asarray(cudnn_attention(q, k, v, None, 4, implementation="xla")),
                               np.asarray(ref), atol=1e-5)
    # Packed: the window restarts with each document (slots of one segment are consecutive positions).
    packed = jnp.asarray([[1] * 6 + [2] * 5] * 2, jnp.int32)
    mask = np.asarray(make_attention_mask(packed, packed, sliding_window=4))[0, 0]
    assert not mask[6, 5] and mask[6, 6] and not mask[10, 6] and mask[10, 7]


def _hf_config(family: str, **changes) -> dict:
    config_cls, _, extra = FAMILIES[family]
    body = getattr(transformers, config_cls)(**SHAPE, **extra).to_dict()
    body.update(changes)
    return body


@pytest.mark.parametrize("family,changes,field", [
    ("mistral", dict(model_type="mixtral", num_local_experts=8, num_experts_per_tok=2), "num_local_experts"),
    ("qwen2", dict(model_type="qwen2_moe", num_experts=4), "num_experts"),
    ("llama3", dict(mlp_bias=True), "mlp_bias"),
    ("llama3", dict(model_type="gemma2"), "model_type"),
    ("llama3", dict(hidden_act="gelu_pytorch_tanh"), "hidden_act"),
    ("llama3", dict(sliding_window=16), "sliding_window"),
    ("qwen2", dict(use_sliding_window=True, sliding_window=8, max_window_layers=1, layer_types=None),
     "max_window_layers"),
    ("qwen2", dict(use_sliding_window=True, sliding_window=8, layer_types=["full_attention", "sliding_attention"]),
     "layer_types"),
])
def test_unimplemented_configs_are_refused_naming_file_and_field(tmp_path, family, changes, field):
    body = {k: v for k, v in _hf_config(family, **changes).items() if v is not None or k in changes}
    (tmp_path / "config.json").write_text(json.dumps(body))
    with pytest.raises(ConversionError) as err:
        read_hf_config(str(tmp_path))
    assert str(tmp_path / "config.json") in str(err.value) and f"{field}=" in str(err.value)


def test_qwen2_window_off_and_on_all_layers():
    """use_sliding_window=false ignores sliding_window; on from layer 0 (or every layer_types entry) it applies."""
    assert config_from_hf(_hf_config("qwen2", sliding_window=4096)).sliding_window is None
    assert config_from_hf(_hf_config("qwen2_window")).sliding_window == WINDOW
    # max_window_layers >= layers: no layer is windowed
    body = _hf_config("qwen2_window", max_window_layers=2, layer_types=None)
    assert config_from_hf(body).sliding_window is None


def test_llama_attention_bias_converts_all_four_biases(tmp_path):
    """LLaMA's attention_bias=true puts biases on q, k, v and o; they convert and match."""
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**SHAPE, attention_bias=True)).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(".bias"):
                param.add_(0.3 * torch.randn_like(param))
    model.save_pretrained(str(tmp_path / "hf"))
    config, params = load_pretrained(str(tmp_path / "hf"))
    assert config.attention_bias and config.attention_out_bias and "o_bias" in params["layers"]["attention"]
    ids = tokens()
    np.testing.assert_allclose(np.asarray(Llama(config).apply({"params": params}, jnp.asarray(ids))),
                               hf_logits(model, ids), atol=1e-4, rtol=0)


def test_llama3_presets_are_the_published_shapes():
    from mellama_jax.model.presets import get_preset

    eight, seventy = get_preset("llama3_8b"), get_preset("llama3_70b")
    one, three = get_preset("llama3_2_1b"), get_preset("llama3_2_3b")
    assert round(eight.num_params() / 1e6) == 8030 and round(seventy.num_params() / 1e6) == 70554
    assert round(one.num_params() / 1e6) == 1236 and round(three.num_params() / 1e6) == 3213
    for c in (eight, seventy, one, three):
        assert (c.vocab_size, c.num_key_value_heads, c.rope_theta, c.bos_token_id, c.eos_token_id) == (
            128256, 8, 500000.0, 128000, 128001)
    assert eight.max_position_embeddings == 8192 and eight.rope_scaling is None
    assert one.tie_word_embeddings and one.head_dim == 64 and one.rope_scaling_dict["factor"] == 32.0
    assert get_preset("llama3_1_8b").rope_scaling_dict == {
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192}


def test_lora_on_qwen2_matches_peft_with_the_same_names(tmp_path):
    """LoRA over a biased Qwen2 base: our adapters, exported under PEFT's names, give PEFT's logits;
    merging folds them into the kernels and leaves the biases as they were."""
    peft = pytest.importorskip("peft")
    from mellama_jax.checkpoint import lora_io
    from mellama_jax.model import lora

    model = make_family(str(tmp_path / "hf"), "qwen2")
    config, params = load_pretrained(str(tmp_path / "hf"))
    spec = lora.LoraSpec(rank=4, alpha=8.0)
    adapters = jax.tree_util.tree_map_with_path(
        lambda p, x: 0.05 * jax.random.normal(jax.random.key(len(jax.tree_util.keystr(p))), x.shape)
        if p[-1].key == "b" else x, lora.init_adapters(config, spec, jax.random.key(1)))
    ids = tokens()
    ours = Llama(config).apply({"params": params, "lora": lora.scaled(adapters, spec)}, jnp.asarray(ids))
    tensors = lora_io.peft_tensors(adapters, config, spec)
    assert all(".bias" not in name for name in tensors)
    pm = peft.get_peft_model(model, peft.LoraConfig(r=4, lora_alpha=8.0, lora_dropout=0.0,
                                                    target_modules=[p.name for p in lora.TARGETS.values()])).eval()
    missing = pm.load_state_dict({k.replace(".weight", ".default.weight"): torch.tensor(v)
                                  for k, v in tensors.items()}, strict=False)
    assert not missing.unexpected_keys
    with torch.no_grad():
        ref = pm(torch.tensor(ids)).logits.numpy()
    np.testing.assert_allclose(np.asarray(ours), ref, atol=1e-4, rtol=0)
    merged = lora.merge(params, adapters, spec)
    np.testing.assert_array_equal(np.asarray(merged["layers"]["attention"]["q_bias"]),
                                  np.asarray(params["layers"]["attention"]["q_bias"]))
    np.testing.assert_allclose(np.asarray(Llama(config).apply({"params": merged}, jnp.asarray(ids))), ref, atol=1e-4)


def test_llama3_sft_recipes():
    """The LLaMA-3 instruction-tuning recipes: LLaMA-3's context and chat format, LoRA on a bf16 base."""
    import sys

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from configs import pretrain, sft

    for variant, tensor in (("llama3_8b", 1), ("llama3_70b", 1)):  # fsdp only (tests/test_plan.py: the layouts)
        c = sft.get_config(variant)
        assert (c.model.preset, c.data.seq_len, c.data.chat_template, c.lora.enabled) == (variant, 8192, "llama3", True)
        assert (c.model.param_dtype, c.train.epochs, c.optim.learning_rate, c.mesh.tensor) == ("bfloat16", 3.0, 1e-5,
                                                                                               tensor)
        p = pretrain.get_config(variant)
        assert (p.model.preset, p.data.seq_len, p.train.global_batch_size, p.optim.learning_rate) == (
            variant, 8192, 128, 8e-6)
