"""Hugging Face LLaMA / Qwen2 / Mistral <-> mellama-jax: config translation and per-tensor weight mapping.

HF stores one [out, in] matrix per layer; we store [in, ...out] kernels stacked over a leading
layer axis (for `nn.scan`). HF q/k weights are already in the rotate-half layout our RoPE uses, so
no permutation happens here; Meta's original consolidated checkpoints need `meta_to_hf_qk` first.
"""
from __future__ import annotations

import math
import re
from typing import Any, Callable

import numpy as np

from mellama_jax.model.config import PROJECTIONS, LlamaConfig


class ConversionError(ValueError):
    """Bad Hugging Face input; the message names the file and tensor."""


# ---------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------
# model_type -> the HF class that loads it (config.json "architectures").
ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "mistral": "MistralForCausalLM"}
# Fields of mixture-of-experts configs (Mixtral, Qwen2-MoE, DeepSeek): this decoder has one dense MLP.
_MOE_FIELDS = ("num_local_experts", "num_experts", "n_routed_experts", "num_experts_per_tok", "moe_intermediate_size")


def _refuse(source: str, field: str, value: Any, why: str) -> None:
    raise ConversionError(f"{source}: {field}={value!r}: {why}")


def _qwen2_sliding_window(hf: dict, source: str) -> int | None:
    """Qwen2's window: none unless use_sliding_window, then only on layers >= max_window_layers
    (or as `layer_types` lists them). One window for all layers or none is what we implement."""
    if not hf.get("use_sliding_window", False) or hf.get("sliding_window") is None:
        return None
    layers = int(hf["num_hidden_layers"])
    types = hf.get("layer_types") or ["sliding_attention" if i >= int(hf.get("max_window_layers", 28)) else
                                      "full_attention" for i in range(layers)]
    kinds = set(types)
    if kinds - {"sliding_attention", "full_attention"}:
        _refuse(source, "layer_types", sorted(kinds), "only 'sliding_attention' and 'full_attention' exist")
    if kinds == {"full_attention"}:
        return None
    if kinds == {"sliding_attention"}:
        return int(hf["sliding_window"])
    field = "layer_types" if hf.get("layer_types") else "max_window_layers"
    _refuse(source, field, hf.get(field), "a sliding window on only some layers (use_sliding_window=true) is not "
            "implemented: this decoder applies one window to every layer or none")
    return None


