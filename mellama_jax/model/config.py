"""The decoder architecture description shared by the model, the converter and training.

One LLaMA-style block covers the families we convert (`ModelType`): LLaMA-2/3, Qwen2/2.5 (q/k/v
projection biases) and Mistral (sliding-window attention); the differences are fields here.

Kept as a frozen dataclass (not an ml_collections ConfigDict) so it is hashable, can be a static
argument to `jax.jit`, and round-trips through JSON next to every checkpoint.
"""
from __future__ import annotations

import dataclasses
import json
import math
from enum import StrEnum
from typing import Any, Mapping


class DType(StrEnum):
    FLOAT32 = "float32"
    BFLOAT16 = "bfloat16"
    FLOAT16 = "float16"


class AttentionImpl(StrEnum):
    XLA = "xla"
    DOT_PRODUCT = "dot_product"
    CUDNN = "cudnn"
    SPLASH = "splash"  # Pallas TPU flash attention (interpret mode elsewhere: tests)
    AUTO = "auto"      # splash on TPU, cuDNN on GPU where it applies, else xla; chosen at trace time


class RematPolicy(StrEnum):
    NONE = "none"
    FULL = "full"
    DOTS_SAVEABLE = "dots_saveable"
    DOTS_WITH_NO_BATCH_DIMS_SAVEABLE = "dots_with_no_batch_dims_saveable"
    MINIMAL = "minimal"
    SAVE_ATTENTION = "save_attention"
    SAVE_ATTENTION_OUT = "save_attention_out"
    SAVE_MLP = "save_mlp"


class ModelType(StrEnum):
    """Hugging Face `model_type`s this decoder is (checkpoint/hf.py converts each both ways)."""

    LLAMA = "llama"
    QWEN2 = "qwen2"
    MISTRAL = "mistral"


class RopeType(StrEnum):
    DEFAULT = "default"
    LINEAR = "linear"
    LLAMA3 = "llama3"


def _values(choices: type[StrEnum]) -> tuple[str, ...]:
    return tuple(c.value for c in choices)


_DTYPES = _values(DType)
ATTENTION_IMPLS = _values(AttentionImpl)
REMAT_POLICIES = _values(RematPolicy)
ROPE_TYPES = _values(RopeType)
MODEL_TYPES = _values(ModelType)
SPLASH_BLOCK_FIELDS = ("splash_block_q", "splash_block_kv", "splash_block_kv_compute")
SPLASH_LANES = 128
# The checkpoint_name splash attention gives its forward's own residuals (its output and the
# log-sum-exp of the scores), so a remat policy can keep them instead of running the kernel again
# in the backward pass (model/llama.py REMAT_POLICIES).
SPLASH_RESIDUALS = "splash_residuals"
# ... and splash's inputs in its layout (q scaled, padded, heads first; k; v), what its backward
# kernels read.
SPLASH_INPUTS = "splash_inputs"
# Activations named with checkpoint_name, so a remat policy can keep some and recompute the rest:
# the attention kernel's inputs (q and k after RoPE, v) and output, and the MLP's gate and up
# projections (the widest activations, [tokens, intermediate]).
ATTENTION_QKV, ATTENTION_OUT, MLP_GATE_UP = "attention_qkv", "attention_out", "mlp_gate_up"
# Fields earlier versions wrote into model_config.json that no longer exist; read and ignored
# (scan_layers: layers have always been scanned, the field could only be True).
_RETIRED_FIELDS = ("scan_layers",)


@dataclasses.dataclass(frozen=True)
class Projection:
    """One of the seven linear projections of a decoder layer: where its kernel lives, its Hugging
    Face module name, and the logical axes of its input and output dims (kernel = [in..., out...])."""

    module: tuple[str, str]   # path under "layers": (block, param name)
    hf: str                   # HF module name under model.layers.{i}
    in_axes: tuple[str, ...]
    out_axes: tuple[str, ...]

    @property
    def name(self) -> str:
        return self.module[1]

    @property
    def short(self) -> str:
        return self.name[: -len("_proj")]

    @property
    def path(self) -> tuple[str, str, str]:
        return ("layers",) + self.module

    def in_shape(self, config: "LlamaConfig") -> tuple[int, ...]:
        return tuple(axis_sizes(config)[a] for a in self.in_axes)

    def out_shape(self, config: "LlamaConfig") -> tuple[int, ...]:
        return tuple(axis_sizes(config)[a] for a in self.out_axes)

    @property
    def bias_name(self) -> str:
        """The param name of this projection's bias (shape = its output dims), when it has one."""
        return self.short + "_bias"

    @property
    def bias_path(self) -> tuple[str, str, str]:
        return ("layers", self.module[0], self.bias_name)


