"""A LLaMA-style sentencepiece tokenizer with the BOS/EOS conventions of the checkpoint it ships with.

The ids match what `transformers`' LlamaTokenizer produces for the same `tokenizer.model` (the slow,
sentencepiece-based legacy tokenizer of LLaMA-2 is sentencepiece itself plus BOS/EOS; the fast one is
converted from it). BOS/EOS defaults come from a `tokenizer_config.json` beside the model when there
is one (LLaMA-2: add_bos_token true, add_eos_token false), else those LLaMA-2 defaults.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Iterable, Sequence

import sentencepiece as spm

__all__ = ["Tokenizer", "load_tokenizer", "file_sha256"]


class Tokenizer:
    """Encode/decode text with a sentencepiece model, LLaMA conventions (<unk>=0, <s>=1, </s>=2)."""

    def __init__(self, model_path: str, *, add_bos: bool | None = None, add_eos: bool | None = None):
        if not os.path.isfile(model_path):
            raise FileNotFoundError(f"tokenizer model not found: {model_path!r} (expected a sentencepiece "
                                    "tokenizer.model file)")
        self.model_path = model_path
        self._sp = spm.SentencePieceProcessor()
        try:
            self._sp.Load(model_path)
        except Exception as e:  # sentencepiece raises a bare OSError/RuntimeError without the path
            raise ValueError(f"{model_path}: not a valid sentencepiece model ({e})") from e
        cfg = _read_tokenizer_config(os.path.join(os.path.dirname(os.path.abspath(model_path)),
                                                  "tokenizer_config.json"))
        self.add_bos = bool(cfg.get("add_bos_token", True)) if add_bos is None else add_bos
        self.add_eos = bool(cfg.get("add_eos_token", False)) if add_eos is None else add_eos

    # --- ids -----------------------------------------------------------------------------------
    @property
    def bos_id(self) -> int:
        return int(self._sp.bos_id())

    @property
    def eos_id(self) -> int:
        return int(self._sp.eos_id())

    @property
    def unk_id(self) -> int:
        return int(self._sp.unk_id())

    @property
    def pad_id(self) -> int:
        """The model's pad id; LLaMA has none (-1 in the model), so 0 (<unk>) is used for padding.

        Padding positions are always masked out (segment_ids == 0, loss_mask == 0), so the value only
        needs to be a valid embedding index.
        """
        pid = int(self._sp.pad_id())
        return pid if pid >= 0 else 0

    @property
    def declared_pad_id(self) -> int:
        """The pad piece the sentencepiece model defines (-1: none, as in LLaMA-2)."""
        return int(self._sp.pad_id())

    @property
    def vocab_size(self) -> int:
        return int(self._sp.GetPieceSize())

    def sha256(self) -> str:
        """Content hash of the model file (used in data cache keys)."""
        return file_sha256(self.model_path)

    # --- encode / decode -------------------------------------------------------------------------
    def encode(self, text: str, bos: bool | None = None, eos: bool | None = None) -> list[int]:
        """Token ids of `text`; bos/eos None -> the tokenizer_config defaults (LLaMA-2: BOS only)."""
        ids = self._sp.EncodeAsIds(text)
        return self._wrap(ids, bos, eos)

    def encode_batch(self, texts: Sequence[str], bos: bool | None = None, eos: bool | None = None,
                     num_threads: int = 0) -> list[list[int]]:
        """Encode many texts at once; sentencepiece runs this in C++ threads without the GIL."""
        out = self._sp.Encode(list(texts), out_type=int, num_threads=num_threads)
        return [self._wrap(ids, bos, eos) for ids in out]

    def _wrap(self, ids: list[int], bos: bool | None, eos: bool | None) -> list[int]:
        bos = self.add_bos if bos is None else bos
        eos = self.add_eos if eos is None else eos
        if bos:
            ids = [self.bos_id] + ids
        if eos:
            ids = ids + [self.eos_id]
        return ids

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        """Text of `ids`; BOS/EOS/pad are dropped (as LlamaTokenizer.decode(skip_special_tokens=True))."""
        ids = [int(i) for i in ids]
        if skip_special_tokens:
            special = {self.bos_id, self.eos_id, int(self._sp.pad_id())}
            ids = [i for i in ids if i not in special]
        return self._sp.DecodeIds(ids)

    def id_to_piece(self, i: int) -> str:
        return self._sp.IdToPiece(int(i))

    def __repr__(self) -> str:
        return (f"Tokenizer({self.model_path!r}, vocab_size={self.vocab_size}, add_bos={self.add_bos}, "
                f"add_eos={self.add_eos})")


def file_sha256(path: str) -> str:
    """Content hash of a tokenizer file (cache keys, provenance, same-tokenizer checks)."""
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _read_tokenizer_config(path: str) -> dict:
    if not os.path.isfile(path):
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            cfg = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: invalid JSON at line {e.lineno}: {e.msg}") from e
    if not isinstance(cfg, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(cfg).__name__}")
    return cfg


def load_tokenizer(path: str) -> Tokenizer:
    """Load from a `tokenizer.model` file or a directory that holds one."""
    if os.path.isdir(path):
        path = os.path.join(path, "tokenizer.model")
    return Tokenizer(path)
