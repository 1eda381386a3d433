"""Named model shapes: the exact LLaMA-2 and LLaMA-3.x releases and tiny CPU shapes for tests and demos."""
from __future__ import annotations

from mellama_jax.model.config import LlamaConfig

_LLAMA3 = LlamaConfig(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                      num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=8192,
                      rms_norm_eps=1e-5, rope_theta=500000.0, bos_token_id=128000, eos_token_id=128001)
# LLaMA-3.1 and 3.2 stretch the 8,192-token RoPE of LLaMA-3 with the "llama3" frequency scaling.
_LLAMA31_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                 "original_max_position_embeddings": 8192}
_LLAMA32_ROPE = {**_LLAMA31_ROPE, "factor": 32.0}

PRESETS: dict[str, LlamaConfig] = {
    # Shapes as published with the LLaMA-2 weights (config.json of meta-llama/Llama-2-*-hf).
    "llama2_7b": LlamaConfig(),
    "llama2_13b": LlamaConfig(hidden_size=5120, intermediate_size=13824, num_hidden_layers=40,
                              num_attention_heads=40, num_key_value_heads=40),
    "llama2_70b": LlamaConfig(hidden_size=8192, intermediate_size=28672, num_hidden_layers=80,
                              num_attention_heads=64, num_key_value_heads=8),
    # Shapes as published with the LLaMA-3.x weights (config.json of meta-llama/Meta-Llama-3-8B,
    # Meta-Llama-3-70B, Llama-3.1-8B, Llama-3.1-70B, Llama-3.2-1B, Llama-3.2-3B).
    "llama3_8b": _LLAMA3,
    "llama3_70b": _LLAMA3.replace(hidden_size=8192, intermediate_size=28672, num_hidden_layers=80,
                                  num_attention_heads=64),
    "llama3_1_8b": _LLAMA3.replace(max_position_embeddings=131072, rope_scaling=_LLAMA31_ROPE),
    "llama3_1_70b": _LLAMA3.replace(hidden_size=8192, intermediate_size=28672, num_hidden_layers=80,
                                    num_attention_heads=64, max_position_embeddings=131072,
                                    rope_scaling=_LLAMA31_ROPE),
    "llama3_2_1b": _LLAMA3.replace(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                                   num_attention_heads=32, head_dim=64, tie_word_embeddings=True,
                                   max_position_embeddings=131072, rope_scaling=_LLAMA32_ROPE),
    "llama3_2_3b": _LLAMA3.replace(hidden_size=3072, intermediate_size=8192, num_hidden_layers=28,
                                   num_attention_heads=24, head_dim=128, tie_word_embeddings=True,
                                   max_position_embeddings=131072, rope_scaling=_LLAMA32_ROPE),
    # LLaMA-2-shaped (head_dim 128, MLP ratio 8/3 rounded) mid sizes for single-GPU benchmarks.
    "llama2_1b": LlamaConfig(hidden_size=2048, intermediate_size=5504, num_hidden_layers=16,
                             num_attention_heads=16, num_key_value_heads=16),
    "llama2_3b": LlamaConfig(hidden_size=3072, intermediate_size=8256, num_hidden_layers=24,
                             num_attention_heads=24, num_key_value_heads=24),
    # CPU shapes: GQA, an intermediate size that is not a multiple of 256.
    "tiny": LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=172, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512),
    "small": LlamaConfig(vocab_size=4096, hidden_size=256, intermediate_size=688,
                         num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=4,
                         max_position_embeddings=1024),
}


def get_preset(name: str, **overrides) -> LlamaConfig:
    """Return the named preset, optionally with fields replaced (e.g. dtype="bfloat16")."""
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; known presets: {sorted(PRESETS)}")
    return PRESETS[name].replace(**overrides) if overrides else PRESETS[name]
