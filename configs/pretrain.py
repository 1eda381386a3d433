"""Continual pretraining (Me-LLaMA stage 1). Variants: tiny, demo, llama2_7b, llama2_13b, llama2_70b,
llama3_8b, llama3_70b.

    python launch.py --config configs/pretrain.py:demo --workdir /tmp/mellama_demo
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs.base import data_config, get_base_config  # noqa: E402

VARIANTS = ("tiny", "demo", "llama2_7b", "llama2_13b", "llama2_70b", "llama3_8b", "llama3_70b")


def _tiny(c):
    """Seconds on one CPU: tiny model, synthetic tokens."""
    c.model.preset = "tiny"
    c.data.synthetic = True
    c.data.seq_len = 64
    c.train.steps = 20
    c.train.global_batch_size = 8
    c.train.log_every = 5
    c.train.eval_every = 10
    c.train.checkpoint_every = 10
    c.optim.learning_rate = 3e-3
    c.optim.weight_decay = 0.0
    return c


def _demo(c):
    """A real, short pretraining run on the bundled sample corpora with the bundled tokenizer."""
    c.data = data_config(demo=True)
    c.model.preset = "small"  # 4 layers x 256 wide, GQA; vocab_size taken from the tokenizer
    c.data.seq_len = 128
    c.train.steps = 150
    c.train.global_batch_size = 16
    c.train.log_every = 10
    c.train.eval_every = 50
    c.train.eval_batches = 2
    c.train.checkpoint_every = 50
    c.optim.learning_rate = 2e-3
    c.optim.weight_decay = 0.01
    c.optim.warmup_steps = 10
    return c


# Mesh (data, fsdp, tensor), remat policy and micro-batches per model, chosen with the planner's
# ahead-of-time TPU compiles of 256 x 4,096-token steps (BENCHMARKS.md "Me-LLaMA recipes,
# compiled"): the best roofline step-time bound among the settings that fit with a margin.
ME_LLAMA_LAYOUT = {
    # v5p-32: the 13B layout (a smaller model on the same slice; not compiled on its own).
    "llama2_7b": ((1, -1, 1), "dots_with_no_batch_dims_saveable", 8),
    # v5p-32: keeping the projections' outputs and splash's (~0.5 GB per row per layer, so 8
    # micro-batches of 2 rows per chip) skips the recompute: 62.0 GiB per chip (65%), step >=
    # 12.22 s compute-bound, MFU <= 101.8% (96.0% counting causal attention). Full remat
    # (MaxText's layout): 2 micro-batches 49.7 GiB, 1 micro-batch 88.4 GiB, both step >= 15.31 s;
    # save_attention_out with 2: 58.8 GiB, 15.04 s, HBM bytes within 3% of MaxText's (the
    # shipped layout moves 1.28x); save_attention with 4: 62.1 GiB, 14.14 s (BENCHMARKS.md
    # "MaxText side by side").
    "llama2_13b": ((1, -1, 1), "dots_with_no_batch_dims_saveable", 8),
    # v5p-128 (a torus): fsdp=64, 59.6 GiB (63%), step >= 19.45 s, MFU <= 81.6%, HBM 1.37 s. The
    # former fsdp=8 x tensor=8 mesh needs 8 micro-batches to fit and is then HBM-bound (31.2 s,
    # MFU <= 50.9%).
    "llama2_70b": ((1, -1, 1), "full", 1),
}


def _me_llama(c, preset: str):
    """The Me-LLaMA recipe: AdamW (0.9, 0.95), lr 8e-6, wd 1e-5, cosine with 5% warmup, bf16, on the
    hardware each model is planned for (settings in ME_LLAMA_LAYOUT, chosen by the planner):

    llama2_13b: a TPU v5p-32 slice (16 chips, --topology v5p:2x2x4): fsdp=16, remat
    dots_with_no_batch_dims_saveable (projection and attention outputs kept, no matmul recomputed),
    splash attention, 8 micro-batches of 32 rows. On GPUs attention_impl=auto picks cuDNN's fused
    attention instead; the same settings fit four 8xH100 nodes (32 GPUs, --gpus 32xH100: 51.6 GiB
    estimated, but bound by InfiniBand); on one 8xH100 node the saved projections do not fit 80 GB:
    plan and run it with --gpus 8xH100 --config.model.remat_policy=full (66.7 GiB estimated).
    llama2_70b: a TPU v5p-128 slice (64 chips, --topology v5p:4x4x4): fsdp=64, full remat, splash
    attention, 1 micro-batch (4 rows per chip). On GPUs: eight 8xH100 nodes (64 GPUs, --gpus 64xH100)
    with the same settings and cuDNN attention.
    llama2_7b: the 13B layout, for the same slice (not compiled on its own).
    README "Planning a Me-LLaMA run" shows the planner's output on each TPU slice, with no override.
    """
    c.model.preset = preset
    # Start from Meta's LLaMA-2 weights in Hugging Face layout (converted on the fly); point this
    # at your copy: --config.model.init_from=/models/Llama-2-7b-hf
    c.model.init_from = os.path.join("~", "models", f"Llama-2-{preset.split('_')[1]}-hf")
    c.model.dtype = "bfloat16"  # compute; params stay float32 (master weights)
    c.model.param_dtype = "float32"
    c.model.attention_impl = "auto"  # splash on TPU, cuDNN on GPU: no [seq, seq] scores in HBM
    mesh, c.model.remat_policy, c.train.micro_batches = ME_LLAMA_LAYOUT[preset]
    c.data.seq_len = 4096
    c.train.global_batch_size = 256  # 256 x 4096 = 1M tokens per step
    c.train.steps = 123_000  # ~129B tokens, the Me-LLaMA continual-pretraining budget
    c.train.log_every = 10
    c.train.eval_every = 1000
    c.train.eval_batches = 8
    c.train.checkpoint_every = 1000
    c.train.keep_checkpoints = 3
    c.optim.learning_rate = 8e-6
    c.optim.b1, c.optim.b2 = 0.9, 0.95
    c.optim.weight_decay = 1e-5
    c.optim.schedule = "cosine"
    c.optim.warmup_fraction = 0.05
    c.optim.min_lr_ratio = 0.1
    c.optim.grad_clip_norm = 1.0
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = mesh
    return c


# The LLaMA-3 recipes' (data, fsdp, tensor), remat policy and micro-batches, chosen the same way from
# compiles of 128 x 8,192-token steps with splash attention (BENCHMARKS.md "Me-LLaMA recipes,
# compiled", LLaMA-3 table).
ME_LLAMA3_LAYOUT = {
    # v5p-32: projection outputs kept (~0.7 GB per row per layer at 8,192 tokens), one row per chip
    # per micro-batch, and splash's residuals: 51.1 GiB per chip (54%), step >= 7.90 s,
    # compute-bound (nothing recomputed). Full remat, 1 micro-batch: 73.4 GiB, 9.68 s.
    "llama3_8b": ((1, -1, 1), "dots_with_no_batch_dims_saveable", 8),
    # v5p-128 (a torus): fsdp=64, full remat, 2 rows per chip: 61.4 GiB (65%, the LLaMA-2 70B
    # margin), step >= 20.67 s, compute-bound (HBM 1.40 s, collectives 0.91 s). 2 micro-batches:
    # the same bound at 53.9 GiB with twice the weight traffic (collectives 2.72 s against 1.36 s;
    # HBM 5.70 s against 2.79 s, both compiled without the torus's wraparound and under the former
    # byte formula), and on 64 H100s the estimate keeps the hoisted gathered weights resident
    # (174 GiB): it does not fit them.
    "llama3_70b": ((1, -1, 1), "full", 1),
}


def _me_llama3(c, preset: str):
    """The Me-LLaMA recipe on LLaMA-3 (its 8,192-token context, 128,256-token vocabulary and RoPE
    with rope_theta 500,000 come from the preset): the same optimiser, schedule, mixture and ~1M
    tokens per step (128 x 8,192), splash attention, with the settings in ME_LLAMA3_LAYOUT (chosen
    by the planner):

    llama3_8b: a TPU v5p-32 slice (16 chips, --topology v5p:2x2x4): fsdp=16, remat
    dots_with_no_batch_dims_saveable, 8 micro-batches of 16 rows (one row per chip). On GPUs
    (cuDNN attention through auto) the same settings fit two 8xH100 nodes (16 GPUs, --gpus 16xH100);
    on one 8xH100 node plan and run it with --gpus 8xH100 --config.model.remat_policy=full.
    llama3_70b: a TPU v5p-128 slice (64 chips, --topology v5p:4x4x4): fsdp=64, full remat, 1
    micro-batch (2 rows per chip). On GPUs: eight 8xH100 nodes (64 GPUs, --gpus 64xH100) with the
    same settings. README "Planning" shows the planner's output.
    """
    c = _me_llama(c, "llama2_70b" if preset == "llama3_70b" else "llama2_7b")
    c.model.preset = preset
    c.model.init_from = os.path.join("~", "models", "Meta-Llama-3-70B" if preset == "llama3_70b" else "Meta-Llama-3-8B")
    mesh, c.model.remat_policy, c.train.micro_batches = ME_LLAMA3_LAYOUT[preset]
    c.data.seq_len = 8192
    c.train.global_batch_size = 128  # 128 x 8192 = 1M tokens per step, as the LLaMA-2 recipe
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = mesh
    return c


def get_config(variant: str = "tiny"):
    c = get_base_config()
    c.task = "pretrain"
    if variant == "tiny":
        return _tiny(c)
    if variant == "demo":
        return _demo(c)
    if variant in ("llama2_7b", "llama2_13b", "llama2_70b"):
        c = _me_llama(c, variant)
        # mixture biomedical:clinical:general = 15:1:4 (set in mellama_jax.data.config)
        return c
    if variant in ("llama3_8b", "llama3_70b"):
        return _me_llama3(c, variant)
    raise ValueError(f"configs/pretrain.py: unknown variant {variant!r}; expected one of {VARIANTS}")