def config_from_hf(hf: dict, source: str = "config.json") -> LlamaConfig:
    """LlamaConfig from an HF config dict (model_type llama, qwen2 or mistral), reading both
    transformers 4.x and 5.x layouts. Anything this decoder does not implement is refused, naming the
    file and the field."""
    for field in _MOE_FIELDS:
        if hf.get(field):
            _refuse(source, field, hf[field], "mixture-of-experts layers are not implemented (one dense MLP per layer)")
    model_type = hf.get("model_type", "llama")
    if model_type not in ARCHITECTURES:
        _refuse(source, "model_type", model_type, f"not implemented; supported: {sorted(ARCHITECTURES)}")
    if hf.get("mlp_bias"):
        _refuse(source, "mlp_bias", hf["mlp_bias"], "MLP biases are not implemented")
    if hf.get("hidden_act", "silu") != "silu":
        _refuse(source, "hidden_act", hf["hidden_act"], "only 'silu' (SwiGLU) is implemented")
    if model_type == "mistral" and hf.get("attention_bias"):
        # MistralAttention has no biases whatever the flag says: a checkpoint claiming them is not one we match.
        _refuse(source, "attention_bias", hf["attention_bias"], "Mistral's projections have no biases")
    if model_type == "llama":
        bias = bool(hf.get("attention_bias", False))
        qkv_bias, out_bias, window = bias, bias, None
        if hf.get("sliding_window") is not None:
            _refuse(source, "sliding_window", hf["sliding_window"], "LLaMA has no sliding window "
                    "(transformers' LlamaModel ignores it); use model_type 'mistral'")
    elif model_type == "qwen2":
        qkv_bias, out_bias, window = True, False, _qwen2_sliding_window(hf, source)
    else:  # mistral
        if len(set(hf.get("layer_types") or ["sliding_attention"])) > 1:
            _refuse(source, "layer_types", hf["layer_types"], "alternating attention kinds are not implemented")
        qkv_bias, out_bias, window = False, False, hf.get("sliding_window")

    # transformers 5 folds rope_theta and rope_scaling into `rope_parameters`.
    rope_parameters = dict(hf.get("rope_parameters") or {})
    rope_theta = hf.get("rope_theta", rope_parameters.pop("rope_theta", 10000.0))
    scaling = hf.get("rope_scaling")
    if scaling is None and rope_parameters.get("rope_type", "default") != "default":
        scaling = rope_parameters
    if scaling is not None:
        scaling = {k: v for k, v in dict(scaling).items() if k != "rope_theta"}
        if "type" in scaling and "rope_type" not in scaling:
            scaling["rope_type"] = scaling.pop("type")
        scaling.pop("type", None)
        if scaling.get("rope_type", "default") == "default":
            scaling = None
    dtype = hf.get("dtype", hf.get("torch_dtype")) or "float32"

    def required(key: str) -> Any:
        if key not in hf:
            raise ConversionError(f"{source}: missing required field {key!r}")
        return hf[key]

    num_heads = required("num_attention_heads")
    eos = hf.get("eos_token_id", 2)
    try:
        return LlamaConfig(
            vocab_size=required("vocab_size"), hidden_size=required("hidden_size"),
            intermediate_size=required("intermediate_size"), num_hidden_layers=required("num_hidden_layers"),
            num_attention_heads=num_heads, num_key_value_heads=hf.get("num_key_value_heads") or num_heads,
            head_dim=hf.get("head_dim") or required("hidden_size") // num_heads,
            max_position_embeddings=hf.get("max_position_embeddings", 4096),
            rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)), rope_theta=float(rope_theta), rope_scaling=scaling,
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
            attention_bias=qkv_bias, attention_out_bias=out_bias,
            sliding_window=None if window is None else int(window), model_type=model_type,
            bos_token_id=hf.get("bos_token_id", 1), eos_token_id=eos[0] if isinstance(eos, list) else eos,
            pad_token_id=hf.get("pad_token_id"), param_dtype=str(dtype).replace("torch.", ""),
        )
    except ValueError as err:
        raise ConversionError(f"{source}: {err}") from err


def config_to_hf(config: LlamaConfig, dtype: str) -> dict:
    """An HF config.json dict for the model's family, in the transformers 4.x layout (top-level
    rope_theta / rope_scaling / torch_dtype) that LLaMA-2 checkpoints use; transformers 5 reads it."""
    out = {
        "architectures": [ARCHITECTURES[config.model_type]], "model_type": config.model_type, "hidden_act": "silu",
        "vocab_size": config.vocab_size, "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size, "num_hidden_layers": config.num_hidden_layers,
        "num_attention_heads": config.num_attention_heads, "num_key_value_heads": config.num_key_value_heads,
        "head_dim": config.head_dim, "max_position_embeddings": config.max_position_embeddings,
        "rms_norm_eps": config.rms_norm_eps, "rope_theta": config.rope_theta,
        "rope_scaling": config.rope_scaling_dict, "tie_word_embeddings": config.tie_word_embeddings,
        "attention_dropout": 0.0, "initializer_range": 0.02, "use_cache": True, "bos_token_id": config.bos_token_id,
        "eos_token_id": config.eos_token_id, "pad_token_id": config.pad_token_id, "torch_dtype": dtype,
    }
    if config.model_type == "llama":
        out.update(attention_bias=config.attention_bias, mlp_bias=False, pretraining_tp=1)
    elif config.model_type == "qwen2":
        window = config.sliding_window
        out.update(use_sliding_window=window is not None, sliding_window=window,
                   max_window_layers=0 if window is not None else config.num_hidden_layers,
                   layer_types=[("sliding_attention" if window is not None else "full_attention")] *
                   config.num_hidden_layers)
    else:  # mistral
        out.update(sliding_window=config.sliding_window)
    return out


