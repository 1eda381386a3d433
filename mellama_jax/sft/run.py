"""`launch.py` entry for config.task == "sft": instruction tuning on the pretraining loop.

There is no second trainer: this writes what makes the workdir readable as a LoRA artifact
(checkpoints/adapter_config.json: rank, alpha, dropout, targets, the base it adapts, the chat
template) and hands over to `mellama_jax.train.loop.run` with the SFT pipeline
(mellama_jax.sft.data.build_sft_pipeline); with config.lora.enabled the loop trains adapters over
the frozen base.
"""
from __future__ import annotations

import os
from typing import Any

import jax

from mellama_jax.checkpoint import lora_io
from mellama_jax.model import lora as lora_lib
from mellama_jax.sft.data import build_sft_pipeline
from mellama_jax.tokenizer.chat_templates import hf_chat_template
from mellama_jax.train import loop
from mellama_jax.train.checkpointing import checkpoint_dir


def run(config: Any, workdir: str, *, make_hooks: loop.HookFactory | None = None) -> dict:
    """Instruction tuning in `workdir`; `make_hooks` as train.loop.run's (launch.py passes the
    in-training benchmarks)."""
    hf_chat_template(config.data.chat_template)  # an unknown template fails before any work
    spec = lora_lib.spec_from_config(config.get("lora"))
    if spec is not None and jax.process_index() == 0:
        base = os.path.expanduser(config.model.init_from or "")
        directory = checkpoint_dir(workdir)
        existing = os.path.join(directory, lora_io.ADAPTER_CONFIG)
        if os.path.isfile(existing):  # resuming: the adapters must be those of this config
            old, body = lora_io.read_adapter_config(existing)
            if old != spec or (body.get("base") or "") != (os.path.abspath(base) if base else ""):
                raise ValueError(f"{existing}: this workdir trains LoRA {old} over {body.get('base')!r}, but the "
                                 f"config asks for {spec} over {base!r}; use a new workdir")
        lora_io.write_adapter_config(directory, spec, base, config.data.chat_template)
    return loop.run(config, workdir, make_pipeline=build_sft_pipeline, make_hooks=make_hooks)
