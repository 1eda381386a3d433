"""What every evaluation harness does the same way around its tasks: read the task list a config
names, resolve the chat template it means, load the engine, and write the results header that says
which checkpoint, tokenizer, code and packages produced the numbers.

The built-in harness (`runner`) and the lm-eval one (`lm_eval_harness`) both build on this module,
and neither imports the other.
"""
from __future__ import annotations

import functools
import logging
import os

from mellama_jax.checkpoint.artifact import resolve_artifact
from mellama_jax.eval import provenance
from mellama_jax.eval.engine import Engine, load_engine
from mellama_jax.tokenizer import load_tokenizer
from mellama_jax.tokenizer.chat_templates import template_name_for_jinja

log = logging.getLogger(__name__)

__all__ = ["task_names", "resolve_chat_template", "engine_from_config", "results_header"]


def task_names(value, empty_message: str) -> list[str]:
    """A comma-separated string or a sequence of task names as a list; `empty_message` if none."""
    if isinstance(value, str):
        value = [t.strip() for t in value.split(",") if t.strip()]
    names = list(value or ())
    if not names:
        raise ValueError(empty_message)
    return names


def resolve_chat_template(config) -> str:
    """config.chat_template, with "auto" (the default) replaced by the checkpoint's own template.

    An SFT checkpoint carries the template it was trained with (chat_template.jinja / the
    tokenizer_config.json of an export), so evaluating it needs no flag; a checkpoint without one is
    evaluated on raw prompts. A template that is none of ours is `model`: the checkpoint's Jinja,
    rendered as transformers renders it.
    """
    name = config.chat_template or "none"
    return _checkpoint_chat_template(config.get("checkpoint") or "") if name == "auto" else name


@functools.lru_cache(maxsize=16)
def _checkpoint_chat_template(checkpoint: str) -> str:
    if not checkpoint or not os.path.exists(checkpoint):
        return "none"  # a missing checkpoint is reported when the model loads, after every task file is checked
    found = template_name_for_jinja(resolve_artifact(checkpoint).chat_template)
    log.info("chat template from the checkpoint: %s", found)
    return found


@functools.lru_cache(maxsize=16)
def _template_tokens(checkpoint: str, tokenizer_path: str) -> tuple[str | None, str, str]:
    artifact = resolve_artifact(checkpoint)
    tok = load_tokenizer(tokenizer_path or artifact.tokenizer_file or artifact.root)
    text = lambda i: tok.id_to_piece(i) if i >= 0 else ""  # noqa: E731
    return artifact.chat_template or tok.chat_template, text(tok.bos_id), text(tok.eos_id)


def checkpoint_template_tokens(config) -> tuple[str | None, str, str]:
    """(the checkpoint's Jinja chat template, BOS text, EOS text): what template `model` renders with."""
    return _template_tokens(config.get("checkpoint") or "", config.get("tokenizer_path") or "")


def engine_from_config(config, show_progress: bool) -> Engine:
    """config.checkpoint loaded with its tokenizer (or config.tokenizer_path) on config.mesh (unless
    config.use_mesh is False), with config.sharding.rules, config.dtype and config.batch_size."""
    mesh_cfg = config.get("mesh") if config.get("use_mesh", True) else None
    rules = config.sharding.rules if config.get("sharding") is not None else None
    return load_engine(config.checkpoint, config.tokenizer_path, batch_size=int(config.batch_size),
                       mesh_config=mesh_cfg, rules=rules, dtype=config.dtype, show_progress=show_progress)


def results_header(config, engine: Engine) -> dict:
    """The results.json fields both harnesses write: checkpoint (and its fingerprint), model config,
    tokenizer, code, packages, seed, mesh and batch size."""
    return {
        "checkpoint": provenance.checkpoint_fingerprint(config.checkpoint, bool(config.hash_weights)),
        "model_config": engine.model_config.to_dict(),
        "tokenizer": {"path": os.path.abspath(engine.tokenizer.model_path), "sha256": engine.tokenizer.sha256(),
                      "add_bos": engine.tokenizer.add_bos},
        "code": provenance.git_state(),
        "packages": provenance.package_versions(),
        "seed": int(config.seed),
        "mesh": None if engine.mesh is None else dict(engine.mesh.shape),
        "batch_size": int(config.batch_size),
    }
