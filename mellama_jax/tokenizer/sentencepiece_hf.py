"""Hugging Face tokenizer files that encode exactly like SentencePieceTokenizer.

transformers 5 rebuilds a `LlamaTokenizer` from tokenizer.model with a Metaspace pre-tokenizer that
does not prepend "▁" to text already starting with a space, so its ids differ from sentencepiece's
(and from LLaMA-2's own tokenizer.json) there. The export therefore writes LLaMA-2's legacy
tokenizer.json layout (normalizer: prepend "▁", spaces -> "▁"; BPE with byte fallback; BOS/EOS by a
template post-processor per tokenizer_config.json) and names `PreTrainedTokenizerFast` as the class,
which transformers 4 and 5 load from tokenizer.json as written. The JSON is assembled here from the
sentencepiece proto (vocab in id order, merges ranked by the merged piece's score, as transformers'
own converter does) so that writing it needs neither transformers nor tokenizers.
"""
from __future__ import annotations

import json
import os
import shutil

from sentencepiece import sentencepiece_model_pb2 as sp_pb2

from mellama_jax.tokenizer.files import llama_tokenizer_config

__all__ = ["write_sentencepiece_hf_files", "tokenizer_json", "read_model_proto", "UnsupportedTokenizerError"]

_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _UNUSED, _BYTE = 1, 2, 3, 4, 5, 6


class UnsupportedTokenizerError(ValueError):
    """A sentencepiece model whose behaviour this tokenizer.json layout cannot reproduce."""


def read_model_proto(path: str) -> sp_pb2.ModelProto:
    """The sentencepiece model file as its protobuf (pieces, trainer and normalizer specs)."""
    proto = sp_pb2.ModelProto()
    with open(path, "rb") as f:
        try:
            proto.ParseFromString(f.read())
        except Exception as err:  # protobuf's DecodeError names no file
            raise ValueError(f"{path}: not a sentencepiece model ({err})") from err
    return proto


def _merges(proto: sp_pb2.ModelProto) -> list[list[str]]:
    ids = {p.piece: i for i, p in enumerate(proto.pieces)}
    ranked = []
    for i, p in enumerate(proto.pieces):
        if p.type != _NORMAL or len(p.piece) < 2:  # user-defined symbols are whole, never merged
            continue
        for cut in range(1, len(p.piece)):
            left, right = p.piece[:cut], p.piece[cut:]
            if left in ids and right in ids:
                ranked.append((-p.score, i, ids[left], ids[right], left, right))
    ranked.sort()
    return [[left, right] for *_, left, right in ranked]


