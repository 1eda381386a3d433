"""The one model artifact every stage hands to the next: model config + params + tokenizer
(+ chat template, + provenance).

Layouts that resolve to an artifact (`resolve_artifact(path, step=None)`):
  hf_dir       a Hugging Face LLaMA directory: config.json + safetensors/bin weights + tokenizer files.
  orbax        a self-contained checkpoint (hf_to_orbax, resize_vocab, extend outputs):
               model_config.json + params/ + tokenizer files + provenance.json.
  training     a training (or instruction-tuning) workdir W, W/checkpoints, or W/checkpoints/<step>:
               W/checkpoints/{model_config.json, tokenizer files, provenance.json} + <step>/params/.
               The newest complete step unless `step` is given.

The experiment config of a run is W/experiment_config.json and never `config.json` (the name that
marks a Hugging Face directory). Workdirs written before that rename still hold W/config.json;
W/checkpoints/model_config.json takes precedence, so they resolve as training workdirs.

Adapters (LoRA from instruction tuning) are the extension point: a training step dir may hold an
Orbax item `adapters/`, described by `adapter_config.json` beside model_config.json
({"kind": "lora", ...}). `ModelArtifact.load_params()` hands base params and that item to the loader
registered for the kind (`register_adapter_loader`), which returns the merged params.

The base of adapters is pinned: adapter_config.json records, besides the base's path, the step and
a fingerprint of the weights they were trained over (`base_pin`). Loading the adapters
(`ModelArtifact.base_artifact`) resolves the base at that step and refuses weights with another
fingerprint, so a base that trained on, or was replaced, is never merged into silently. The
fingerprint of a training step is a hash of the per-tensor integrity record its checkpoint meta
already holds (train/checkpointing.py; nothing is re-read); other artifacts get a file-level hash
(names, sizes, contents of small files, first and last MiB of large ones).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
from typing import Any, Callable

from mellama_jax.checkpoint.lora_io import ADAPTER_CONFIG, ADAPTERS_ITEM, merge_adapter_item
from mellama_jax.checkpoint.orbax_io import MODEL_CONFIG, PARAMS_ITEM, read_model_config, restore_params
from mellama_jax.model.config import LlamaConfig
from mellama_jax.tokenizer import (TOKENIZER_FILES_TEXT, Tokenizer, check_tokenizer, copy_tokenizer_files, load_tokenizer,
                                   read_chat_template, read_json, tokenizer_file_in, write_chat_template, write_json)

__all__ = [
    "ModelArtifact", "resolve_artifact", "checkpoint_kind", "write_artifact_files", "check_artifact_tokenizer",
    "register_adapter_loader", "ADAPTER_LOADERS", "EXPERIMENT_CONFIG", "PROVENANCE", "CHECKPOINTS_DIR",
    "BASE_PIN", "BasePinError", "base_pin", "same_weights", "describe_pin", "resolve_pinned_base",
]

log = logging.getLogger(__name__)

EXPERIMENT_CONFIG = "experiment_config.json"  # launch.py's resolved experiment config in a workdir
LEGACY_EXPERIMENT_CONFIG = "config.json"      # what launch.py wrote before (clashes with HF's name)
CHECKPOINTS_DIR = "checkpoints"
PROVENANCE = "provenance.json"
_STEP = re.compile(r"^\d+$")

# kind -> function(base_params, adapters: dict, artifact, target) -> params.
ADAPTER_LOADERS: dict[str, Callable] = {"lora": merge_adapter_item}


def register_adapter_loader(kind: str, loader: Callable) -> None:
    """Teach the artifact loader one adapter kind."""
    ADAPTER_LOADERS[kind] = loader


@dataclasses.dataclass
class ModelArtifact:
    """What a path resolves to; nothing heavy is loaded until `load_params` / `load_tokenizer`."""

    kind: str                 # "hf_dir" | "orbax" | "training"
    path: str                 # the path the caller gave, absolute
    root: str                 # directory holding the model config, tokenizer files and provenance
    model_config: LlamaConfig
    params_dir: str | None    # the HF directory or the Orbax params item (None: adapters over a base)
    step: int | None = None   # training checkpoints: which step
    tokenizer_file: str | None = None
    chat_template: str | None = None
    provenance: dict = dataclasses.field(default_factory=dict)
    adapters: dict | None = None  # {"kind", "item_dir", "config"} when the step holds adapters

    @property
    def model_config_file(self) -> str:
        """The file the model config was read from (for error messages)."""
        return os.path.join(self.root, "config.json" if self.kind == "hf_dir" else MODEL_CONFIG)

    @property
    def tokenizer_dir(self) -> str | None:
        return os.path.dirname(self.tokenizer_file) if self.tokenizer_file else None

    def load_params(self, target: Any = None, *, merge_adapters: bool = True) -> Any:
        """The parameter pytree; `target` (ShapeDtypeStructs with shardings) restores onto a mesh."""
        if self.kind == "hf_dir":
            from mellama_jax.checkpoint.hf_dir import load_hf_params

            _, params = load_hf_params(self.params_dir)
            if target is not None:
                import jax

                params = jax.tree_util.tree_map(
                    lambda x, t: jax.device_put(x.astype(t.dtype), t.sharding), params, target)
        elif self.params_dir is not None:
            params = restore_params(self.params_dir, target)
        else:  # an adapters-only step (LoRA): the base weights live in the artifact adapter_config names
            params = self.base_artifact().load_params(target)
        if self.adapters and merge_adapters:
            params = _adapter_loader(self.adapters["kind"], self)(params, self.adapters, self, target)
        return params

    def base_artifact(self) -> "ModelArtifact":
        """The base the adapters were trained over, at its pinned step, its fingerprint checked
        (BasePinError when the base changed)."""
        if not self.adapters:
            raise ValueError(f"{self.describe()}: holds no adapters, so it has no base")
        return resolve_pinned_base(self.adapters["config"], os.path.join(self.root, ADAPTER_CONFIG))

    def load_tokenizer(self) -> Tokenizer:
        """The tokenizer for this model (error when the artifact carries none)."""
        if not self.tokenizer_file:
            raise FileNotFoundError(f"{self.root}: no {TOKENIZER_FILES_TEXT} travel with this model; give "
                                    "a tokenizer path explicitly")
        return load_tokenizer(self.tokenizer_file)

    def describe(self) -> str:
        where = f"{self.root} step {self.step}" if self.step is not None else self.root
        return f"{self.kind} model at {where}"


def _adapter_loader(kind: str, artifact: ModelArtifact) -> Callable:
    loader = ADAPTER_LOADERS.get(kind)
    if loader is None:
        raise ValueError(f"{os.path.join(artifact.root, ADAPTER_CONFIG)}: adapter kind {kind!r} has no "
                         f"loader (known: {sorted(ADAPTER_LOADERS)})")
    return loader


# ------------------------------------------------------------------------------------------------
# Resolving a path
# ------------------------------------------------------------------------------------------------
def _has_params(directory: str) -> bool:
    """A complete model step: full params, or adapters over a base named in adapter_config.json."""
    return os.path.isdir(os.path.join(directory, PARAMS_ITEM)) or os.path.isdir(os.path.join(directory, ADAPTERS_ITEM))


def checkpoint_kind(path: str) -> str | None:
    """Which layout `path` is: "orbax" | "step" | "checkpoints" | "workdir" | "hf_dir" | None.

    Training layouts are recognised before config.json, so a workdir that still holds a legacy
    experiment config.json is a workdir, not a (broken) Hugging Face directory.
    """
    path = os.path.abspath(os.path.expanduser(path))
    if not os.path.isdir(path):
        return None
    if os.path.isfile(os.path.join(path, MODEL_CONFIG)) and os.path.isdir(os.path.join(path, PARAMS_ITEM)):
        return "orbax"
    if _STEP.match(os.path.basename(path)) and _has_params(path) \
            and os.path.isfile(os.path.join(os.path.dirname(path), MODEL_CONFIG)):
        return "step"
    if os.path.isfile(os.path.join(path, MODEL_CONFIG)):
        return "checkpoints"
    if os.path.isfile(os.path.join(path, CHECKPOINTS_DIR, MODEL_CONFIG)):
        return "workdir"
    if os.path.isfile(os.path.join(path, "config.json")):
        return "hf_dir"
    return None


def available_steps(checkpoints_dir: str) -> list[int]:
    """Complete steps (Orbax renames a step dir into place only when its save finished)."""
    if not os.path.isdir(checkpoints_dir):
        return []
    return sorted(int(name) for name in os.listdir(checkpoints_dir)
                  if _STEP.match(name) and _has_params(os.path.join(checkpoints_dir, name)))


def resolve_artifact(path: str, step: int | None = None) -> ModelArtifact:
    """The model artifact at `path` (see the module docstring for the layouts); `step` picks a
    training checkpoint other than the newest."""
    given = os.path.abspath(os.path.expanduser(str(path)))
    if not os.path.exists(given):
        raise FileNotFoundError(f"{given}: no such checkpoint directory")
    kind = checkpoint_kind(given)
    if kind is None:
        raise FileNotFoundError(
            f"{given}: neither a Hugging Face directory (config.json) nor a mellama-jax checkpoint "
            f"({MODEL_CONFIG} + {PARAMS_ITEM}/, or a training workdir with {CHECKPOINTS_DIR}/{MODEL_CONFIG})")
    if kind == "hf_dir":
        _no_step(given, step, kind)
        from mellama_jax.checkpoint.hf_dir import read_hf_config

        return _finish(ModelArtifact("hf_dir", given, given, read_hf_config(given), given,
                                     provenance={"source": given, "format": "huggingface"}))
    if kind == "orbax":
        _no_step(given, step, kind)
        return _finish(ModelArtifact("orbax", given, given, read_model_config(given),
                                     os.path.join(given, PARAMS_ITEM)))
    if kind == "step":
        root, chosen = os.path.dirname(given), int(os.path.basename(given))
        if step is not None and int(step) != chosen:
            raise ValueError(f"{given}: is step {chosen}, but step {step} was asked for")
    else:
        root = given if kind == "checkpoints" else os.path.join(given, CHECKPOINTS_DIR)
        steps = available_steps(root)
        if not steps:
            raise FileNotFoundError(f"{root}: has {MODEL_CONFIG} but no finished step with a "
                                    f"'{PARAMS_ITEM}' item yet")
        if step is None:
            chosen = steps[-1]
        elif int(step) in steps:
            chosen = int(step)
        else:
            raise FileNotFoundError(f"{root}: no finished checkpoint for step {step} (have {steps})")
    step_dir = os.path.join(root, str(chosen))
    params_dir = os.path.join(step_dir, PARAMS_ITEM)
    artifact = ModelArtifact("training", given, root, read_model_config(root),
                             params_dir if os.path.isdir(params_dir) else None, step=chosen)
    adapter_item = os.path.join(step_dir, ADAPTERS_ITEM)
    if os.path.isdir(adapter_item):
        config = read_json(os.path.join(root, ADAPTER_CONFIG))
        if not config:
            raise FileNotFoundError(f"{adapter_item}: adapters saved without {os.path.join(root, ADAPTER_CONFIG)}")
        if artifact.params_dir is None and not config.get("base"):
            raise FileNotFoundError(f"{os.path.join(root, ADAPTER_CONFIG)}: names no 'base' model, and "
                                    f"{step_dir} holds adapters only")
        artifact.adapters = {"kind": config.get("kind", "lora"), "item_dir": adapter_item, "config": config}
    return _finish(artifact)


def _no_step(path: str, step: int | None, kind: str) -> None:
    if step is not None:
        raise ValueError(f"{path}: a {kind} directory holds one set of weights; a step ({step}) applies "
                         "only to training checkpoints")


def _finish(artifact: ModelArtifact) -> ModelArtifact:
    """Fill in tokenizer, chat template and provenance from the artifact's root."""
    root = artifact.root
    artifact.tokenizer_file = tokenizer_file_in(root)
    artifact.chat_template = read_chat_template(root)
    provenance = read_json(os.path.join(root, PROVENANCE))
    artifact.provenance = {**artifact.provenance, **provenance}
    if artifact.step is not None:
        artifact.provenance["step"] = artifact.step
    return artifact


