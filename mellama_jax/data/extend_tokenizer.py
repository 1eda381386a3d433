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

Grow a model to the new vocabulary with `python -m mellama_jax.cli.convert resize_vocab`.
"""
from __future__ import annotations

import os
from typing import Iterable, Iterator

import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2 as sp_pb2

__all__ = ["extend_proto", "fertility", "fertility_report", "format_report", "read_texts", "default_eval_sets",
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


# ------------------------------------------------------------------------------------------------
# Fertility
# ------------------------------------------------------------------------------------------------
def fertility(processor: spm.SentencePieceProcessor, texts: list[str]) -> dict:
    """Tokens per whitespace word and per character (no BOS/EOS), over all `texts`."""
    tokens = sum(len(ids) for ids in processor.Encode(texts, out_type=int)) if texts else 0
    words = sum(len(t.split()) for t in texts)
    chars = sum(len(t) for t in texts)
    return {"documents": len(texts), "words": words, "characters": chars, "tokens": tokens,
            "tokens_per_word": tokens / max(words, 1), "tokens_per_char": tokens / max(chars, 1)}


def fertility_report(base_file: str, extended_file: str, texts: dict[str, list[str]]) -> dict:
    """Per text set: base and extended fertility and the relative change of tokens per word."""
    base, ext = spm.SentencePieceProcessor(model_file=base_file), spm.SentencePieceProcessor(model_file=extended_file)
    report = {"base_tokenizer": base_file, "extended_tokenizer": extended_file,
              "base_vocab": base.GetPieceSize(), "extended_vocab": ext.GetPieceSize(), "sets": {}}
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
