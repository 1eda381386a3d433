"""Extend a LLaMA tokenizer with biomedical pieces, keeping every existing id.

The command: `python -m mellama_jax.cli.extend_tokenizer` (it resolves the base tokenizer and writes the files).

1. A domain sentencepiece model is trained on the corpus (LLaMA's trainer settings, BPE), leaving
   out the held-out documents (`--heldout_fraction`, chosen by a hash of the document id).
2. Its pieces, in its merge order, are appended to the base ModelProto when the base lacks them and
   the current tokenizer splits their text into exactly two pieces (so BPE can form them). Each new
   piece scores below every existing one: sentencepiece's BPE applies merges best-score first, so all
   base merges happen exactly as before and the new ones only join what is left. Text that contains
   no new piece therefore encodes to the same ids as before, and no text gets more tokens.
3. The extended tokenizer.model is written with HF tokenizer files (tokenizer.json matching our ids,
   tokenizer_config.json, special_tokens_map.json) and `fertility.json`: tokens per word and per
   character, base vs extended, on held-out biomedical, clinical and general text.

A Hugging Face BPE `tokenizer.json` (LLaMA-3, Qwen2) is extended the same way (`extend_bpe_spec`):
a domain BPE is trained with the base's own normalizer and pre-tokenizer, and each of its tokens that
the base BPE model splits into exactly two tokens is appended as a new vocabulary entry plus one merge
*at the end of the merge list*. BPE applies merges by rank, so every base merge still happens first
and a new merge only joins what is left: text without a new token encodes to the same ids as before.
New tokens are deliberately not "added tokens": those are matched anywhere in the raw text before
pre-tokenization (mid-word too) and would change how the text around them splits. New ids follow
every existing id (the added tokens, e.g. LLaMA-3's 256 specials, are also entered in the BPE
vocabulary at their own ids, which the tokenizers library requires to keep them where they are).

Grow a model to the new vocabulary with `python -m mellama_jax.cli.convert resize_vocab`.
"""
from __future__ import annotations

import copy
import json
import os
from typing import Any, Iterable, Iterator, Sequence

import sentencepiece as spm
import tokenizers
from sentencepiece import sentencepiece_model_pb2 as sp_pb2
from tokenizers import models, pre_tokenizers, trainers

from mellama_jax.tokenizer import TOKENIZER_JSON, load_tokenizer

__all__ = ["extend_proto", "extend_bpe_spec", "train_domain_bpe", "fertility", "fertility_report", "format_report", "read_texts", "default_eval_sets",
           "train_domain_model"]

_NORMAL = sp_pb2.ModelProto.SentencePiece.NORMAL


def _processor(proto: sp_pb2.ModelProto, dummy_prefix: bool = True) -> spm.SentencePieceProcessor:
    if not dummy_prefix:
        proto = _copy(proto)
        proto.normalizer_spec.add_dummy_prefix = False
    processor = spm.SentencePieceProcessor()
    processor.LoadFromSerializedProto(proto.SerializeToString())
    return processor


def _copy(proto: sp_pb2.ModelProto) -> sp_pb2.ModelProto:
    out = sp_pb2.ModelProto()
    out.CopyFrom(proto)
    return out


def extend_proto(base: sp_pb2.ModelProto, domain: sp_pb2.ModelProto, add: int,
                 max_passes: int = 4, chunk: int = 256) -> tuple[sp_pb2.ModelProto, list[str]]:
    """`base` with up to `add` of `domain`'s pieces appended (see the module docstring)."""
    if base.trainer_spec.model_type != sp_pb2.TrainerSpec.BPE:
        raise ValueError("only BPE base tokenizers (LLaMA's) can be extended this way")
    out = _copy(base)
    present = {p.piece for p in out.pieces}
    score = min((p.score for p in out.pieces), default=0.0)
    candidates = [p.piece for p in domain.pieces if p.type == _NORMAL and p.piece not in present
                  and p.piece.strip("\u2581")]
    added: list[str] = []
    # Characters first: sentencepiece merges an out-of-vocabulary character like any other, but a
    # tokenizer.json BPE only merges symbols in its vocab (it byte-falls-back the rest), so a piece
    # with a character the vocab lacks would encode differently in transformers.
    for piece in [c for c in candidates if len(c) == 1][:add]:
        score -= 1.0
        new = out.pieces.add()
        new.piece, new.score, new.type = piece, score, _NORMAL
        added.append(piece)
        present.add(piece)
    candidates = [c for c in candidates if len(c) > 1 and all(ch in present for ch in c)]
    # Adding a piece never changes how a string that segments into two *other* pieces segments (the
    # new merge has the lowest priority and can only join two adjacent symbols into itself), so one
    # checker serves a whole chunk of candidates and is rebuilt per chunk, not per piece.
    for _ in range(max_passes):  # a piece whose parts were added later gets another chance
        progress, waiting = False, []
        for start in range(0, len(candidates), chunk):
            if len(added) >= add:
                break
            checker = _processor(out, dummy_prefix=False)
            for piece in candidates[start:start + chunk]:
                if len(added) >= add:
                    break
                if len(checker.EncodeAsPieces(piece.replace("\u2581", " "))) != 2:
                    waiting.append(piece)
                    continue
                score -= 1.0
                new = out.pieces.add()
                new.piece, new.score, new.type = piece, score, _NORMAL
                added.append(piece)
                progress = True
        candidates = waiting
        if not progress or len(added) >= add:
            break
    return out, added


