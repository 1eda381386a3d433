"""The files a tokenizer is made of, in the names transformers reads them by: tokenizer_config.json
(and its LLaMA-2 defaults), the chat template, and the one reader of the small JSON files beside a
model (tokenizer_config.json, provenance, adapter configs).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from typing import Any

__all__ = ["TOKENIZER_FILES", "TOKENIZER_CONFIG", "CHAT_TEMPLATE_FILE", "TOKENIZER_JSON", "BPE_FILES",
           "GENERATION_CONFIG", "SPECIAL_TOKENS_MAP", "file_sha256", "read_json", "write_json",
           "tokenizer_files", "llama_tokenizer_config", "write_llama_tokenizer_config", "copy_tokenizer_files",
           "read_chat_template", "write_chat_template", "companion_names"]

TOKENIZER_CONFIG = "tokenizer_config.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"
# Files of a LLaMA tokenizer, in the names transformers reads them by.
TOKENIZER_FILES = ("tokenizer.model", TOKENIZER_CONFIG, "special_tokens_map.json", "tokenizer.json",
                   "added_tokens.json")
TOKENIZER_JSON = "tokenizer.json"
SPECIAL_TOKENS_MAP = "special_tokens_map.json"
GENERATION_CONFIG = "generation_config.json"
# Files of a Hugging Face BPE tokenizer (LLaMA-3, Qwen2); generation_config.json carries its EOS list.
BPE_FILES = (TOKENIZER_JSON, TOKENIZER_CONFIG, SPECIAL_TOKENS_MAP, "added_tokens.json", GENERATION_CONFIG)


def _names_for(tokenizer_file: str) -> tuple[str, ...]:
    """The file names that make up the tokenizer whose defining file is `tokenizer_file`."""
    return BPE_FILES if os.path.basename(tokenizer_file) == TOKENIZER_JSON else TOKENIZER_FILES


def companion_names(tokenizer_file: str) -> tuple[str, ...]:
    """The files that travel beside a tokenizer file and change how it behaves: the Hugging Face
    files (tokenizer_config.json, ...) and the chat template (read_chat_template's names)."""
    return _names_for(tokenizer_file)[1:] + (CHAT_TEMPLATE_FILE, "chat_template.json")


def file_sha256(path: str) -> str:
    """Content hash of a tokenizer file (cache keys, provenance, same-tokenizer checks)."""
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def read_json(path: str) -> dict:
    """A JSON object file ({} when absent); errors name the file."""
    if not os.path.isfile(path):
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: invalid JSON at line {err.lineno}: {err.msg}") from err
    if not isinstance(value, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(value).__name__}")
    return value


def write_json(path: str, value: dict) -> None:
    """Write `value` through a temporary sibling, so a reader never sees half a file."""
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(value, f, indent=2, sort_keys=True, default=str)
        f.write("\n")
    os.replace(tmp, path)


def llama_tokenizer_config(**overrides: Any) -> dict:
    """LLaMA-2's tokenizer_config.json conventions (what our tokenizer assumes without one)."""
    config = {"add_bos_token": True, "add_eos_token": False, "bos_token": "<s>", "eos_token": "</s>",
              "unk_token": "<unk>", "pad_token": None, "legacy": True, "model_max_length": 4096,
              "tokenizer_class": "LlamaTokenizer", "clean_up_tokenization_spaces": False}
    config.update(overrides)
    return config


def write_llama_tokenizer_config(directory: str) -> str:
    """`directory`/tokenizer_config.json with LLaMA-2's conventions, so transformers and our
    tokenizer agree on BOS/EOS for a model file that came without one; returns its path."""
    path = os.path.join(directory, TOKENIZER_CONFIG)
    write_json(path, llama_tokenizer_config())
    return path


def tokenizer_files(tokenizer_file: str) -> list[str]:
    """`tokenizer_file` and the Hugging Face tokenizer files that exist beside it."""
    source_dir = os.path.dirname(os.path.abspath(tokenizer_file))
    found = [os.path.abspath(tokenizer_file)]
    for name in _names_for(tokenizer_file)[1:]:
        path = os.path.join(source_dir, name)
        if os.path.isfile(path):
            found.append(path)
    return found


def copy_tokenizer_files(tokenizer_file: str, directory: str) -> list[str]:
    """Copy the tokenizer file (tokenizer.model or tokenizer.json) and the HF files beside it into
    `directory`.

    When a sentencepiece source lacks tokenizer_config.json, one with LLaMA-2's conventions (BOS on,
    EOS off) is written, which is also what the project's tokenizer assumes without one, so
    transformers and the project agree on the exported tokenizer. A tokenizer.json needs none.
    """
    source_dir = os.path.dirname(os.path.abspath(tokenizer_file))
    os.makedirs(directory, exist_ok=True)
    copied = []
    names = _names_for(tokenizer_file)
    for name in names:
        source = os.path.join(source_dir, name)
        if name == names[0]:
            source = os.path.abspath(tokenizer_file)
        if not os.path.isfile(source):
            continue
        target = os.path.join(directory, name)
        if os.path.abspath(source) != os.path.abspath(target):
            tmp = target + ".tmp"
            shutil.copyfile(source, tmp)
            os.replace(tmp, target)
        copied.append(target)
    if names is TOKENIZER_FILES and not os.path.isfile(os.path.join(directory, TOKENIZER_CONFIG)):
        copied.append(write_llama_tokenizer_config(directory))
    return copied


def read_chat_template(directory: str) -> str | None:
    """The Jinja chat template a model directory carries: chat_template.jinja, else the
    `chat_template` of chat_template.json or tokenizer_config.json (where transformers keeps it)."""
    jinja = os.path.join(directory, CHAT_TEMPLATE_FILE)
    if os.path.isfile(jinja):
        with open(jinja, encoding="utf-8") as f:
            return f.read()
    for name in ("chat_template.json", TOKENIZER_CONFIG):
        value = read_json(os.path.join(directory, name)).get("chat_template")
        if isinstance(value, str) and value:
            return value
    return None


def write_chat_template(directory: str, chat_template: str) -> str:
    """`directory`/chat_template.jinja (through a temporary sibling); returns its path."""
    path = os.path.join(directory, CHAT_TEMPLATE_FILE)
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        f.write(chat_template)
    os.replace(path + ".tmp", path)
    return path