# The one list of projections: the model's kernels, LoRA's targets and the HF weight names derive from it.
PROJECTIONS: tuple[Projection, ...] = (
    Projection(("attention", "q_proj"), "self_attn.q_proj", ("embed",), ("heads", "head_dim")),
    Projection(("attention", "k_proj"), "self_attn.k_proj", ("embed",), ("kv_heads", "head_dim")),
    Projection(("attention", "v_proj"), "self_attn.v_proj", ("embed",), ("kv_heads", "head_dim")),
    Projection(("attention", "o_proj"), "self_attn.o_proj", ("heads", "head_dim"), ("embed",)),
    Projection(("mlp", "gate_proj"), "mlp.gate_proj", ("embed",), ("mlp",)),
    Projection(("mlp", "up_proj"), "mlp.up_proj", ("embed",), ("mlp",)),
    Projection(("mlp", "down_proj"), "mlp.down_proj", ("mlp",), ("embed",)),
)
PROJECTION_BY_NAME: dict[str, Projection] = {p.name: p for p in PROJECTIONS}
# Biases: `attention_bias` adds them to q/k/v (Qwen2's layout), `attention_out_bias` to o
# (LLaMA's attention_bias=true sets both). The MLP never has biases (HF mlp_bias is refused).
QKV_BIAS_PROJECTIONS = ("q_proj", "k_proj", "v_proj")


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    """Shapes, numerics and kernel choices of one LLaMA-style decoder (LLaMA, Qwen2, Mistral)."""

    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int = 32
    head_dim: int | None = None  # None: hidden_size // num_attention_heads
    max_position_embeddings: int = 4096
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    # HF style: {"rope_type": "linear", "factor": 4.0} or llama3 with low/high_freq_factor and
    # original_max_position_embeddings. Stored as a sorted tuple of items to stay hashable.
    rope_scaling: Any = None
    tie_word_embeddings: bool = False
    attention_bias: bool = False       # biases on q, k, v (Qwen2; LLaMA's attention_bias)
    attention_out_bias: bool = False   # a bias on o (LLaMA's attention_bias=true; never Qwen2)
    # Each query attends to at most the `sliding_window` latest keys, itself included (Mistral);
    # None = full causal attention.
    sliding_window: int | None = None
    model_type: str = "llama"          # the HF family written on export (config.json, architectures)
    bos_token_id: int = 1
    eos_token_id: int = 2
    pad_token_id: int | None = None
    dtype: str = "float32"  # compute dtype of activations and matmuls
    param_dtype: str = "float32"  # storage dtype of parameters
    attention_impl: str = "xla"
    # Splash attention's tiles (query rows, key columns, key columns per inner step); multiples of
    # 128, clamped to the sequence length. Performance only: numerics do not depend on them.
    splash_block_q: int = 512
    splash_block_kv: int = 512
    splash_block_kv_compute: int = 512
    remat_policy: str = "none"

    def __post_init__(self) -> None:
        if isinstance(self.rope_scaling, Mapping):
            object.__setattr__(self, "rope_scaling", tuple(sorted(self.rope_scaling.items())))
        if self.head_dim is None:
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_attention_heads)
        self.validate()

    # -- checks ---------------------------------------------------------------------------------
    def validate(self) -> None:
        """Raise ValueError naming the field for any inconsistent setting."""
        def bad(field: str, why: str) -> None:
            raise ValueError(f"LlamaConfig.{field}={getattr(self, field)!r}: {why}")

        for field in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                      "num_attention_heads", "num_key_value_heads", "max_position_embeddings"):
            if not isinstance(getattr(self, field), int) or getattr(self, field) <= 0:
                bad(field, "must be a positive integer")
        if self.sliding_window is not None and (not isinstance(self.sliding_window, int)
                                                or isinstance(self.sliding_window, bool)
                                                or self.sliding_window <= 0):
            bad("sliding_window", "must be a positive integer or None")
        if self.model_type not in MODEL_TYPES:
            bad("model_type", f"expected one of {MODEL_TYPES}")
        # Each family's HF modeling code hard-wires some of these; a config it cannot express
        # would train a model that exports wrongly.
        if self.model_type == ModelType.QWEN2 and (not self.attention_bias or self.attention_out_bias):
            bad("model_type", "Qwen2 has biases on q/k/v and none on o: needs attention_bias=True, "
                              "attention_out_bias=False")
        if self.model_type == ModelType.MISTRAL and (self.attention_bias or self.attention_out_bias):
            bad("model_type", "Mistral has no projection biases: needs attention_bias=attention_out_bias=False")
        if self.model_type == ModelType.LLAMA:
            if self.attention_bias != self.attention_out_bias:
                bad("model_type", "LLaMA's attention_bias puts biases on all of q/k/v/o: needs "
                                  "attention_bias == attention_out_bias")
            if self.sliding_window is not None:
                bad("model_type", "LLaMA has no sliding-window attention: needs sliding_window=None "
                                  "(model_type 'mistral' or 'qwen2' has one)")
        for field in ("attention_bias", "attention_out_bias", "tie_word_embeddings"):
            if not isinstance(getattr(self, field), bool):
                bad(field, "must be true or false")
        if self.num_attention_heads % self.num_key_value_heads:
            bad("num_key_value_heads", f"must divide num_attention_heads={self.num_attention_heads}")
        if self.head_dim % 2:
            bad("head_dim", "must be even for rotary embeddings")
        for field in ("dtype", "param_dtype"):
            if getattr(self, field) not in _DTYPES:
                bad(field, f"expected one of {_DTYPES}")
        if self.attention_impl not in ATTENTION_IMPLS:
            bad("attention_impl", f"expected one of {ATTENTION_IMPLS}")
        if self.attention_impl == AttentionImpl.CUDNN and self.dtype == DType.FLOAT32:
            bad("attention_impl", "cuDNN flash attention needs dtype bfloat16 or float16")
        for field in SPLASH_BLOCK_FIELDS:
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0 or value % SPLASH_LANES:
                bad(field, f"must be a positive multiple of {SPLASH_LANES} (TPU vector lanes)")
        if self.splash_block_kv % self.splash_block_kv_compute:
            bad("splash_block_kv", f"must be a multiple of splash_block_kv_compute={self.splash_block_kv_compute}")
        if self.remat_policy not in REMAT_POLICIES:
            bad("remat_policy", f"expected one of {REMAT_POLICIES}")
        scaling = self.rope_scaling_dict
        if scaling is not None:
            rope_type = scaling.get("rope_type", scaling.get("type"))
            if rope_type not in ROPE_TYPES:
                bad("rope_scaling", f"rope_type must be one of {ROPE_TYPES}")
            if rope_type in ("linear", "llama3") and "factor" not in scaling:
                bad("rope_scaling", "needs a 'factor'")
            if rope_type == "llama3":
                for key in ("low_freq_factor", "high_freq_factor", "original_max_position_embeddings"):
                    if key not in scaling:
                        bad("rope_scaling", f"llama3 scaling needs {key!r}")

    # -- derived --------------------------------------------------------------------------------
    @property
    def rope_scaling_dict(self) -> dict | None:
        return None if self.rope_scaling is None else dict(self.rope_scaling)

    @property
    def splash_blocks(self) -> tuple[int, int, int]:
        return self.splash_block_q, self.splash_block_kv, self.splash_block_kv_compute

    @property
    def num_query_groups(self) -> int:
        return self.num_attention_heads // self.num_key_value_heads

    @property
    def bias_projections(self) -> tuple[Projection, ...]:
        """The projections that carry a bias in this model."""
        names = (QKV_BIAS_PROJECTIONS if self.attention_bias else ()) + (("o_proj",) if self.attention_out_bias else ())
        return tuple(PROJECTION_BY_NAME[n] for n in names)

    def num_params(self) -> int:
        """Exact parameter count (embedding, layers incl. biases, final norm, untied head)."""
        h, d = self.hidden_size, self.head_dim
        attention = h * d * (2 * self.num_attention_heads + 2 * self.num_key_value_heads)
        attention += sum(math.prod(p.out_shape(self)) for p in self.bias_projections)
        mlp = 3 * h * self.intermediate_size
        layer = attention + mlp + 2 * h
        head = 0 if self.tie_word_embeddings else h * self.vocab_size
        return self.vocab_size * h + self.num_hidden_layers * layer + h + head

    # -- serialisation --------------------------------------------------------------------------
    def replace(self, **changes: Any) -> "LlamaConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["rope_scaling"] = self.rope_scaling_dict
        return out

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "LlamaConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in values.items() if k not in _RETIRED_FIELDS}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown LlamaConfig field(s) {unknown}; known fields: {sorted(known)}")
        return cls(**values)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


def axis_sizes(config: LlamaConfig) -> dict[str, int]:
    """Logical axis name -> its size in this model (the dims of the projection kernels)."""
    return {"embed": config.hidden_size, "heads": config.num_attention_heads,
            "kv_heads": config.num_key_value_heads, "head_dim": config.head_dim,
            "mlp": config.intermediate_size}


def model_overrides(model_cfg: Any) -> dict:
    """The LlamaConfig fields an experiment's config.model sets (None = not set: the preset's)."""
    return {name: model_cfg[name] for name in LlamaConfig.__dataclass_fields__
            if name in model_cfg and model_cfg[name] is not None}
