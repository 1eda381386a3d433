"""Extend a LLaMA tokenizer with biomedical pieces, keeping every existing id.

    python -m mellama_jax.cli.extend_tokenizer --base TOKENIZER_OR_CKPT --corpus GLOBS --add N --out DIR

A domain sentencepiece model is trained on the corpus (minus --heldout_fraction of its documents);
its pieces that BPE can form from two current pieces are appended below every existing merge, so
text without a new piece encodes as before (data/extend_tokenizer.py says how). Writes the extended
tokenizer.model, HF tokenizer files, fertility.json (tokens per word and character, base vs extended,
on held-out biomedical, clinical and general text) and added_pieces.txt.

Grow a model to the new vocabulary with `python -m mellama_jax.cli.convert resize_vocab`.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from mellama_jax.checkpoint.artifact import resolve_artifact
from mellama_jax.data.extend_tokenizer import (default_eval_sets, extend_proto, fertility_report, format_report,
                                               read_texts, train_domain_model)
from mellama_jax.tokenizer import read_json, read_model_proto, write_sentencepiece_hf_files

__all__ = ["resolve_base_tokenizer", "main"]


def resolve_base_tokenizer(base: str) -> str:
    """tokenizer.model of a file, a directory holding one, or any model artifact path."""
    base = os.path.abspath(os.path.expanduser(base))
    if os.path.isfile(base):
        return base
    if os.path.isfile(os.path.join(base, "tokenizer.model")):
        return os.path.join(base, "tokenizer.model")
    artifact = resolve_artifact(base)
    if not artifact.tokenizer_file:
        raise FileNotFoundError(f"--base {base}: the model at {artifact.root} carries no tokenizer.model")
    return artifact.tokenizer_file


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mellama_jax.cli.extend_tokenizer",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--base", required=True, help="tokenizer.model, its directory, or a model artifact")
    p.add_argument("--corpus", required=True, help="comma-separated files/globs (any reader format)")
    p.add_argument("--format", default="auto", help="reader format of --corpus (default: by file name)")
    p.add_argument("--add", type=int, required=True, help="number of pieces to add (at most)")
    p.add_argument("--out", required=True, help="output directory (must not hold a tokenizer.model)")
    p.add_argument("--domain_vocab", type=int, default=0,
                   help="vocab of the domain model whose pieces are candidates (default max(4*add, 1000))")
    p.add_argument("--heldout_fraction", type=float, default=0.1,
                   help="corpus documents kept out of training and used as the biomedical fertility text")
    p.add_argument("--eval_text", action="append", default=[], metavar="NAME=GLOBS",
                   help="extra/replacement fertility text sets (default: bundled clinical + general samples)")
    p.add_argument("--max_docs", type=int, default=0, help="read at most this many corpus documents (0 = all)")
    args = p.parse_args(argv)
    try:
        return _run(args)
    except (FileNotFoundError, FileExistsError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def _run(args) -> int:
    if args.add < 1:
        raise ValueError(f"--add {args.add}: must be >= 1")
    out_model = os.path.join(args.out, "tokenizer.model")
    if os.path.exists(out_model):
        raise FileExistsError(f"{out_model}: already exists; choose a new output directory")
    base_file = resolve_base_tokenizer(args.base)
    base = read_model_proto(base_file)
    globs = [g for g in args.corpus.split(",") if g]
    train_texts = list(read_texts("corpus", globs, args.format, heldout_fraction=args.heldout_fraction,
                                  split="train", max_docs=args.max_docs))
    if not train_texts:
        raise ValueError(f"--corpus {args.corpus}: no training documents read")
    domain = train_domain_model(train_texts, args.domain_vocab or max(4 * args.add, 1000))
    extended, added = extend_proto(base, domain, args.add)
    os.makedirs(args.out, exist_ok=True)
    with open(out_model + ".tmp", "wb") as f:
        f.write(extended.SerializeToString())
    os.replace(out_model + ".tmp", out_model)
    write_sentencepiece_hf_files(out_model, args.out,
                                 read_json(os.path.join(os.path.dirname(base_file), "tokenizer_config.json")))

    sets = {"biomedical": list(read_texts("corpus", globs, args.format, heldout_fraction=args.heldout_fraction,
                                          split="heldout"))}
    extra = dict(item.split("=", 1) for item in args.eval_text)
    for name, (paths, fmt, keys) in default_eval_sets().items():
        if name not in extra:
            sets[name] = list(read_texts(name, paths, fmt, **keys))
    for name, paths in extra.items():
        sets[name] = list(read_texts(name, paths.split(",")))
    report = fertility_report(base_file, out_model, sets)
    report.update(added=len(added), requested=args.add, corpus=globs, heldout_fraction=args.heldout_fraction,
                  domain_vocab=len(domain.pieces))
    with open(os.path.join(args.out, "fertility.json"), "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2)
    with open(os.path.join(args.out, "added_pieces.txt"), "w", encoding="utf-8") as f:
        f.write("".join(piece + "\n" for piece in added))
    print(f"added {len(added)} pieces (asked {args.add}; {len(domain.pieces)}-piece domain model): "
          f"{len(base.pieces)} -> {len(extended.pieces)}")
    print(format_report(report))
    print(f"wrote {out_model}, HF tokenizer files, fertility.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
