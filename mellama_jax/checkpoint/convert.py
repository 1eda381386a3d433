"""Conversions between Hugging Face LLaMA directories and mellama-jax Orbax checkpoints, and growing a
model to an extended tokenizer (the command: `python -m mellama_jax.cli.convert`).

Every input is any model artifact (see checkpoint/artifact.py); every output is an artifact with its
tokenizer, written through a staged output directory (output_dir.py).

hf_to_orbax streams: source shards are memory-mapped, and each stacked parameter is assembled layer by
layer and written into the Orbax checkpoint on its own (Orbax partial saves), so peak memory stays near
one stacked weight and the model is never held in memory, let alone twice.
"""
from __future__ import annotations

import json
import os
import shutil
import sys

import jax
import numpy as np

from mellama_jax.checkpoint import hf as hf_mapping
from mellama_jax.checkpoint.artifact import check_artifact_tokenizer, resolve_artifact, write_artifact_files
from mellama_jax.checkpoint.hf_dir import HFWeights, read_hf_config
from mellama_jax.checkpoint.lora_io import write_peft_adapter
from mellama_jax.checkpoint.orbax_io import PARAMS_ITEM, StreamingParamsWriter, save_params, write_model_config
from mellama_jax.checkpoint.safetensors_io import write_file
from mellama_jax.checkpoint.vocab import new_row_sources, resize_params, round_up
from mellama_jax.output_dir import OutputDirError, StagedOutput
from mellama_jax.tokenizer import (BPE_FILES, CHAT_TEMPLATE_FILE, MAX_VOCAB_MULTIPLE, TOKENIZER_FILES, TOKENIZER_FILES_TEXT,
                                   TokenizerMismatchError, UnsupportedTokenizerError, copy_tokenizer_files,
                                   load_tokenizer, read_json)

__all__ = ["DTYPES", "TOOL", "hf_to_orbax", "orbax_to_hf", "export_tokenizer", "resize_vocab"]

DTYPES = ("float32", "bfloat16", "float16")
# The command, as every output records it (owner file, provenance.json "created_by").
TOOL = "mellama_jax.cli.convert"


def _staged(out: str, command: str, overwrite: bool) -> StagedOutput:
    """Output written to a temporary sibling and renamed into place at the end: an
    interrupted run leaves the old output or nothing, a rerun works, and `out` must be new, empty or
    an earlier output of the same command (replaced only with overwrite=True)."""
    staged = StagedOutput(out, f"{TOOL} {command}", overwrite)
    try:
        staged.check()
    except OutputDirError as err:
        raise FileExistsError(str(err)) from None
    return staged


def hf_to_orbax(hf_dir: str, out: str, dtype: str | None = None, overwrite: bool = False) -> str:
    """Convert an HF LLaMA directory into a self-contained Orbax model checkpoint at `out`."""
    staged = _staged(out, "hf_to_orbax", overwrite)
    config = read_hf_config(hf_dir)
    weights = HFWeights(hf_dir)
    weights.check(config)
    target = np.dtype(dtype) if dtype else weights.dtype()
    if target.name not in DTYPES:
        raise hf_mapping.ConversionError(f"{hf_dir}: unsupported weight dtype {target.name}")
    config = config.replace(param_dtype=target.name)

    with staged as tmp:
        writer = StreamingParamsWriter(os.path.join(tmp, PARAMS_ITEM))
        for path in hf_mapping.param_paths(config):
            # One stacked parameter in memory at a time, written into the same Orbax checkpoint.
            stacked = hf_mapping.convert_param(config, path, weights.get, dtype=target, where=weights.file_of)
            writer.add(path, stacked)
            del stacked
        writer.finalize()
        # Either tokenizer's files; generation_config.json carries a BPE tokenizer's EOS list.
        for name in dict.fromkeys(TOKENIZER_FILES + BPE_FILES + (CHAT_TEMPLATE_FILE,)):
            if os.path.isfile(os.path.join(hf_dir, name)):
                shutil.copy2(os.path.join(hf_dir, name), os.path.join(tmp, name))
        _write_json(os.path.join(tmp, "provenance.json"),
                    {"created_by": f"{TOOL} hf_to_orbax", "source": os.path.abspath(hf_dir),
                     "format": "huggingface", "dtype": target.name})
        write_model_config(tmp, config)
    return out


