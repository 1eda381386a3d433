"""Extend a LLaMA tokenizer with biomedical pieces, keeping every existing id.

    python -m mellama_jax.cli.extend_tokenizer --base TOKENIZER_OR_CKPT --corpus GLOBS --add N --out DIR

A sentencepiece tokenizer.model or a Hugging Face BPE tokenizer.json (LLaMA-3): the base's kind is
kept (a tokenizer.json base gets a domain BPE, new vocabulary entries and last-rank merges; its other
files are copied unchanged).

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
import shutil
import sys

from mellama_jax.checkpoint.artifact import resolve_artifact
from mellama_jax.data.extend_tokenizer import (default_eval_sets, extend_bpe_spec, extend_proto, fertility_report,
                                               format_report, read_texts, train_domain_bpe, train_domain_model)
from mellama_jax.tokenizer import (BPE_FILES, TOKENIZER_FILES_TEXT, TOKENIZER_JSON, read_json, read_model_proto,
                                   tokenizer_file_in, write_sentencepiece_hf_files)
from mellama_jax.tokenizer.bpe_tokenizer import read_spec

__all__ = ["resolve_base_tokenizer", "main"]


def resolve_base_tokenizer(base: str) -> str:
    """The tokenizer file (tokenizer.model or tokenizer.json) of a file, a directory holding one, or
    any model artifact path."""
    base = os.path.abspath(os.path.expanduser(base))
    if os.path.isfile(base):
        return base
    if os.path.isdir(base) and tokenizer_file_in(base):
        return tokenizer_file_in(base)
    artifact = resolve_artifact(base)
    if not artifact.tokenizer_file:
        raise FileNotFoundError(f"--base {base}: the model at {artifact.root} carries no {TOKENIZER_FILES_TEXT}")
    return artifact.tokenizer_file


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mellama_jax.cli.extend_tokenizer",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--base", required=True, help="tokenizer.model / tokenizer.json, its directory, or a model artifact")
    p.add_argument("--corpus", required=True, help="comma-separated files/globs (any reader format)")
    p.add_argument("--format", default="auto", help="reader format of --corpus (default: by file name)")
    p.add_argument("--add", type=int, required=True, help="number of pieces to add (at most)")
    p.add_argument("--out", required=True, help="output directory (must not hold tokenizer files)")
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
    for name in ("tokenizer.model", TOKENIZER_JSON):
        if os.path.exists(os.path.join(args.out, name)):
            raise FileExistsError(f"{os.path.join(args.out, name)}: already exists; choose a new output directory")
    base_file = resolve_base_tokenizer(args.base)
    bpe = os.path.basename(base_file) == TOKENIZER_JSON
    globs = [g for g in args.corpus.split(",") if g]
    train_texts = list(read_texts("corpus", globs, args.format, heldout_fraction=args.heldout_fraction,
                                  split="train", max_docs=args.max_docs))
    if not train_texts:
        raise ValueError(f"--corpus {args.corpus}: no training documents read")
    domain_vocab = args.domain_vocab or max(4 * args.add, 1000)
    os.makedirs(args.out, exist_ok=True)
    if bpe:
        base_spec = read_spec(base_file)
        try:
            domain = train_domain_bpe(base_spec, train_texts, domain_vocab)
            extended_spec, added = extend_bpe_spec(base_spec, domain, args.add)
        except ValueError as err:
            raise ValueError(f"{base_file}: {err}") from None
        out_model = _write_bpe(base_file, extended_spec, args.out)
        n_domain, n_before, n_after = len(domain), _size(base_spec), _size(extended_spec)
    else:
        out_model = os.path.join(args.out, "tokenizer.model")
        base = read_model_proto(base_file)
        domain_proto = train_domain_model(train_texts, domain_vocab)
        extended, added = extend_proto(base, domain_proto, args.add)
        with open(out_model + ".tmp", "wb") as f:
            f.write(extended.SerializeToString())
        os.replace(out_model + ".tmp", out_model)
        write_sentencepiece_hf_files(out_model, args.out,
                                     read_json(os.path.join(os.path.dirname(base_file), "tokenizer_config.json")))
        n_domain, n_before, n_after = len(domain_proto.pieces), len(base.pieces), len(extended.pieces)

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
                  domain_vocab=n_domain)
    with open(os.path.join(args.out, "fertility.json"), "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2)
    with open(os.path.join(args.out, "added_pieces.txt"), "w", encoding="utf-8") as f:
        f.write("".join(piece + "\n" for piece in added))
    print(f"added {len(added)} pieces (asked {args.add}; {n_domain}-piece domain model): {n_before} -> {n_after}")
    print(format_report(report))
    print(f"wrote {out_model}, HF tokenizer files, fertility.json")
    return 0


def _size(spec: dict) -> int:
    ids = list(spec["model"]["vocab"].values()) + [t["id"] for t in spec.get("added_tokens", [])]
    return max(ids) + 1


def _write_bpe(base_file: str, spec: dict, out: str) -> str:
    """The extended tokenizer.json (ensure_ascii off, as HF writes it) + the base's other files unchanged."""
    out_model = os.path.join(out, TOKENIZER_JSON)
    with open(out_model + ".tmp", "w", encoding="utf-8") as f:
        json.dump(spec, f, ensure_ascii=False, indent=2)
    os.replace(out_model + ".tmp", out_model)
    source_dir = os.path.dirname(base_file)
    for name in BPE_FILES[1:]:
        if os.path.isfile(os.path.join(source_dir, name)):
            shutil.copyfile(os.path.join(source_dir, name), os.path.join(out, name))
    template = os.path.join(source_dir, "chat_template.jinja")
    if os.path.isfile(template):
        shutil.copyfile(template, os.path.join(out, "chat_template.jinja"))
    return out_model


if __name__ == "__main__":
    sys.exit(main())
