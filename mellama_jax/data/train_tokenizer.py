"""Train a LLaMA-style sentencepiece tokenizer (for tiny experiments) from configured corpora or files.

LLaMA's trainer settings are kept: BPE, byte_fallback, split_digits, identity normalization (no
NFKC), a dummy prefix, whitespace kept as is, <unk>=0 <s>=1 </s>=2 and no pad piece. A
`tokenizer_config.json` with LLaMA-2's BOS/EOS defaults is written beside the model.

The command: `python -m mellama_jax.cli.train_tokenizer`.
"""
from __future__ import annotations

import os
from typing import Iterable, Iterator

import sentencepiece as spm

from mellama_jax.tokenizer import write_llama_tokenizer_config

__all__ = ["train_tokenizer", "LLAMA_TRAINER_SPEC", "texts_from_data_config"]

# The fields of LLaMA-2's tokenizer.model trainer_spec that shape the ids (vocab_size aside).
LLAMA_TRAINER_SPEC = dict(
    model_type="bpe",
    byte_fallback=True,
    split_digits=True,
    normalization_rule_name="identity",
    add_dummy_prefix=True,
    remove_extra_whitespaces=False,
    allow_whitespace_only_pieces=True,
    split_by_unicode_script=True,
    split_by_whitespace=True,
    split_by_number=True,
    max_sentencepiece_length=16,
    character_coverage=0.99995,
    unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
    unk_surface=" \u2047 ",
    vocabulary_output_piece_score=True,
    hard_vocab_limit=True,
)


def train_tokenizer(texts: Iterable[str], out_dir: str, vocab_size: int = 4000, *,
                    max_sentence_length: int = 16384, input_sentence_size: int = 2_000_000,
                    seed_sentencepiece_size: int = 1_000_000, num_threads: int = 2) -> str:
    """Train on `texts` (each split into lines, as sentencepiece does); returns the model path."""
    os.makedirs(out_dir, exist_ok=True)
    prefix = os.path.join(out_dir, "tokenizer")

    def sentences() -> Iterator[str]:
        for t in texts:
            for line in t.split("\n"):
                if line.strip():
                    yield line[:max_sentence_length]

    spm.SentencePieceTrainer.Train(
        sentence_iterator=sentences(), model_prefix=prefix, vocab_size=vocab_size,
        max_sentence_length=max_sentence_length, input_sentence_size=input_sentence_size,
        shuffle_input_sentence=True, seed_sentencepiece_size=seed_sentencepiece_size,
        num_threads=num_threads, minloglevel=2, **LLAMA_TRAINER_SPEC)
    os.remove(prefix + ".vocab")
    write_llama_tokenizer_config(out_dir)
    return prefix + ".model"


def texts_from_data_config(data_config, max_docs_per_source: int = 0) -> Iterator[str]:
    """Document texts of every configured source with non-zero mixture weight (train split only)."""
    from mellama_jax.data.sources.readers import iter_documents
    from mellama_jax.data.sources.report import BadInputReport
    from mellama_jax.data.sources.splits import is_eval

    for name, src in data_config.sources.items():
        if float(data_config.mixture.get(name, 0.0)) <= 0:
            continue
        report = BadInputReport(name)
        n = 0
        for doc in iter_documents(name, src, report):
            if is_eval(doc["id"], float(src.eval_fraction), name):
                continue
            yield doc["text"]
            n += 1
            if max_docs_per_source and n >= max_docs_per_source:
                break
        report.check(float(data_config.max_bad_fraction))
