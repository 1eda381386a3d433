"""Shared defaults for every experiment; each configs/<x>.py is a short diff of this.

Fields that default to ``None`` in ``config.model`` mean "take it from the preset"; they are typed
FieldReferences so that ``--config.model.num_hidden_layers=4`` is still type-checked.
"""
from __future__ import annotations

import ml_collections
from ml_collections import FieldReference

from configs.eval import get_config as eval_config
from mellama_jax.data import config as data_cfg
from mellama_jax.sharding import DEFAULT_RULES

# LlamaConfig fields a user may override on top of the preset, with their types.
MODEL_OVERRIDES: dict[str, type] = {
    "vocab_size": int, "hidden_size": int, "intermediate_size": int, "num_hidden_layers": int,
    "num_attention_heads": int, "num_key_value_heads": int, "head_dim": int,
    "max_position_embeddings": int, "rms_norm_eps": float, "rope_theta": float,
    "tie_word_embeddings": bool, "dtype": str, "param_dtype": str, "attention_impl": str,
    "splash_block_q": int, "splash_block_kv": int, "splash_block_kv_compute": int, "remat_policy": str,
}


def model_config() -> ml_collections.ConfigDict:
    """config.model: a preset name, optional per-field overrides and where weights come from."""
    m = ml_collections.ConfigDict()
    m.preset = "tiny"
    # "" = random init; a Hugging Face LLaMA directory (converted on the fly); or an Orbax
    # checkpoint (a training workdir, its checkpoints/ dir, or a converter output dir).
    m.init_from = ""
    for name, typ in MODEL_OVERRIDES.items():
        m[name] = FieldReference(None, field_type=typ)
    return m


def data_config(demo: bool = False) -> ml_collections.ConfigDict:
    """config.data from the data package, plus the ``synthetic`` switch owned by training."""
    d = data_cfg.demo_data_config() if demo else data_cfg.default_data_config()
    # True: deterministic synthetic tokens (no TensorFlow, no files) for benchmarks and tests.
    d.synthetic = False
    return d


# The keys of configs/eval.py that decide a benchmark's number (task files, prompts, protocol,
# decoding, parsing, metrics), with its defaults: config.bench, for the benchmarks scored during
# training (mellama_jax/eval/in_training.py). The checkpoint, tokenizer and mesh are the run's own.
BENCH_KEYS = ("tasks", "data_dir", "task_paths", "train_paths", "max_examples", "max_bad_fraction", "protocol",
              "loglik_normalize", "prompt_set", "share_prefix", "max_new_tokens", "batch_size", "few_shot",
              "chat_template", "parse_lower_case", "medmcqa_cop_base", "ner_types", "rouge_stemmer",
              "bertscore_model", "bertscore_layer", "seed", "dtype")


def bench_config() -> ml_collections.ConfigDict:
    """config.bench: configs/eval.py's keys and defaults, except no task until one is named."""
    e = eval_config()
    b = ml_collections.ConfigDict({k: e[k] for k in BENCH_KEYS})
    b.tasks = ""  # e.g. "pubmedqa,medqa" with config.train.bench_every=N
    return b


def get_base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.task = "pretrain"
    c.seed = 0
    c.model = model_config()
    c.data = data_config()

    c.train = ml_collections.ConfigDict()
    c.train.steps = 1000
    c.train.global_batch_size = 8
    c.train.micro_batches = 1  # gradient accumulation: global batch split into k micro-batches
    c.train.z_loss = 0.0  # weight of the log(Z)^2 auxiliary loss (0 = off)
    # "vocab_parallel": shard_map cross-entropy that never gathers the full logits;
    # "dense": logits from the model, plain cross-entropy (reference).
    c.train.loss_impl = "vocab_parallel"
    c.train.log_every = 10
    c.train.eval_every = 0  # 0 = only at the end
    c.train.eval_batches = 2
    c.train.checkpoint_every = 500
    c.train.keep_checkpoints = 3
    c.train.async_checkpointing = True
    c.train.debug_step_delay_s = 0.0  # test hook: sleep after each step (preemption tests)
    # Every N steps (and at the last), score config.bench.tasks on the live parameters (0 = off).
    c.train.bench_every = 0
    c.bench = bench_config()

    c.optim = ml_collections.ConfigDict()
    c.optim.learning_rate = 3e-4
    c.optim.b1 = 0.9
    c.optim.b2 = 0.95
    c.optim.eps = 1e-8
    c.optim.weight_decay = 0.1
    # cosine | linear | constant | wsd | cyclic_cosine (all after linear warmup; train/optim.py)
    c.optim.schedule = "cosine"
    c.optim.warmup_fraction = 0.05
    c.optim.warmup_steps = -1  # >=0 overrides warmup_fraction
    c.optim.min_lr_ratio = 0.1  # final lr = learning_rate * min_lr_ratio
    c.optim.grad_clip_norm = 1.0  # 0 = no clipping
    c.optim.decay_fraction = 0.2  # wsd: the last share of train.steps that decays, in (0, 1]
    c.optim.decay_shape = "linear"  # wsd: linear | cosine | 1-sqrt
    c.optim.cycles = 1  # cyclic_cosine: cycles of warmup + cosine decay over train.steps
    # Continued runs (model.init_from): warm up again, from 0 or from the init_from run's last lr.
    c.optim.rewarm = False
    c.optim.rewarm_from = "zero"  # zero | checkpoint (a training workdir's last learning rate)

    c.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, tensor=1))
    c.sharding = ml_collections.ConfigDict()
    c.sharding.rules = DEFAULT_RULES

    c.distributed = ml_collections.ConfigDict()
    c.distributed.mode = "auto"  # auto (SLURM / multi-host TPU / JAX_COORDINATOR_ADDRESS) | on | off
    c.distributed.coordinator_address = ""
    c.distributed.num_processes = -1
    c.distributed.process_id = -1

    c.hardware = ml_collections.ConfigDict()
    c.hardware.peak_tflops = 0.0  # per-chip peak bf16 TFLOP/s for MFU; 0 = from the chip table
    return c
