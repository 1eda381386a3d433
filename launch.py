"""The one entry point for experiments.

    python launch.py --config configs/pretrain.py:demo --workdir /tmp/demo [--config.key=value ...]

Order matters: (1) parse and validate the config (a typo or a wrong type fails here, before any
device, compile or data read), (2) jax.distributed.initialize when asked or detected (SLURM,
multi-host TPU, JAX_COORDINATOR_ADDRESS), (3) save the resolved config into the workdir
(experiment_config.json),
(4) dispatch on config.task.

Exit codes: 2 a config error (names the key), 3 the workdir is locked by another run, 4 input data
that cannot be read (a source, token store, tokenizer or benchmark file missing, malformed or refused
by its bucket: names the file or URL); each is one line on stderr, not a traceback.
"""
from __future__ import annotations

import os
import sys

import jax
from absl import app, flags, logging

from mellama_jax import fs, sweep
from mellama_jax.checkpoint.artifact import EXPERIMENT_CONFIG, resolve_artifact
from mellama_jax.checkpoint.model_spec import init_artifact, training_tokenizer_file
from mellama_jax.cli.config_flags import define_config_flag, parse_flags
from mellama_jax.config_validation import ArtifactLookup, ConfigError, Task, validate_config
from mellama_jax.data.sources.report import DataError
from mellama_jax.eval import in_training
from mellama_jax.eval import runner as eval_runner
from mellama_jax.sft import run as sft_run
from mellama_jax.sharding import maybe_initialize_distributed
from mellama_jax.train import loop as train_loop
from mellama_jax.train import workdir_lock

# DEFINE_config_file plus comma-separated tuples (source paths) and data.sources_spec expansion.
_CONFIG = define_config_flag("config", "Experiment config, e.g. configs/pretrain.py:demo")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and logs.")



def run_pretrain(config, workdir: str) -> dict:
    """Continual pretraining, with config.bench's benchmarks scored in the loop when
    config.train.bench_every > 0 (their task files are checked here, before anything compiles;
    eval/ sits above train/, so the two meet here)."""
    return train_loop.run(config, workdir, make_hooks=in_training.prepare(config, workdir))


def run_sft(config, workdir: str) -> dict:
    """Instruction tuning, with the in-training benchmarks as for pretraining."""
    return sft_run.run(config, workdir, make_hooks=in_training.prepare(config, workdir))


# Unreadable or unusable input data, wherever the run meets it (validation, the first read, mid-run).
INPUT_ERRORS = (DataError, fs.StorageError)
INPUT_EXIT = 4

# config.task -> run(config, workdir)
TASKS = {
    Task.PRETRAIN: run_pretrain,
    Task.SFT: run_sft,
    Task.EVAL: eval_runner.run,
    Task.SWEEP: sweep.run,
}
# The on-disk checks of validate_config: checkpoint/ sits above config_validation, so it is passed in.
ARTIFACTS = ArtifactLookup(resolve_artifact, init_artifact, training_tokenizer_file)


def validate(config) -> None:
    """Every check of mellama_jax.config_validation, the on-disk ones included (ConfigError names the key)."""
    validate_config(config, ARTIFACTS)
    if config.task == Task.SWEEP:  # every point's config, before the workdir is written
        try:
            sweep.check_points(config)
        except ValueError as err:
            raise ConfigError(str(err)) from err


def save_config(config, workdir: str) -> str:
    """<workdir>/experiment_config.json; never config.json, the file name of a Hugging Face model."""
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, EXPERIMENT_CONFIG)
    with open(path + ".tmp", "w") as f:
        f.write(config.to_json_best_effort(indent=2, sort_keys=True))
    os.replace(path + ".tmp", path)
    return path


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    config = _CONFIG.value
    if config is None:
        raise app.UsageError("--config is required, e.g. --config configs/pretrain.py:tiny")
    if not _WORKDIR.value:
        raise app.UsageError("--workdir is required")
    try:
        validate(config)
    except ConfigError as err:
        print(f"launch.py: {err}", file=sys.stderr)
        sys.exit(2)
    except INPUT_ERRORS as err:
        print(f"launch.py: {err}", file=sys.stderr)
        sys.exit(INPUT_EXIT)
    workdir = os.path.abspath(os.path.expanduser(_WORKDIR.value))
    # Orbax and jax log every checkpoint step through absl at INFO; keep the console to our own
    # progress lines (python logging under "mellama_jax") unless --verbosity asks for more.
    if not any(arg.startswith(("--verbosity", "-v")) for arg in sys.argv[1:]):
        logging.get_absl_logger().setLevel("WARNING")

    if "distributed" in config:
        maybe_initialize_distributed(config.distributed)
    try:  # one run per workdir, taken before anything is written into it
        lock = workdir_lock.acquire(workdir, jax.process_index())
    except workdir_lock.WorkdirLocked as err:
        print(f"launch.py: {err}", file=sys.stderr)
        sys.exit(3)
    with lock:
        if jax.process_index() == 0:
            logging.info("resolved config saved to %s", save_config(config, workdir))
        try:
            TASKS[Task(config.task)](config, workdir)
        except in_training.BenchConfigError as err:  # a benchmark task file, found before the first step
            print(f"launch.py: {err}", file=sys.stderr)
            sys.exit(2)
        except INPUT_ERRORS as err:
            print(f"launch.py: {err}", file=sys.stderr)
            sys.exit(INPUT_EXIT)


if __name__ == "__main__":
    app.run(main, flags_parser=lambda argv: parse_flags(argv, "launch.py"))
