"""A LLaMA-style sentencepiece tokenizer with the BOS/EOS conventions of the checkpoint it ships with.

The ids match what `transformers`' LlamaTokenizer produces for the same `tokenizer.model` (the slow,
sentencepiece-based legacy tokenizer of LLaMA-2 is sentencepiece itself plus BOS/EOS; the fast one is
converted from it). BOS/EOS defaults come from a `tokenizer_config.json` beside the model when there
is one (LLaMA-2: add_bos_token true, add_eos_token false), else those LLaMA-2 defaults.
"""
from __future__ import annotations

import functools
import os
import re
from typing import Iterable, Sequence

import sentencepiece as spm

from mellama_jax.tokenizer.files import TOKENIZER_CONFIG, file_sha256, read_chat_template, read_json, tokenizer_files
from mellama_jax.tokenizer.sentencepiece_hf import read_model_proto, write_sentencepiece_hf_files

__all__ = ["SentencePieceTokenizer"]

_BYTE_PIECE = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


class SentencePieceTokenizer:
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
        cfg = read_json(os.path.join(os.path.dirname(os.path.abspath(model_path)), TOKENIZER_CONFIG))
        self.add_bos = bool(cfg.get("add_bos_token", True)) if add_bos is None else add_bos
        self.add_eos = bool(cfg.get("add_eos_token", False)) if add_eos is None else add_eos
        # transformers' `legacy` (default true): whether text after a special token gets the dummy "▁".
        legacy = cfg.get("legacy", True)
        self.legacy = True if legacy is None else bool(legacy)
        self.chat_template = read_chat_template(os.path.dirname(os.path.abspath(model_path)))

    # --- ids -----------------------------------------------------------------------------------
    @property
    def bos_id(self) -> int:
        return int(self._sp.bos_id())

    @property
    def eos_id(self) -> int:
        return int(self._sp.eos_id())

    @property
    def eos_ids(self) -> list[int]:
        """The ids generation stops at (sentencepiece LLaMA: </s> only)."""
        return [self.eos_id]

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

    @functools.cached_property
    def special_tokens(self) -> dict[str, int]:
        """Piece -> id of the control and unknown pieces (<unk>, <s>, </s>): never produced from text."""
        return {self._sp.IdToPiece(i): i for i in range(self.vocab_size)
                if self._sp.IsControl(i) or self._sp.IsUnknown(i)}

    # --- files ---------------------------------------------------------------------------------
    @property
    def files(self) -> list[str]:
        """The model file and the Hugging Face tokenizer files beside it."""
        return tokenizer_files(self.model_path)

    def sha256(self) -> str:
        """Content hash of the model file (used in data cache keys)."""
        return file_sha256(self.model_path)

    fingerprint = sha256

    def write_hf_files(self, directory: str, tokenizer_config: dict | None = None) -> list[str]:
        """tokenizer.model, tokenizer.json, tokenizer_config.json and special_tokens_map.json that
        transformers loads with these ids; `tokenizer_config` defaults to the one beside the model."""
        if tokenizer_config is None:
            tokenizer_config = read_json(os.path.join(os.path.dirname(os.path.abspath(self.model_path)),
                                                      TOKENIZER_CONFIG))
        return write_sentencepiece_hf_files(self.model_path, directory, tokenizer_config)

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

    def encode_chunk(self, text: str, at_start: bool) -> list[tuple[int, int, int]]:
        """(id, begin byte, end byte) of each piece of a text chunk that sits between special tokens.

        As Hugging Face splits text at special tokens: every chunk gets sentencepiece's dummy "▁"
        prefix when `legacy` is true (LLaMA-2's reference behaviour), else only the chunk at the very
        start (`at_start`). Offsets index the chunk's UTF-8 bytes.
        """
        sp = self._sp if (self.legacy or at_start) else self._sp_without_prefix
        proto = sp.encode(text, return_type="proto")
        return [(int(p.id), int(p.begin), int(p.end)) for p in proto.pieces]

    @functools.cached_property
    def _sp_without_prefix(self) -> spm.SentencePieceProcessor:
        proto = read_model_proto(self.model_path)
        proto.normalizer_spec.add_dummy_prefix = False
        return spm.SentencePieceProcessor(model_proto=proto.SerializeToString())

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        """Text of `ids`; BOS/EOS/pad are dropped (as LlamaTokenizer.decode(skip_special_tokens=True))."""
        ids = [int(i) for i in ids]
        if skip_special_tokens:
            special = {self.bos_id, self.eos_id, int(self._sp.pad_id())}
            ids = [i for i in ids if i not in special]
        return self._sp.DecodeIds(ids)

    def decode_as_hf(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        """Text of ids as a LLaMA tokenizer.json decodes them (what transformers returns).

        Not sentencepiece's own decode: on a run of byte-fallback pieces that is not valid UTF-8
        (random or weak models emit them) the Hugging Face decoder writes one U+FFFD per byte,
        sentencepiece something else; results compared with HF must not depend on the backend."""
        special = {self.bos_id, self.eos_id, self.unk_id}
        text, run = [], bytearray()

        def flush():
            if run:
                try:
                    text.append(run.decode("utf-8"))
                except UnicodeDecodeError:
                    text.append("\ufffd" * len(run))
                run.clear()

        for t in (int(t) for t in ids):
            if skip_special_tokens and t in special:
                continue
            piece = self.id_to_piece(t)
            byte = _BYTE_PIECE.match(piece)
            if byte:
                run.append(int(byte.group(1), 16))
                continue
            flush()
            text.append(piece.replace("\u2581", " "))
        flush()
        out = "".join(text)
        return out[1:] if out.startswith(" ") and self.add_dummy_prefix else out

    @functools.cached_property
    def add_dummy_prefix(self) -> bool:
        return bool(read_model_proto(self.model_path).normalizer_spec.add_dummy_prefix)

    def id_to_piece(self, i: int) -> str:
        return self._sp.IdToPiece(int(i))

    def __repr__(self) -> str:
        return (f"SentencePieceTokenizer({self.model_path!r}, vocab_size={self.vocab_size}, "
                f"add_bos={self.add_bos}, add_eos={self.add_eos})")