def generation_config_to_hf(config: LlamaConfig) -> dict:
    out = {"bos_token_id": config.bos_token_id, "eos_token_id": config.eos_token_id, "do_sample": False}
    if config.pad_token_id is not None:
        out["pad_token_id"] = config.pad_token_id
    return out


# ---------------------------------------------------------------------------------------------
# Weights: one rule per parameter, mapping HF [out, in] matrices to our kernels and back.
# ---------------------------------------------------------------------------------------------
def _rules(config: LlamaConfig) -> dict[tuple[str, ...], tuple[str, Callable, Callable]]:
    """param path -> (HF name template with {i} for the layer, to_ours(hf_array), to_hf(our_array))."""
    same = (lambda w: w), (lambda w: w)
    transpose = (lambda w: w.T), (lambda w: w.T)
    rules = {
        ("embed_tokens", "embedding"): ("model.embed_tokens.weight", *same),
        ("final_norm", "scale"): ("model.norm.weight", *same),
        ("layers", "input_norm", "scale"): ("model.layers.{i}.input_layernorm.weight", *same),
        ("layers", "post_attention_norm", "scale"): ("model.layers.{i}.post_attention_layernorm.weight", *same),
    }
    for p in PROJECTIONS:  # HF [out_features, in_features] <-> our kernel [in..., out...]
        rules[p.path] = (f"model.layers.{{i}}.{p.hf}.weight", *_projection_layout(p.in_shape(config), p.out_shape(config)))
    for p in config.bias_projections:  # HF [out_features] <-> our bias [out...]
        outs = p.out_shape(config)
        rules[p.bias_path] = (f"model.layers.{{i}}.{p.hf}.bias", lambda b, outs=outs: b.reshape(outs),
                              lambda b: b.reshape(-1))
    if not config.tie_word_embeddings:
        rules[("lm_head", "kernel")] = ("lm_head.weight", *transpose)
    return rules


def _projection_layout(ins: tuple[int, ...], outs: tuple[int, ...]) -> tuple[Callable, Callable]:
    n_in, n_out = math.prod(ins), math.prod(outs)
    return (lambda w: w.T.reshape(ins + outs)), (lambda k: k.reshape(n_in, n_out).T)


# Tensors some checkpoints carry that hold no learned state.
_IGNORED = re.compile(r"^model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq$")


def hf_tensor_names(config: LlamaConfig) -> list[str]:
    """Every HF tensor name a checkpoint of this config must contain."""
    return [name for path in param_paths(config) for name in export_names(config, path)]


def check_tensor_names(config: LlamaConfig, available: dict[str, str]) -> None:
    """Fail naming the file of any unknown tensor, and any tensor the config needs but is absent."""
    expected = set(hf_tensor_names(config))
    if config.tie_word_embeddings:
        expected.discard("lm_head.weight")
    for name, path in sorted(available.items()):
        if name not in expected and not _IGNORED.match(name):
            if name == "lm_head.weight" and config.tie_word_embeddings:
                continue
            raise ConversionError(f"{path}: unknown tensor {name!r} for this {config.model_type} model "
                                  f"(biases on {[p.hf for p in config.bias_projections] or 'no projection'})")
    missing = sorted(expected - set(available))
    if missing:
        raise ConversionError(f"checkpoint is missing tensor(s) {missing[:5]}{' ...' if len(missing) > 5 else ''}")