def train_domain_bpe(base_spec: dict, texts: Iterable[str], vocab_size: int) -> list[str]:
    """The tokens of a BPE trained on the domain corpus with the base's normalizer and pre-tokenizer,
    in merge order (the candidates `extend_bpe_spec` appends)."""
    spec = copy.deepcopy(base_spec)
    spec["added_tokens"], spec["post_processor"] = [], None
    tok = tokenizers.Tokenizer.from_str(json.dumps(spec))
    byte_level = "ByteLevel" in json.dumps(base_spec.get("pre_tokenizer"))
    tok.model = models.BPE(byte_fallback=bool(base_spec["model"].get("byte_fallback")))
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False, special_tokens=[],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet() if byte_level else [])
    tok.train_from_iterator(list(texts), trainer)
    merges = json.loads(tok.to_str())["model"]["merges"]
    return ["".join(m.split(" ", 1) if isinstance(m, str) else m) for m in merges]


def extend_bpe_spec(base_spec: dict, candidates: Sequence[str], add: int, max_passes: int = 4,
                    chunk: int = 256) -> tuple[dict, list[str]]:
    """`base_spec` (a tokenizer.json object) with up to `add` of `candidates` appended as vocabulary
    entries + last-rank merges (see the module docstring); returns (spec, added tokens)."""
    model = base_spec.get("model") or {}
    if model.get("type") != "BPE":
        raise ValueError(f"only BPE tokenizer.json files can be extended this way, not {model.get('type')!r}")
    if model.get("dropout") or model.get("continuing_subword_prefix") or model.get("end_of_word_suffix"):
        raise ValueError("BPE dropout / subword prefixes or suffixes are not supported for extension")
    out = copy.deepcopy(base_spec)
    vocab, merges = out["model"]["vocab"], out["model"]["merges"]
    as_strings = bool(merges) and isinstance(merges[0], str)
    for t in out.get("added_tokens", []):  # keep the added tokens' ids (see the module docstring)
        vocab.setdefault(t["content"], int(t["id"]))
    next_id = max(vocab.values()) + 1
    present = set(vocab)
    pending = [c for c in dict.fromkeys(candidates) if c not in present and len(c) > 1]
    added: list[str] = []
    for _ in range(max_passes):  # a token whose parts were added later gets another chance
        progress, waiting = False, []
        for start in range(0, len(pending), chunk):
            if len(added) >= add:
                break
            # A new last-rank merge cannot change how a token that splits into two *other* tokens
            # splits, so one checker serves a chunk.
            checker = tokenizers.Tokenizer.from_str(json.dumps(out)).model
            for token in pending[start:start + chunk]:
                if len(added) >= add:
                    break
                pieces = [p.value for p in checker.tokenize(token)]
                if len(pieces) != 2 or "".join(pieces) != token:
                    waiting.append(token)
                    continue
                vocab[token] = next_id
                next_id += 1
                merges.append(" ".join(pieces) if as_strings else pieces)
                added.append(token)
                progress = True
        pending = waiting
        if not progress or len(added) >= add:
            break
    return out, added


