"""Train a LLaMA-style sentencepiece tokenizer (for tiny experiments) from configured corpora or files.

    python -m mellama_jax.cli.train_tokenizer --config configs/pretrain.py:tiny --out DIR --vocab_size 4000
    python -m mellama_jax.cli.train_tokenizer --input a.jsonl,b.xml.gz --format auto --out DIR

LLaMA's trainer settings are kept (see data/train_tokenizer.py); a `tokenizer_config.json` with
LLaMA-2's BOS/EOS defaults is written beside the model.
"""
from __future__ import annotations

import argparse
import importlib.util

from mellama_jax.data.config import default_data_config, source_config
from mellama_jax.data.train_tokenizer import texts_from_data_config, train_tokenizer

__all__ = ["main"]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m mellama_jax.cli.train_tokenizer",
                                description=__doc__.split("\n\n")[0])
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
        data_config = default_data_config()
        data_config.sources = {"input": source_config(args.input.split(","), args.format, eval_fraction=0.0)}
        data_config.mixture = {"input": 1.0}
    path = train_tokenizer(texts_from_data_config(data_config, args.max_docs_per_source), args.out,
                           args.vocab_size)
    print(f"wrote {path}")


def _load_data_config(spec: str):
    """`configs/x.py[:variant]` -> its `.data` (or the config itself when it is a data config)."""
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