# ------------------------------------------------------------------------------------------------
# The pinned base of adapters
# ------------------------------------------------------------------------------------------------
BASE_PIN = "base_pin"          # the adapter_config.json key: {"path", "step", "fingerprint", "how"}
_META_FILE = ("meta", "metadata")  # a training step's JSON meta item (train/checkpointing.py writes it)
_SMALL = 16 << 20              # files up to this size are hashed whole
_EDGE = 1 << 20                # of larger ones, the first and last MiB (with the size)
_WARNED: set[str] = set()


class BasePinError(ValueError):
    """The base adapters name is not the one they were trained over."""


def _file_fingerprint(directory: str) -> str:
    """sha256 over every file's relative path and size and the bytes of small files (the first and
    last MiB of large ones): cheap for a 70B model, and changed by any rewrite of its weights."""
    h = hashlib.sha256()
    paths = [directory] if os.path.isfile(directory) else sorted(
        os.path.join(root, n) for root, dirs, names in os.walk(directory) for n in names)
    for p in paths:
        size = os.path.getsize(p)
        h.update(f"{os.path.relpath(p, directory)}\0{size}\0".encode())
        with open(p, "rb") as f:
            if size <= _SMALL:
                h.update(f.read())
            else:
                h.update(f.read(_EDGE))
                f.seek(size - _EDGE)
                h.update(f.read(_EDGE))
    return h.hexdigest()


