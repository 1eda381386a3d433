"""Train a LLaMA-style sentencepiece tokenizer (for tiny experiments) from configured corpora or files.

LLaMA's trainer settings are kept: BPE, byte_fallback, split_digits, identity normalization (no
NFKC), a dummy prefix, whitespace kept as is, <unk>=0 <s>=1 </s>=2 and no pad piece. A
`tokenizer_config.json` with LLaMA-2's BOS/EOS defaults is written beside the model.

    python -m mellama_jax.data.train_tokenizer --config configs/pretrain.py:tiny --out DIR --vocab_size 4000
    python -m mellama_jax.data.train_tokenizer --input a.jsonl,b.xml.gz --format auto --out DIR
"""
from __future__ import annotations

import argparse
import os
from typing import Iterable, Iterator

import sentencepiece as spm

from mellama_jax.tokenizer import write_llama_tokenizer_config

__all__ = ["train_tokenizer", "LLAMA_TRAINER_SPEC", "texts_from_data_config", "main"]

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


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", help="experiment config (path.py[:variant]); its config.data sources are read")
    p.add_argument("--input", help="comma-separated files/globs instead of --config")
    p.add_argument("--format", default="auto", help="format of --input files (default: from the file name)")
    p.add_argument("--out", required=True, help="output directory for tokenizer.model + tokenizer_config.json")
    p.add_argument("--vocab_size", type=int, default=4000)
    p.add_argument("--max_docs_per_source", type=int, default=0)
    args = p.parse_args(argv)
    if bool(args.config) == bool(args.input):
        p.error("give exactly one of --config or --input")
    if args.config:
        data_config = _load_data_config(args.config)
    else:
        from mellama_jax.data.config import default_data_config, source_config

        data_config = default_data_config()
        data_config.sources = {"input": source_config(args.input.split(","), args.format, eval_fraction=0.0)}
        data_config.mixture = {"input": 1.0}
    path = train_tokenizer(texts_from_data_config(data_config, args.max_docs_per_source), args.out,
                           args.vocab_size)
    print(f"wrote {path}")


def _load_data_config(spec: str):
    """`configs/x.py[:variant]` -> its `.data` (or the config itself when it is a data config)."""
    import importlib.util

    path, _, variant = spec.partition(":")
    mod_spec = importlib.util.spec_from_file_location("_mellama_cfg", path)
    if mod_spec is None or mod_spec.loader is None:
        raise FileNotFoundError(f"--config {spec!r}: cannot load {path}")
    mod = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(mod)
    cfg = mod.get_config(variant) if variant else mod.get_config()
    return cfg.data if "data" in cfg else cfg


if __name__ == "__main__":
    main()
