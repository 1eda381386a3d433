"""Growing a model's vocabulary to an extended tokenizer (`python -m mellama_jax.cli.convert resize_vocab`).

Row i < base vocab keeps its weights (the extended tokenizer keeps every base id). A new piece's
row, in the embedding and in the untied LM head alike, is the mean of the rows of the pieces the
*base* tokenizer splits that piece's text into, so the model starts by reading (and predicting) the
new piece the way it read its parts; pieces the base cannot split without <unk>, and the padding rows
up to the sharding multiple, get the mean of all base rows.
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np
import sentencepiece as spm

from mellama_jax.tokenizer import TOKENIZER_JSON, read_model_proto
from mellama_jax.tokenizer.bpe_tokenizer import bpe_row_sources, check_bpe_extends

__all__ = ["check_extends", "new_row_sources", "resize_params", "round_up"]


def round_up(n: int, multiple: int) -> int:
    return -(-int(n) // max(int(multiple), 1)) * max(int(multiple), 1)


def check_extends(base_file: str, extended_file: str) -> tuple[int, int]:
    """(base size, extended size); error naming both files unless every base piece keeps its id."""
    if os.path.basename(extended_file) == TOKENIZER_JSON:
        return check_bpe_extends(base_file, extended_file)
    base, ext = read_model_proto(base_file), read_model_proto(extended_file)
    if len(ext.pieces) < len(base.pieces):
        raise ValueError(f"{extended_file} has {len(ext.pieces)} pieces, fewer than the base {base_file} "
                         f"({len(base.pieces)}): not an extension of it")
    for i, (a, b) in enumerate(zip(base.pieces, ext.pieces)):
        if a.piece != b.piece or a.type != b.type:
            raise ValueError(f"{extended_file}: id {i} is {b.piece!r} but {a.piece!r} in the base {base_file}; "
                             "an extended tokenizer must keep every base id")
    return len(base.pieces), len(ext.pieces)


def _surface_encoder(model_file: str) -> spm.SentencePieceProcessor:
    """The base model without the dummy "▁" prefix, so a piece's text is split as it stands
    ("▁metformin" -> text " metformin"; "formin" -> "formin")."""
    proto = read_model_proto(model_file)
    proto.normalizer_spec.add_dummy_prefix = False
    processor = spm.SentencePieceProcessor()
    processor.LoadFromSerializedProto(proto.SerializeToString())
    return processor


def new_row_sources(base_file: str, extended_file: str) -> dict[int, list[int]]:
    """For each new id of the extended tokenizer: the base ids whose rows its row averages
    ([] = no clean split; the mean of all base rows is used)."""
    if os.path.basename(extended_file) == TOKENIZER_JSON:
        return bpe_row_sources(base_file, extended_file)
    n_base, _ = check_extends(base_file, extended_file)
    ext = read_model_proto(extended_file)
    encoder = _surface_encoder(base_file)
    unk = encoder.unk_id()
    sources = {}
    for i in range(n_base, len(ext.pieces)):
        text = ext.pieces[i].piece.replace("\u2581", " ")
        ids = encoder.EncodeAsIds(text)
        sources[i] = [] if (not ids or unk in ids) else [int(t) for t in ids]
    return sources


def _grow(table: np.ndarray, axis: int, n_base: int, new_size: int, sources: dict[int, list[int]]) -> np.ndarray:
    """`table` with rows (along `axis`) [n_base, new_size) filled per `sources`, in float32 math."""
    base = np.moveaxis(np.asarray(table), axis, 0)[:n_base].astype(np.float32)
    fallback = base.mean(axis=0)
    extra = np.empty((new_size - n_base,) + base.shape[1:], np.float32)
    for row in range(n_base, new_size):
        ids = sources.get(row) or []
        extra[row - n_base] = base[ids].mean(axis=0) if ids else fallback
    grown = np.concatenate([base, extra], axis=0).astype(np.asarray(table).dtype)
    return np.moveaxis(grown, 0, axis)


def resize_params(params: Any, n_base: int, new_size: int, sources: dict[int, list[int]],
                  tied: bool) -> Any:
    """The param pytree with embedding rows (and LM-head columns) [n_base, new_size) initialised."""
    out = dict(params)
    out["embed_tokens"] = {"embedding": _grow(params["embed_tokens"]["embedding"], 0, n_base, new_size, sources)}
    if not tied:
        out["lm_head"] = {"kernel": _grow(params["lm_head"]["kernel"], 1, n_base, new_size, sources)}
    return out