def base_pin(artifact: ModelArtifact) -> dict:
    """{"path", "step", "fingerprint", "how"}: which weights `artifact` holds, without loading them."""
    pin = {"path": artifact.path, "step": artifact.step}
    if artifact.kind == "training" and artifact.params_dir is not None:
        meta = read_json(os.path.join(artifact.root, str(artifact.step), *_META_FILE))
        prints = (meta.get("integrity") or {}).get(PARAMS_ITEM)
        if prints:
            digest = hashlib.sha256(json.dumps(prints, sort_keys=True).encode()).hexdigest()
            return {**pin, "fingerprint": digest, "how": "checkpoint integrity record"}
    where = artifact.params_dir or (os.path.join(artifact.root, str(artifact.step)) if artifact.step is not None
                                    else artifact.root)
    return {**pin, "fingerprint": _file_fingerprint(where), "how": "files"}


def same_weights(a: dict, b: dict) -> bool:
    """Two pins name the same weights (their paths may differ: a base may be moved)."""
    return a.get("step") == b.get("step") and a.get("fingerprint") == b.get("fingerprint")


def describe_pin(pin: dict) -> str:
    step = f" step {pin['step']}" if pin.get("step") is not None else ""
    return f"{pin.get('path')}{step} (fingerprint {str(pin.get('fingerprint'))[:16]})"