def orbax_to_hf(ckpt: str, out: str, dtype: str | None = None, max_shard_bytes: int = 5 * 1024**3,
                step: int | None = None, overwrite: bool = False, merge_lora: bool = False,
                adapter_only: bool = False) -> str:
    """Write config.json, generation_config.json, sharded safetensors + index and tokenizer files.

    A LoRA SFT checkpoint is exported merged (W + alpha/r A B; `merge_lora` says so explicitly), or
    with `adapter_only` as PEFT's adapter_config.json + adapter_model.safetensors for
    `peft.PeftModel.from_pretrained(base_model, out)`.

    The tokenizer files are written so that `transformers.AutoTokenizer.from_pretrained(out)` gives
    the project tokenizer's ids (see tokenizer/sentencepiece_hf.py).
    """
    staged = _staged(out, "orbax_to_hf", overwrite)
    artifact = resolve_artifact(ckpt, step)
    if merge_lora and adapter_only:
        raise ValueError("--merge_lora and --adapter_only exclude each other")
    if (merge_lora or adapter_only) and not artifact.adapters:
        raise ValueError(f"{ckpt}: --merge_lora/--adapter_only need a LoRA checkpoint (an SFT workdir trained "
                         f"with config.lora.enabled); this is a {artifact.describe()} without adapters")
    if adapter_only:
        artifact.base_artifact()  # PEFT applies the adapters to the base it names: refuse a changed one
        with staged as tmp:
            write_peft_adapter(artifact, tmp, dtype)
            export_tokenizer(artifact, tmp)
        return out
    config, params = artifact.model_config, artifact.load_params()
    dtype = dtype or config.param_dtype
    if dtype not in DTYPES:
        raise ValueError(f"--dtype {dtype!r}: expected one of {DTYPES}")
    target = np.dtype(dtype)

    def param(path):
        value = params
        for key in path:
            value = value[key]
        return value

    def tensors():
        for path in hf_mapping.param_paths(config):
            for name, array in hf_mapping.export_param(config, path, np.asarray(param(path))):
                yield name, array.astype(target, copy=False)

    # Plan the shards from sizes first so the file names can say "-of-N".
    names_sizes = []  # from shapes alone: no tensor is materialised before the write pass
    for path in hf_mapping.param_paths(config):
        names = hf_mapping.export_names(config, path)
        size = int(np.prod(param(path).shape)) // len(names) * target.itemsize
        names_sizes.extend((name, size) for name in names)
    shards: list[list[str]] = [[]]
    used = 0
    for name, size in names_sizes:
        if shards[-1] and used + size > max_shard_bytes:
            shards.append([])
            used = 0
        shards[-1].append(name)
        used += size
    shard_of = {name: i for i, shard in enumerate(shards) for name in shard}
    file_names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    pending: dict[int, list] = {i: [] for i in range(len(shards))}
    with staged as tmp:
        for name, array in tensors():
            i = shard_of[name]
            pending[i].append((name, array))
            if len(pending[i]) == len(shards[i]):
                write_file(os.path.join(tmp, file_names[i]), pending.pop(i))
        index = {"metadata": {"total_size": sum(size for _, size in names_sizes)},
                 "weight_map": {name: file_names[shard_of[name]] for name, _ in names_sizes}}
        _write_json(os.path.join(tmp, "model.safetensors.index.json"), index)
        _write_json(os.path.join(tmp, "config.json"), hf_mapping.config_to_hf(config, dtype))
        _write_json(os.path.join(tmp, "generation_config.json"), hf_mapping.generation_config_to_hf(config))
        export_tokenizer(artifact, tmp)
    return out