def convert_param(config: LlamaConfig, path: tuple[str, ...], read: Callable[[str], np.ndarray],
                  out: np.ndarray | None = None, dtype=None,
                  where: Callable[[str], str] = lambda name: "checkpoint") -> np.ndarray:
    """Build one of our (stacked) parameters from HF tensors fetched by `read(name)`.

    With `out` given, layers are written into it one at a time (e.g. a memory-mapped staging array),
    so at most one HF tensor is materialised besides the destination.
    """
    template, to_ours, to_hf = _rules(config)[path]
    expected = tuple(_expected_shape(config, path))
    per_tensor = expected if "{i}" not in template else expected[1:]
    # The HF shape this parameter implies (to_hf only makes views of an untouched np.empty).
    hf_shape = tuple(to_hf(np.empty(per_tensor, np.int8)).shape)
    if "{i}" not in template:
        value = _read_converted(template, read, to_ours, where, hf_shape)
        _check_shape(where(template), template, value.shape, expected)
        if out is None:
            return np.array(value, dtype=dtype or value.dtype)
        out[...] = value
        return out
    for i in range(config.num_hidden_layers):
        name = template.format(i=i)
        value = _read_converted(name, read, to_ours, where, hf_shape)
        _check_shape(where(name), name, value.shape, expected[1:])
        if out is None:
            out = np.empty(expected, dtype=dtype or value.dtype)
        out[i] = value
    return out


def export_names(config: LlamaConfig, path: tuple[str, ...]) -> list[str]:
    """The HF tensor names one of our parameters becomes (one per layer for stacked parameters)."""
    template = _rules(config)[path][0]
    if "{i}" not in template:
        return [template]
    return [template.format(i=i) for i in range(config.num_hidden_layers)]


def export_param(config: LlamaConfig, path: tuple[str, ...], value: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """The HF tensors [(name, array)] for one of our parameters."""
    template, _, to_hf = _rules(config)[path]
    if "{i}" not in template:
        return [(template, np.ascontiguousarray(to_hf(value)))]
    return [(name, np.ascontiguousarray(to_hf(value[i]))) for i, name in enumerate(export_names(config, path))]


def param_paths(config: LlamaConfig) -> list[tuple[str, ...]]:
    return list(_rules(config))


def _expected_shape(config: LlamaConfig, path: tuple[str, ...]) -> tuple[int, ...]:
    from mellama_jax.model.llama import param_shapes

    node: Any = param_shapes(config)
    for key in path:
        node = node[key]
    return tuple(node.shape)


_WEIGHT_DTYPES = ("float16", "bfloat16", "float32", "float64")


def _read_converted(name: str, read: Callable[[str], np.ndarray], to_ours: Callable, where: Callable[[str], str],
                    hf_shape: tuple) -> np.ndarray:
    """read + layout change, with errors that name the file and the tensor (without them a wrong
    dtype label or a wrong shape would convert silently or fail with a bare "cannot reshape")."""
    raw = read(name)
    if np.dtype(raw.dtype).name not in _WEIGHT_DTYPES:
        raise ConversionError(f"{where(name)}: tensor {name!r} has dtype {np.dtype(raw.dtype).name}; a weight must be "
                              f"one of {_WEIGHT_DTYPES}")
    if tuple(raw.shape) != hf_shape:
        raise ConversionError(f"{where(name)}: tensor {name!r} has shape {tuple(raw.shape)}, but config.json "
                              f"implies {hf_shape}")
    return to_ours(raw)


def _check_shape(file: str, name: str, got: tuple, expected: tuple) -> None:
    if tuple(got) != tuple(expected):
        raise ConversionError(f"{file}: tensor {name!r} has shape {tuple(got)} after conversion, but "
                              f"config.json implies {tuple(expected)}")


def meta_to_hf_qk(weight: np.ndarray, num_heads: int) -> np.ndarray:
    """Permute a Meta-layout (interleaved RoPE pairs) q/k weight [n*d, h] to HF's rotate-half layout."""
    out_dim, in_dim = weight.shape
    d = out_dim // num_heads
    return weight.reshape(num_heads, d // 2, 2, in_dim).transpose(0, 2, 1, 3).reshape(out_dim, in_dim)


def hf_to_meta_qk(weight: np.ndarray, num_heads: int) -> np.ndarray:
    """Inverse of `meta_to_hf_qk`."""
    out_dim, in_dim = weight.shape
    d = out_dim // num_heads
    return weight.reshape(num_heads, 2, d // 2, in_dim).transpose(0, 2, 1, 3).reshape(out_dim, in_dim)
