"""Instruction tuning (Me-LLaMA stage 2). Variants: tiny, demo, llama2_13b, llama2_70b, llama3_8b,
llama3_70b.

    python launch.py --config configs/sft.py:demo --workdir /tmp/sft_demo --config.model.init_from=CKPT
    # instruction files from the command line (name=[format:]glob[,glob][:weight]; ';' between sources):
    python launch.py --config configs/sft.py:llama2_13b --workdir W --config.model.init_from=/ckpt/mellama_13b \
        --config.data.sources_spec='qa=/data/qa/*.jsonl:3;notes=sharegpt:/data/notes/*.json:1'

Same launch.py, mesh, sharding, Orbax checkpoints, exact resume and metrics as pretraining
(config.task = "sft" only swaps in the instruction pipeline and, with config.lora.enabled, trains
LoRA adapters over a frozen base).
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import ml_collections  # noqa: E402

from configs.base import get_base_config  # noqa: E402

VARIANTS = ("tiny", "demo", "llama2_13b", "llama2_70b", "llama3_8b", "llama3_70b")
SAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                       "mellama_jax", "data", "samples", "instructions")


def sft_data_config() -> ml_collections.ConfigDict:
    """config.data for instruction tuning: the bundled instruction samples by Me-LLaMA task family."""
    from mellama_jax.sft.data import sft_source_config

    d = ml_collections.ConfigDict()
    d.sources = ml_collections.ConfigDict()
    d.mixture = ml_collections.ConfigDict()
    for name, pattern, weight in (("qa", "qa_*.jsonl", 3.0), ("extraction", "extraction_*.jsonl", 1.0),
                                  ("classification", "classification_*.json", 1.0),
                                  ("summarization", "summarization_*.jsonl", 1.0),
                                  ("general", "instructions_sample.jsonl", 0.5)):
        d.sources[name] = sft_source_config([os.path.join(SAMPLES, pattern)], "auto", eval_fraction=0.1)
        d.mixture[name] = weight
    # 'name=[format:]glob[,glob...][:weight];...' replaces sources + mixture (formats: auto, alpaca,
    # messages, sharegpt); set on the command line.
    d.sources_spec = ""
    d.chat_template = "mellama"   # none | mellama | llama2 (mellama_jax.tokenizer.chat_templates)
    d.packing = "pack"            # pack: several examples per row (segment ids); pad: one per row
    d.seq_len = 512
    d.seed = 0
    d.max_bad_fraction = 0.01
    d.tokenizer_path = ""         # "" = the tokenizer of config.model.init_from
    d.synthetic = False
    return d


def lora_config(enabled: bool = True) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.enabled = enabled           # False: full fine-tuning of every parameter
    c.rank = 8
    c.alpha = 16.0
    c.dropout = 0.05
    c.targets = "q,k,v,o,gate,up,down"
    return c


def _common(c):
    c.task = "sft"
    c.data = sft_data_config()
    c.lora = lora_config()
    c.train.epochs = 0.0          # > 0: config.train.steps = epochs over the mixture's rows
    c.optim.weight_decay = 0.0
    c.optim.schedule = "cosine"
    c.optim.warmup_fraction = 0.03
    c.optim.min_lr_ratio = 0.0
    return c


def _tiny(c):
    """Seconds on one CPU: a tiny random base, the bundled samples, LoRA."""
    c.model.preset = "tiny"
    c.data.tokenizer_path = os.path.join(os.path.dirname(SAMPLES), "tokenizer.model")
    c.data.seq_len = 128
    c.train.steps = 6
    c.train.global_batch_size = 8
    c.train.log_every = 2
    c.train.eval_every = 3
    c.train.eval_batches = 1
    c.train.checkpoint_every = 3
    c.optim.learning_rate = 1e-2
    return c


def _demo(c):
    """The bundled instruction samples, Me-LLaMA chat template, full fine-tuning of the small model
    from random initialisation (a fresh checkout has no pretrained base to adapt; with
    --config.model.init_from=CKPT add --config.lora.enabled=true for LoRA)."""
    c.model.preset = "small"
    c.data.tokenizer_path = os.path.join(os.path.dirname(SAMPLES), "tokenizer.model")
    c.data.seq_len = 256
    c.train.epochs = 3.0
    c.train.global_batch_size = 8
    c.train.log_every = 10
    c.train.eval_every = 0
    c.train.eval_batches = 2
    c.train.checkpoint_every = 50
    c.optim.learning_rate = 2e-3
    c.optim.warmup_steps = 5
    c.lora.enabled = False
    return c


# Mesh (data, fsdp, tensor), remat policy and micro-batches per model, chosen with the planner's
# ahead-of-time TPU compiles of 128 x 4,096-token LoRA steps (BENCHMARKS.md "Me-LLaMA recipes,
# compiled").
ME_LLAMA_LAYOUT = {
    # v5p-32: projection outputs and splash's residuals kept, 4 micro-batches of 2 rows per chip:
    # 61.5 GiB (65%), step >= 4.29 s, compute-bound.
    "llama2_13b": ((1, -1, 1), "dots_with_no_batch_dims_saveable", 4),
    # v5p-128: fsdp=64, full remat, 2 rows per chip.
    "llama2_70b": ((1, -1, 1), "full", 1),
}


def _me_llama(c, preset: str):
    """The Me-LLaMA recipe: 3 epochs, lr 1e-5, LoRA, bf16 compute; base = the continually
    pretrained checkpoint (--config.model.init_from). Planned for the pretraining recipe's hardware,
    with the settings in ME_LLAMA_LAYOUT (chosen by the planner):

    llama2_13b: a TPU v5p-32 slice (16 chips, --topology v5p:2x2x4): fsdp=16, remat
    dots_with_no_batch_dims_saveable, splash attention, 4 micro-batches of 32 rows.
    llama2_70b: a TPU v5p-128 slice (64 chips, --topology v5p:4x4x4): fsdp=64, full remat, splash
    attention, 1 micro-batch (2 rows per chip).
    On GPUs attention_impl=auto picks cuDNN's fused attention; the same settings fit (analytic
    estimate) 70B on eight 8xH100 nodes (--gpus 64xH100, 18.7 GiB) and 13B on two (--gpus 16xH100,
    64.7 GiB); 13B on one 8xH100 node: --gpus 8xH100 --config.model.remat_policy=full (39.8 GiB).
    """
    c.model.preset = preset
    c.model.init_from = os.path.join("~", "models", f"MeLLaMA-{preset.split('_')[1]}-pretrain")
    c.model.dtype = "bfloat16"
    c.model.param_dtype = "bfloat16"   # the frozen base in bf16; adapters and optimizer state stay float32
    c.model.attention_impl = "auto"  # splash on TPU, cuDNN on GPU: no [seq, seq] scores in HBM
    mesh, c.model.remat_policy, c.train.micro_batches = ME_LLAMA_LAYOUT[preset]
    c.data.sources_spec = ""  # set your instruction files: --config.data.sources_spec='qa=...:3;...'
    c.data.seq_len = 4096
    c.data.chat_template = "mellama"
    c.train.epochs = 3.0
    c.train.global_batch_size = 128
    c.train.log_every = 10
    c.train.eval_every = 500
    c.train.eval_batches = 8
    c.train.checkpoint_every = 500
    c.optim.learning_rate = 1e-5
    c.optim.warmup_fraction = 0.03
    c.optim.b1, c.optim.b2 = 0.9, 0.999
    c.optim.grad_clip_norm = 1.0
    c.lora.rank, c.lora.alpha, c.lora.dropout = 8, 16.0, 0.05
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = mesh
    return c


# The LLaMA-3 recipes' (data, fsdp, tensor), remat policy and micro-batches, chosen the same way from
# compiles of 128 x 8,192-token LoRA steps with splash attention (BENCHMARKS.md "Me-LLaMA recipes,
# compiled", LLaMA-3 table).
ME_LLAMA3_LAYOUT = {
    # v5p-32: projection outputs and splash's residuals kept, one row per chip per micro-batch:
    # 58.3 GiB (61%), step >= 5.77 s, compute-bound. 4 micro-batches (2 rows per chip): 99.5 GiB
    # (before splash's residuals were kept), does not fit.
    "llama3_8b": ((1, -1, 1), "dots_with_no_batch_dims_saveable", 8),
    # v5p-128 (a torus): fsdp=64, full remat, 2 rows per chip: 43.7 GiB (46%), step >= 15.74 s,
    # compute-bound.
    "llama3_70b": ((1, -1, 1), "full", 1),
}


def _me_llama3(c, preset: str):
    """The Me-LLaMA instruction-tuning recipe on LLaMA-3: 3 epochs, lr 1e-5, LoRA rank 8 on all
    seven projections, bf16 frozen base, at LLaMA-3's 8,192-token context with its own chat format
    (`llama3`: header tokens, <|eot_id|> closing each turn); base = the continually pretrained
    LLaMA-3 checkpoint (--config.model.init_from). Splash attention, with the settings in
    ME_LLAMA3_LAYOUT (chosen by the planner):

    llama3_8b: a TPU v5p-32 slice (16 chips, --topology v5p:2x2x4): fsdp=16, remat
    dots_with_no_batch_dims_saveable, 8 micro-batches of 16 rows (one row per chip).
    llama3_70b: a TPU v5p-128 slice (64 chips, --topology v5p:4x4x4): fsdp=64, full remat, 1
    micro-batch (2 rows per chip).
    On GPUs attention_impl=auto picks cuDNN's fused attention; the same settings fit (analytic
    estimate) 70B on eight 8xH100 nodes (--gpus 64xH100, 46.6 GiB) and 8B on two (--gpus 16xH100,
    50.9 GiB); 8B on one 8xH100 node: --gpus 8xH100 --config.model.remat_policy=full (44.6 GiB).
    """
    c = _me_llama(c, "llama2_70b" if preset == "llama3_70b" else "llama2_13b")
    c.model.preset = preset
    c.model.init_from = os.path.join("~", "models", f"MeLLaMA3-{preset.split('_')[1]}-pretrain")
    mesh, c.model.remat_policy, c.train.micro_batches = ME_LLAMA3_LAYOUT[preset]
    c.data.seq_len = 8192
    c.data.chat_template = "llama3"
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = mesh
    return c


def get_config(variant: str = "tiny"):
    c = _common(get_base_config())
    if variant == "tiny":
        return _tiny(c)
    if variant == "demo":
        return _demo(c)
    if variant in ("llama2_13b", "llama2_70b"):
        return _me_llama(c, variant)
    if variant in ("llama3_8b", "llama3_70b"):
        return _me_llama3(c, variant)
    raise ValueError(f"configs/sft.py: unknown variant {variant!r}; expected one of {VARIANTS}")