# ------------------------------------------------------------------------------------------------
# Fertility
# ------------------------------------------------------------------------------------------------
def _encode_all(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    if isinstance(tokenizer, spm.SentencePieceProcessor):
        return tokenizer.Encode(texts, out_type=int)
    return tokenizer.encode_batch(texts, bos=False, eos=False)


def fertility(processor: Any, texts: list[str]) -> dict:
    """Tokens per whitespace word and per character (no BOS/EOS), over all `texts`; `processor` is a
    SentencePieceProcessor or a mellama_jax Tokenizer."""
    tokens = sum(len(ids) for ids in _encode_all(processor, texts)) if texts else 0
    words = sum(len(t.split()) for t in texts)
    chars = sum(len(t) for t in texts)
    return {"documents": len(texts), "words": words, "characters": chars, "tokens": tokens,
            "tokens_per_word": tokens / max(words, 1), "tokens_per_char": tokens / max(chars, 1)}


def fertility_report(base_file: str, extended_file: str, texts: dict[str, list[str]]) -> dict:
    """Per text set: base and extended fertility and the relative change of tokens per word."""
    if os.path.basename(extended_file) == TOKENIZER_JSON:
        base, ext = load_tokenizer(base_file), load_tokenizer(extended_file)
        sizes = base.vocab_size, ext.vocab_size
    else:
        base, ext = spm.SentencePieceProcessor(model_file=base_file), spm.SentencePieceProcessor(model_file=extended_file)
        sizes = base.GetPieceSize(), ext.GetPieceSize()
    report = {"base_tokenizer": base_file, "extended_tokenizer": extended_file,
              "base_vocab": sizes[0], "extended_vocab": sizes[1], "sets": {}}
    for name, docs in texts.items():
        before, after = fertility(base, docs), fertility(ext, docs)
        change = (after["tokens_per_word"] - before["tokens_per_word"]) / max(before["tokens_per_word"], 1e-12)
        report["sets"][name] = {"base": before, "extended": after, "tokens_per_word_change": change}
    return report


def format_report(report: dict) -> str:
    lines = [f"{'text':<12} {'docs':>5} {'words':>8}  {'tok/word base':>13} {'extended':>9} {'change':>8}"
             f"  {'tok/char base':>13} {'extended':>9}"]
    for name, r in report["sets"].items():
        b, e = r["base"], r["extended"]
        lines.append(f"{name:<12} {b['documents']:>5} {b['words']:>8}  {b['tokens_per_word']:>13.4f} "
                     f"{e['tokens_per_word']:>9.4f} {100 * r['tokens_per_word_change']:>+7.2f}%  "
                     f"{b['tokens_per_char']:>13.4f} {e['tokens_per_char']:>9.4f}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# Corpus reading
# ------------------------------------------------------------------------------------------------
def read_texts(name: str, globs: Iterable[str], fmt: str = "auto", *, heldout_fraction: float = 0.0,
               split: str = "all", max_docs: int = 0, **source_keys) -> Iterator[str]:
    """Document texts of files in any reader format; split "train"/"heldout" by a hash of the id."""
    from mellama_jax.data.config import source_config
    from mellama_jax.data.sources.readers import iter_documents
    from mellama_jax.data.sources.report import BadInputReport
    from mellama_jax.data.sources.splits import is_eval

    src = source_config(list(globs), fmt, eval_fraction=heldout_fraction, **source_keys)
    report, n = BadInputReport(name), 0
    for doc in iter_documents(name, src, report):
        held = heldout_fraction > 0 and is_eval(doc["id"], heldout_fraction, name)
        if split == "all" or (split == "heldout") == held:
            yield doc["text"]
            n += 1
            if max_docs and n >= max_docs:
                break


def default_eval_sets() -> dict[str, tuple[list[str], str, dict]]:
    """Clinical and general text from the bundled samples (biomedical: the corpus's held-out docs)."""
    from mellama_jax.data.config import SAMPLES_DIR

    return {"clinical": ([os.path.join(SAMPLES_DIR, "clinical", "NOTEEVENTS_sample.csv")], "mimic_csv",
                         {"scrub_inline": True}),
            "general": ([os.path.join(SAMPLES_DIR, "general", "*.jsonl")], "jsonl", {})}


def train_domain_model(texts: Iterable[str], vocab_size: int, num_threads: int = 2) -> sp_pb2.ModelProto:
    """A LLaMA-style BPE sentencepiece model of the domain corpus (vocab capped by what it supports)."""
    import io

    from mellama_jax.data.train_tokenizer import LLAMA_TRAINER_SPEC

    def sentences() -> Iterator[str]:
        for text in texts:
            for line in text.split("\n"):
                if line.strip():
                    yield line[:16384]

    buffer = io.BytesIO()
    spec = dict(LLAMA_TRAINER_SPEC, hard_vocab_limit=False)
    spm.SentencePieceTrainer.Train(sentence_iterator=sentences(), model_writer=buffer, vocab_size=vocab_size,
                                   max_sentence_length=16384, input_sentence_size=2_000_000,
                                   shuffle_input_sentence=True, num_threads=num_threads, minloglevel=2, **spec)
    proto = sp_pb2.ModelProto()
    proto.ParseFromString(buffer.getvalue())
    return proto
