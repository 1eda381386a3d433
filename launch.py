"""The one entry point for experiments.

    python launch.py --config configs/pretrain.py:demo --workdir /tmp/demo [--config.key=value ...]

Order matters: (1) parse and validate the config (a typo or a wrong type fails here, before any
device, compile or data read), (2) jax.distributed.initialize when asked or detected (SLURM,
multi-host TPU, JAX_COORDINATOR_ADDRESS), (3) save the resolved config into the workdir
(experiment_config.json),
(4) dispatch on config.task.
"""
from __future__ import annotations

import os
import sys

from absl import app, flags, logging

from mellama_jax.config_cli import define_config_flag, parse_flags

# DEFINE_config_file plus comma-separated tuples (source paths) and data.sources_spec expansion.
_CONFIG = define_config_flag("config", "Experiment config, e.g. configs/pretrain.py:demo")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and logs.")

TASKS = {
    "pretrain": ("mellama_jax.train.loop", "run"),
    "sft": ("mellama_jax.sft.run", "run"),
    "eval": ("mellama_jax.eval.runner", "run"),
    "sweep": ("mellama_jax.sweep", "run"),
}


class ConfigError(ValueError):
    pass


def validate(config) -> None:
    """Cheap semantic checks that need no device and no data (raise ConfigError naming the key)."""
    if config.get("task") not in TASKS:
        raise ConfigError(f"config.task={config.get('task')!r}: expected one of {sorted(TASKS)}")
    from mellama_jax.config_validation import ConfigRangeError, validate_config
    try:
        validate_config(config)  # every numeric key by range (issue 14), any task
    except ConfigRangeError as err:
        raise ConfigError(str(err)) from err
    if config.task == "eval" and config.get("checkpoint"):
        _validate_eval_checkpoint(config)
    if config.task not in ("pretrain", "sft"):
        return
    if config.task == "sft":
        from mellama_jax.model.lora import spec_from_config
        from mellama_jax.sft.chat import template_names
        if config.data.chat_template not in template_names():
            raise ConfigError(f"config.data.chat_template={config.data.chat_template!r}: expected one of "
                              f"{list(template_names())}")
        try:
            spec_from_config(config.get("lora"))
        except ValueError as err:
            raise ConfigError(str(err)) from err
    from mellama_jax.checkpoint.model_spec import model_overrides
    from mellama_jax.model.presets import PRESETS
    if config.model.preset not in PRESETS:
        raise ConfigError(f"config.model.preset={config.model.preset!r}: expected one of "
                          f"{sorted(PRESETS)}")
    try:
        PRESETS[config.model.preset].replace(**model_overrides(config.model))
    except ValueError as err:
        raise ConfigError(f"config.model: {err}") from err
    for key in ("steps", "global_batch_size", "micro_batches"):
        if int(config.train[key]) < 1:
            raise ConfigError(f"config.train.{key}={config.train[key]}: must be >= 1")
    if config.optim.schedule not in ("cosine", "linear", "constant"):
        raise ConfigError(f"config.optim.schedule={config.optim.schedule!r}: expected cosine, "
                          "linear or constant")
    if config.train.loss_impl not in ("vocab_parallel", "dense"):
        raise ConfigError(f"config.train.loss_impl={config.train.loss_impl!r}: expected "
                          "vocab_parallel or dense")
    if config.model.init_from and not os.path.exists(os.path.expanduser(config.model.init_from)):
        raise ConfigError(f"config.model.init_from={config.model.init_from!r}: no such path")
    _validate_model_source(config)


def _validate_eval_checkpoint(config) -> None:
    """config.checkpoint must be a model artifact with a tokenizer (its own or config.tokenizer_path)."""
    from mellama_jax.checkpoint.artifact import resolve_artifact
    try:
        artifact = resolve_artifact(config.checkpoint)
    except (FileNotFoundError, ValueError) as err:
        raise ConfigError(f"config.checkpoint={config.checkpoint!r}: {err}") from err
    if not artifact.tokenizer_file and not config.get("tokenizer_path"):
        raise ConfigError(f"config.checkpoint={config.checkpoint!r}: no tokenizer.model travels with it "
                          f"({artifact.root}); set config.tokenizer_path")


def _validate_model_source(config) -> None:
    """init_from must resolve to a model artifact, and a real-data run needs a tokenizer from
    config.data.tokenizer_path or from that artifact (checked here, before any device or data)."""
    from mellama_jax.checkpoint.model_spec import init_artifact, training_tokenizer_file
    try:
        init_artifact(config.model)
        if not config.data.get("synthetic", False):
            training_tokenizer_file(config)
    except (FileNotFoundError, ValueError) as err:
        raise ConfigError(str(err)) from err


def save_config(config, workdir: str) -> str:
    """<workdir>/experiment_config.json; never config.json, the file name of a Hugging Face model."""
    from mellama_jax.checkpoint.artifact import EXPERIMENT_CONFIG
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
    workdir = os.path.abspath(os.path.expanduser(_WORKDIR.value))
    # Orbax and jax log every checkpoint step through absl at INFO; keep the console to our own
    # progress lines (python logging under "mellama_jax") unless --verbosity asks for more.
    if not any(arg.startswith(("--verbosity", "-v")) for arg in sys.argv[1:]):
        logging.get_absl_logger().setLevel("WARNING")

    from mellama_jax.sharding import maybe_initialize_distributed
    if "distributed" in config:
        maybe_initialize_distributed(config.distributed)
    import jax
    from mellama_jax.train import workdir_lock
    try:  # one run per workdir, taken before anything is written into it
        lock = workdir_lock.acquire(workdir, jax.process_index())
    except workdir_lock.WorkdirLocked as err:
        print(f"launch.py: {err}", file=sys.stderr)
        sys.exit(3)
    with lock:
        if jax.process_index() == 0:
            logging.info("resolved config saved to %s", save_config(config, workdir))

        module_name, fn_name = TASKS[config.task]
        import importlib
        getattr(importlib.import_module(module_name), fn_name)(config, workdir)


if __name__ == "__main__":
    app.run(main, flags_parser=lambda argv: parse_flags(argv, "launch.py"))
