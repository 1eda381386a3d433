"""The one tokenizer interface every stage codes against, and the factory that picks its backend.

A backend is a class built from one file path; `BACKENDS` maps the file name a model directory holds
it under to the class, in order of preference: sentencepiece (`tokenizer.model`, LLaMA-2) first, so a
LLaMA-2 directory that carries both files keeps its sentencepiece tokenizer, then the Hugging Face
BPE backend (LLaMA-3 / Qwen2 / Mistral `tokenizer.json`, via `tokenizers`).
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from typing import Callable, Iterable, Protocol, Sequence, runtime_checkable

from mellama_jax import fs
from mellama_jax.tokenizer.bpe_tokenizer import BPETokenizer
from mellama_jax.tokenizer.files import companion_names
from mellama_jax.tokenizer.sentencepiece_tokenizer import SentencePieceTokenizer

__all__ = ["Tokenizer", "BACKENDS", "TOKENIZER_FILES_TEXT", "load_tokenizer", "tokenizer_file_in",
           "local_tokenizer_path"]


@runtime_checkable
class Tokenizer(Protocol):
    """What data, SFT, checkpoint, eval and export need from a tokenizer."""

    model_path: str   # the file that defines the vocabulary (tokenizer.model; tokenizer.json for BPE)
    chat_template: str | None  # the Jinja template the tokenizer's directory carries (template `model`)
    add_bos: bool     # encode's defaults, from the checkpoint's tokenizer_config.json
    add_eos: bool

    @property
    def vocab_size(self) -> int: ...
    @property
    def bos_id(self) -> int: ...
    @property
    def eos_id(self) -> int: ...
    @property
    def eos_ids(self) -> list[int]:
        """Every id generation stops at (eos_id first; LLaMA-3 Instruct also <|eom_id|>, <|eot_id|>)."""
    @property
    def unk_id(self) -> int: ...
    @property
    def pad_id(self) -> int:
        """A valid embedding index for padding positions (always masked out)."""
    @property
    def declared_pad_id(self) -> int:
        """The pad token the tokenizer itself defines (-1: none); checked against a model's pad id."""
    @property
    def special_tokens(self) -> dict[str, int]:
        """Text -> id of the special tokens (never produced by encoding plain text)."""
    @property
    def files(self) -> list[str]:
        """The files this tokenizer is made of (what travels with a model)."""

    def sha256(self) -> str:
        """Hash of the files that decide the ids (data cache keys, provenance, same-tokenizer checks);
        `fingerprint` is the same method."""
    def fingerprint(self) -> str: ...
    def encode(self, text: str, bos: bool | None = None, eos: bool | None = None) -> list[int]: ...
    def encode_batch(self, texts: Sequence[str], bos: bool | None = None, eos: bool | None = None,
                     num_threads: int = 0) -> list[list[int]]: ...
    def encode_chunk(self, text: str, at_start: bool) -> list[tuple[int, int, int]]:
        """(id, begin byte, end byte) per token of text between special tokens, as HF tokenizes it."""
    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str: ...
    def decode_as_hf(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        """Text exactly as transformers decodes `ids` (lm-eval parity, also for invalid UTF-8 runs)."""
    def id_to_piece(self, i: int) -> str: ...
    def write_hf_files(self, directory: str, tokenizer_config: dict | None = None) -> list[str]:
        """The Hugging Face files that make transformers encode with these ids, into `directory`."""


# File name in a model directory -> backend, most preferred first.
BACKENDS: dict[str, Callable[[str], Tokenizer]] = {
    "tokenizer.model": SentencePieceTokenizer,
    "tokenizer.json": BPETokenizer,
}
# Said where a model directory holds none of them.
TOKENIZER_FILES_TEXT = "tokenizer files (tokenizer.model or tokenizer.json)"


def tokenizer_file_in(directory: str) -> str | None:
    """The file in `directory` a tokenizer loads from (the first of `BACKENDS` present), or None."""
    for name in BACKENDS:
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            return path
    return None


def local_tokenizer_path(path: str) -> str:
    """`path` itself when local; for a gs:// or s3:// URL (a tokenizer file, or a prefix holding one
    of the `BACKENDS` files), the local path of a copy of that file and of the Hugging Face files
    beside it (tokenizer_config.json decides BOS/EOS), so sentencepiece, `tokenizers` and the
    checkpoint code that copies tokenizer files all read a local file.

    Copies live under the temporary directory, keyed by the object's URL and version (ETag or
    generation), so a rewritten tokenizer is fetched again and an unchanged one only once."""
    if not fs.is_url(path):
        return path
    url = path.rstrip("/")
    if fs.isfile(url):
        file_url, listing = url, fs.listdir(fs.dirname(url))
    else:
        listing = fs.listdir(url) if fs.isdir(url) else []
        name = next((n for n in BACKENDS if n in listing), None)
        if name is None:
            raise FileNotFoundError(f"{path}: no {TOKENIZER_FILES_TEXT} under this prefix")
        file_url = fs.join(url, name)
    version = hashlib.sha256(repr((file_url, fs.stat_key(file_url))).encode()).hexdigest()[:16]
    directory = os.path.join(tempfile.gettempdir(), "mellama-tokenizers", version)
    local = os.path.join(directory, fs.basename(file_url))
    if not os.path.isfile(local):
        for name in companion_names(fs.basename(file_url)):
            if name in listing:
                fs.get_file(fs.join(fs.dirname(file_url), name), os.path.join(directory, name))
        fs.get_file(file_url, local)  # last: its presence says the copy is complete
    return local


def load_tokenizer(path: str) -> Tokenizer:
    """The tokenizer of a file, or of a directory that holds one of the `BACKENDS` files; either may
    be a gs:// or s3:// URL (read from a local copy, `local_tokenizer_path`).

    A file whose name is not in `BACKENDS` is read as a sentencepiece model (trainers name them
    freely, e.g. bio.model); a directory without any is reported as missing its tokenizer files.
    """
    path = local_tokenizer_path(path)
    if os.path.isdir(path):
        found = tokenizer_file_in(path)
        if found is None:
            raise FileNotFoundError(f"{path}: no {TOKENIZER_FILES_TEXT} in this directory")
        path = found
    return BACKENDS.get(os.path.basename(path), SentencePieceTokenizer)(path)