def export_tokenizer(artifact, out: str) -> None:
    """The artifact's tokenizer as HF files (+ its chat template), through the Tokenizer interface:
    sentencepiece writes LLaMA-2's layout, a BPE tokenizer.json is written back unchanged (its
    tokenizer_config.json gains the run's template). A tokenizer that does not fit the model is exported
    with a warning (the export converts what there is; training and eval refuse it)."""
    if not artifact.tokenizer_file:
        print(f"warning: {artifact.root} carries no {TOKENIZER_FILES_TEXT}; {out} has no tokenizer files",
              file=sys.stderr)
        return
    tokenizer = artifact.load_tokenizer()
    try:
        check_artifact_tokenizer(artifact, tokenizer, artifact.tokenizer_file)
    except TokenizerMismatchError as err:
        print(f"warning: {err}", file=sys.stderr)
    source_config = read_json(os.path.join(artifact.root, "tokenizer_config.json"))
    if artifact.chat_template:
        source_config["chat_template"] = artifact.chat_template
        with open(os.path.join(out, CHAT_TEMPLATE_FILE), "w", encoding="utf-8") as f:
            f.write(artifact.chat_template)
    try:
        tokenizer.write_hf_files(out, source_config if (source_config or artifact.chat_template) else None)
    except UnsupportedTokenizerError as err:  # not LLaMA-style: hand over the files as they are
        print(f"warning: {artifact.tokenizer_file}: {err}; copied its tokenizer files unchanged", file=sys.stderr)
        copy_tokenizer_files(artifact.tokenizer_file, out)
        if artifact.chat_template:
            _write_json(os.path.join(out, "tokenizer_config.json"), source_config)
    _write_eos_list(out, list(getattr(tokenizer, "eos_ids", [])))


def _write_eos_list(out: str, eos_ids: list[int]) -> None:
    """generation_config.json's eos_token_id as the tokenizer's EOS list (LLaMA-3 Instruct stops at
    any of <|end_of_text|>, <|eom_id|>, <|eot_id|>), so transformers' generate stops where we do."""
    path = os.path.join(out, "generation_config.json")
    if len(eos_ids) < 2 or not os.path.isfile(path):
        return
    config = read_json(path)
    first = config.get("eos_token_id")
    first = first[0] if isinstance(first, list) and first else first
    config["eos_token_id"] = [first] + [i for i in eos_ids if i != first] if first in eos_ids else eos_ids
    _write_json(path, config)


def resize_vocab(ckpt: str, tokenizer: str, out: str, pad_to_multiple: int = 64, step: int | None = None,
                 overwrite: bool = False) -> str:
    """A model artifact at `out` whose vocabulary is that of the extended `tokenizer` (see
    checkpoint/vocab.py for how new rows are initialised)."""
    m = int(pad_to_multiple)
    if m < 1 or m & (m - 1) or m > MAX_VOCAB_MULTIPLE:
        raise ValueError(f"--pad_to_multiple {m}: expected a power of two <= {MAX_VOCAB_MULTIPLE}")
    artifact = resolve_artifact(ckpt, step)
    if not artifact.tokenizer_file:
        raise FileNotFoundError(f"{artifact.root}: no {TOKENIZER_FILES_TEXT} travel with {ckpt}; the base tokenizer "
                                "is needed to initialise the new rows")
    check_artifact_tokenizer(artifact, artifact.load_tokenizer(), artifact.tokenizer_file)
    extended = load_tokenizer(tokenizer)
    staged = _staged(out, "resize_vocab", overwrite)
    sources = new_row_sources(artifact.tokenizer_file, extended.model_path)
    n_base, n_new = artifact.load_tokenizer().vocab_size, extended.vocab_size
    size = round_up(n_new, m)
    config = artifact.model_config.replace(vocab_size=size)
    params = resize_params(jax_to_numpy(artifact.load_params()), n_base, size, sources,
                           artifact.model_config.tie_word_embeddings)
    provenance = {"created_by": f"{TOOL} resize_vocab", "source": artifact.path,
                  "source_kind": artifact.kind, "source_step": artifact.step,
                  "source_provenance": artifact.provenance, "base_tokenizer": artifact.tokenizer_file,
                  "tokenizer": extended.model_path, "base_vocab": n_base, "tokenizer_vocab": n_new,
                  "vocab_size": size, "vocab_multiple": m,
                  "new_rows": "mean of the base rows of the base tokenizer's pieces for the new piece's text; "
                              "mean of all base rows where there is no clean split and for padding"}
    with staged as tmp:
        save_params(tmp, config, params)
        write_artifact_files(tmp, config, tokenizer_file=extended.model_path, provenance=provenance,
                             chat_template=artifact.chat_template)
    print(f"vocab {artifact.model_config.vocab_size} -> {size} ({n_new - n_base} new pieces, padded to a "
          f"multiple of {m}); {sum(1 for v in sources.values() if not v)} new rows use the mean of all rows")
    return out


def jax_to_numpy(tree):
    return jax.tree_util.tree_map(np.asarray, tree)


def _write_json(path: str, value: dict) -> None:
    with open(path, "w") as f:
        json.dump(value, f, indent=2, sort_keys=True)
        f.write("\n")