def tokenizer_json(proto: sp_pb2.ModelProto, add_bos: bool = True, add_eos: bool = False) -> dict:
    """LLaMA-2's tokenizer.json layout for a sentencepiece BPE model."""
    if proto.trainer_spec.model_type != sp_pb2.TrainerSpec.BPE:
        raise UnsupportedTokenizerError("only sentencepiece BPE models (LLaMA's) can be written as a tokenizer.json")
    if proto.normalizer_spec.name not in ("identity", "") or proto.normalizer_spec.remove_extra_whitespaces:
        raise UnsupportedTokenizerError(f"normalizer {proto.normalizer_spec.name!r} (remove_extra_whitespaces="
                         f"{proto.normalizer_spec.remove_extra_whitespaces}) has no tokenizer.json equivalent here")
    pieces = [p.piece for p in proto.pieces]
    # Control/unknown pieces are special tokens; user-defined symbols are matched whole before BPE, as
    # sentencepiece does, but are ordinary text.
    added = [{"id": i, "content": p.piece, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": p.type != _USER_DEFINED}
             for i, p in enumerate(proto.pieces) if p.type in (_UNKNOWN, _CONTROL, _USER_DEFINED)]
    ts = proto.trainer_spec
    bos, eos = pieces[ts.bos_id] if ts.bos_id >= 0 else None, pieces[ts.eos_id] if ts.eos_id >= 0 else None
    special_tokens = {}
    if add_bos and bos:
        special_tokens[bos] = {"id": bos, "ids": [ts.bos_id], "tokens": [bos]}
    if add_eos and eos:
        special_tokens[eos] = {"id": eos, "ids": [ts.eos_id], "tokens": [eos]}

    def template(sequence: str, type_id: int) -> list[dict]:
        items = [{"SpecialToken": {"id": bos, "type_id": type_id}}] if add_bos and bos else []
        items.append({"Sequence": {"id": sequence, "type_id": type_id}})
        if add_eos and eos:
            items.append({"SpecialToken": {"id": eos, "type_id": type_id}})
        return items

    single, pair = template("A", 0), template("A", 0) + template("B", 1)
    normalizers = []
    if proto.normalizer_spec.add_dummy_prefix:
        normalizers.append({"type": "Prepend", "prepend": "\u2581"})
    normalizers.append({"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"})
    decoders = [{"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "},
                {"type": "ByteFallback"}, {"type": "Fuse"}]
    if proto.normalizer_spec.add_dummy_prefix:
        decoders.append({"type": "Strip", "content": " ", "start": 1, "stop": 0})
    return {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
        "normalizer": {"type": "Sequence", "normalizers": normalizers},
        "pre_tokenizer": None,
        "post_processor": {"type": "TemplateProcessing", "single": single, "pair": pair,
                           "special_tokens": special_tokens},
        "decoder": {"type": "Sequence", "decoders": decoders},
        "model": {"type": "BPE", "dropout": None, "unk_token": pieces[ts.unk_id] if ts.unk_id >= 0 else None,
                  "continuing_subword_prefix": None, "end_of_word_suffix": None, "fuse_unk": True,
                  "byte_fallback": bool(ts.byte_fallback), "ignore_merges": False,
                  "vocab": {piece: i for i, piece in enumerate(pieces)}, "merges": _merges(proto)},
    }


def write_sentencepiece_hf_files(tokenizer_model: str, out_dir: str, tokenizer_config: dict | None = None) -> list[str]:
    """tokenizer.model + tokenizer.json + tokenizer_config.json + special_tokens_map.json in `out_dir`.

    `tokenizer_config`: the source's tokenizer_config.json (add_bos_token / add_eos_token /
    chat_template / model_max_length are kept); LLaMA-2's conventions when None.
    """
    proto = read_model_proto(tokenizer_model)
    source = dict(tokenizer_config or {})
    add_bos = bool(source.get("add_bos_token", True))
    add_eos = bool(source.get("add_eos_token", False))
    ts = proto.trainer_spec
    name = lambda i: proto.pieces[i].piece if i >= 0 else None  # noqa: E731
    config = llama_tokenizer_config(**{k: v for k, v in source.items() if k not in ("tokenizer_file",)})
    config.update(tokenizer_class="PreTrainedTokenizerFast", add_bos_token=add_bos, add_eos_token=add_eos,
                  bos_token=name(ts.bos_id), eos_token=name(ts.eos_id), unk_token=name(ts.unk_id),
                  pad_token=name(ts.pad_id) if ts.pad_id >= 0 else source.get("pad_token"))
    config.pop("added_tokens_decoder", None)  # rebuilt by transformers from tokenizer.json
    os.makedirs(out_dir, exist_ok=True)
    target = os.path.join(out_dir, "tokenizer.model")
    if os.path.abspath(tokenizer_model) != os.path.abspath(target):
        shutil.copyfile(tokenizer_model, target)
    special_map = {k: config[k] for k in ("bos_token", "eos_token", "unk_token", "pad_token") if config.get(k)}
    written = [target]
    for file_name, value in (("tokenizer.json", tokenizer_json(proto, add_bos, add_eos)),
                             ("tokenizer_config.json", config), ("special_tokens_map.json", special_map)):
        path = os.path.join(out_dir, file_name)
        with open(path + ".tmp", "w", encoding="utf-8") as f:
            json.dump(value, f, ensure_ascii=False, indent=None if file_name == "tokenizer.json" else 2)
        os.replace(path + ".tmp", path)
        written.append(path)
    return written