def resolve_pinned_base(adapter_config: dict, where: str) -> ModelArtifact:
    """The base artifact adapter_config.json names, at its pinned step and with its pinned weights.

    A config written before bases were pinned: the base's newest weights, with a warning (once).
    """
    base = adapter_config.get("base") or ""
    if not base:
        raise FileNotFoundError(f"{where}: names no 'base' model")
    pin = adapter_config.get(BASE_PIN)
    if not pin:
        if where not in _WARNED:
            _WARNED.add(where)
            log.warning("%s: records no pin (step + fingerprint) of its base %s (written before bases were "
                        "pinned); using the base's current weights unchecked", where, base)
        return resolve_artifact(base)
    recorded = describe_pin({**pin, "path": base})
    try:
        found = resolve_artifact(base, pin.get("step"))
    except (FileNotFoundError, ValueError) as err:
        newest = ""
        try:
            newest = f"; it now holds {describe_pin(base_pin(resolve_artifact(base)))}"
        except (FileNotFoundError, ValueError):
            pass
        raise BasePinError(f"{where}: the adapters were trained over {recorded}, which is gone ({err}){newest}; "
                           "refusing to merge them into other weights") from None
    got = base_pin(found)
    if not same_weights(pin, got):
        raise BasePinError(f"{where}: the adapters were trained over {recorded}, but {base} now holds "
                           f"{describe_pin(got)}: other weights; refusing to merge them into those")
    return found


# ------------------------------------------------------------------------------------------------
# Writing the files that make a directory an artifact
# ------------------------------------------------------------------------------------------------
def write_artifact_files(directory: str, model_config: LlamaConfig, *, tokenizer_file: str | None = None,
                         provenance: dict | None = None, chat_template: str | None = None) -> None:
    """model_config.json, the tokenizer files, chat_template.jinja and provenance.json into `directory`.

    Used by the converter, training (into W/checkpoints) and resize_vocab, so every stage's output
    is read back by `resolve_artifact` the same way.
    """
    from mellama_jax.checkpoint.orbax_io import write_model_config

    os.makedirs(directory, exist_ok=True)
    if tokenizer_file:
        _refuse_other_tokenizer(directory, tokenizer_file)
        copy_tokenizer_files(tokenizer_file, directory)
    if chat_template:
        write_chat_template(directory, chat_template)
    if provenance is not None:
        write_json(os.path.join(directory, PROVENANCE), provenance)
    write_model_config(directory, model_config)


def _refuse_other_tokenizer(directory: str, tokenizer_file: str) -> None:
    """A directory that already carries a tokenizer (a resumed run's W/checkpoints) keeps it: its
    checkpoints and token store were made with those ids. Compared by the tokenizers' fingerprints,
    so either backend (and a switch between them) is caught."""
    saved = tokenizer_file_in(directory)
    if saved is None or os.path.abspath(saved) == os.path.abspath(tokenizer_file):
        return
    new = load_tokenizer(tokenizer_file)
    old = load_tokenizer(saved)
    if type(old) is not type(new) or old.fingerprint() != new.fingerprint():
        raise ValueError(f"{saved}: this directory's checkpoints were made with a different tokenizer than "
                         f"{tokenizer_file} (fingerprint {old.fingerprint()[:12]} vs {new.fingerprint()[:12]}); "
                         "resume with the same tokenizer or use a new workdir")


# ------------------------------------------------------------------------------------------------
# Tokenizer <-> model consistency (the checks themselves live with the tokenizer)
# ------------------------------------------------------------------------------------------------
def check_artifact_tokenizer(artifact: ModelArtifact, tokenizer: Tokenizer, tokenizer_file: str,
                             model_config: LlamaConfig | None = None) -> None:
    """check_tokenizer against an artifact's model (or `model_config` derived from it)."""
    check_tokenizer(tokenizer, model_config or artifact.model_config, tokenizer_file, artifact.model_config_file)
