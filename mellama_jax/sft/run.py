"""`launch.py` entry for config.task == "sft": instruction tuning on the pretraining loop.

There is no second trainer: this writes what makes the workdir readable as a LoRA artifact
(checkpoints/adapter_config.json: rank, alpha, dropout, targets, the base it adapts pinned by step and
weights fingerprint, the chat template) and hands over to `mellama_jax.train.loop.run` with the SFT
pipeline (mellama_jax.sft.data.build_sft_pipeline); with config.lora.enabled the loop trains adapters
over the frozen base.

A LoRA run without config.model.init_from adapts a random base (configs/sft.py:tiny). That base is
saved once into W/base/ (a model artifact) and used as init_from, so the workdir can be merged,
exported and evaluated like any other: a base that cannot be recovered is never trained over.
"""
from __future__ import annotations

import logging
import os
import shutil
from typing import Any

import jax

from mellama_jax.checkpoint import lora_io
from mellama_jax.checkpoint.artifact import (BASE_PIN, BasePinError, base_pin, describe_pin, resolve_artifact,
                                             same_weights, write_artifact_files)
from mellama_jax.checkpoint.model_spec import training_tokenizer_file
from mellama_jax.checkpoint.orbax_io import PARAMS_ITEM, save_params
from mellama_jax.model import lora as lora_lib
from mellama_jax.model.llama import init_params
from mellama_jax.sft.data import build_sft_pipeline
from mellama_jax.tokenizer import load_tokenizer
from mellama_jax.tokenizer.chat_templates import hf_chat_template
from mellama_jax.train import loop
from mellama_jax.train.checkpointing import checkpoint_dir

log = logging.getLogger(__name__)

RANDOM_BASE_DIR = "base"  # W/base: the saved random base of a LoRA run without init_from


def run(config: Any, workdir: str, *, make_hooks: loop.HookFactory | None = None) -> dict:
    """Instruction tuning in `workdir`; `make_hooks` as train.loop.run's (launch.py passes the
    in-training benchmarks)."""
    hf_chat_template(config.data.chat_template)  # an unknown template fails before any work
    spec = lora_lib.spec_from_config(config.get("lora"))
    if spec is not None:
        if not (config.model.init_from or ""):
            config.model.init_from = save_random_base(config, workdir)
        if jax.process_index() == 0:
            _write_adapter_config(config, workdir, spec)
    return loop.run(config, workdir, make_pipeline=build_sft_pipeline, make_hooks=make_hooks)


def _write_adapter_config(config: Any, workdir: str, spec: lora_lib.LoraSpec) -> None:
    """Write (or, resuming, check) checkpoints/adapter_config.json: the adapters of this config, over
    the very weights they were trained on so far."""
    base = os.path.abspath(os.path.expanduser(config.model.init_from))
    pin = base_pin(resolve_artifact(base))
    directory = checkpoint_dir(workdir)
    existing = os.path.join(directory, lora_io.ADAPTER_CONFIG)
    if os.path.isfile(existing):  # resuming: the adapters must be those of this config, the base the same
        old, body = lora_io.read_adapter_config(existing)
        recorded = body.get(BASE_PIN)
        if old != spec:
            raise ValueError(f"{existing}: this workdir trains LoRA {old}, but the config asks for {spec}; "
                             "use a new workdir")
        if recorded:
            if not same_weights(recorded, pin):
                raise BasePinError(
                    f"{existing}: this workdir's adapters were trained over {describe_pin(recorded)}, but "
                    f"config.model.init_from={config.model.init_from!r} now holds {describe_pin(pin)}: "
                    "other weights. Point init_from at the recorded step (DIR/checkpoints/<step>) if it "
                    "still exists, or use a new workdir")
        else:
            old_base = body.get("base") or ""
            if old_base and old_base != base:
                raise ValueError(f"{existing}: this workdir trains LoRA over {old_base!r}, but the config asks "
                                 f"for {base!r}; use a new workdir")
            log.warning("%s: records no pin of its base (written before bases were pinned); resuming over "
                        "%s unchecked", existing, describe_pin(pin))
            pin = None  # what the earlier steps were trained over is not known: pin nothing
    lora_io.write_adapter_config(directory, spec, base, config.data.chat_template, pin)


def save_random_base(config: Any, workdir: str) -> str:
    """W/base: the seeded random base of a LoRA run without init_from, saved once as a model artifact
    (model_config.json, params/, the tokenizer, provenance.json); returns its path."""
    directory = os.path.join(os.path.abspath(workdir), RANDOM_BASE_DIR)
    if os.path.isdir(os.path.join(directory, PARAMS_ITEM)):
        return directory  # resuming: the base saved by the first run
    if os.path.exists(directory):
        raise FileExistsError(f"{directory}: exists but holds no saved base ({PARAMS_ITEM}/ missing); a LoRA "
                              "run without config.model.init_from saves its random base there: remove it")
    if jax.process_count() > 1:
        raise ValueError("config.lora.enabled over a random base (config.model.init_from is empty) runs on "
                         "one process only; set config.model.init_from to the model the adapters should adapt")
    tokenizer_file = None
    vocab = None
    if not config.data.get("synthetic", False):
        tokenizer_file = os.path.abspath(training_tokenizer_file(config))
        vocab = load_tokenizer(tokenizer_file).vocab_size
    model_config = loop.resolve_model_config(config, vocab)
    key = jax.random.split(jax.random.PRNGKey(int(config.seed)))[0]  # the key a fresh run initialises with
    params = jax.device_get(jax.jit(lambda: init_params(model_config, key))())
    tmp = f"{directory}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    save_params(tmp, model_config, params)
    write_artifact_files(tmp, model_config, tokenizer_file=tokenizer_file, provenance={
        "created_by": "mellama_jax.sft.run", "source": "random init", "preset": config.model.preset,
        "seed": int(config.seed), "why": "the frozen base of a LoRA run without config.model.init_from"})
    os.rename(tmp, directory)
    log.info("saved the random LoRA base to %s", directory)
    return directory
