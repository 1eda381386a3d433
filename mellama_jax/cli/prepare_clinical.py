"""Prepare clinical notes for pretraining: normalise MIMIC placeholders, filter, scrub PHI, dedup.

    python -m mellama_jax.cli.prepare_clinical --in NOTEEVENTS.csv.gz --out DIR [--workers 4]

Streams the input(s) in bounded memory (batches of notes; the dedup index keeps ~1 KB per
kept note), writes DIR/notes-*-of-*.jsonl.gz, DIR/report.json and, last, DIR/PREPARED.json.
Never prints note text: progress and errors carry counts and file:line locations only.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

from mellama_jax.data.clinical.dedup import DedupConfig
from mellama_jax.data.clinical.io import FORMATS
from mellama_jax.data.clinical.names import read_name_list
from mellama_jax.data.clinical.phi import ScrubConfig
from mellama_jax.data.clinical.quality import QualityConfig
from mellama_jax.data.prepare_clinical import PrepareConfig, prepare

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m mellama_jax.cli.prepare_clinical", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--in", dest="inputs", required=True, help="input file(s), comma-separated (.csv/.jsonl, .gz ok)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--format", default="auto", choices=FORMATS)
    p.add_argument("--names-file", help="extra names to always scrub, one per line (e.g. staff/patient roster)")
    p.add_argument("--no-name-lexicon", action="store_true", help="context rules only for names")
    p.add_argument("--no-mimic-normalize", action="store_true", help="keep [**...**] / ___ placeholders as they are")
    p.add_argument("--no-quality-filter", action="store_true")
    p.add_argument("--min-words", type=int, default=QualityConfig.min_words)
    p.add_argument("--max-chars", type=int, default=QualityConfig.max_chars)
    p.add_argument("--no-dedup", action="store_true", help="keep exact and near duplicates")
    p.add_argument("--no-near-dedup", action="store_true", help="exact duplicates only")
    p.add_argument("--near-dup-threshold", type=float, default=DedupConfig.threshold)
    p.add_argument("--keep-error-notes", action="store_true", help="keep MIMIC-III rows with ISERROR=1")
    p.add_argument("--notes-per-shard", type=int, default=50_000)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--max-bad-fraction", type=float, default=0.01)
    p.add_argument("--limit", type=int, default=None, help="stop after this many notes (for trials)")
    p.add_argument("--allow-truncated", action="store_true",
                   help="keep the notes read before a truncated or corrupt gzip input ends (default: fail)")
    p.add_argument("--overwrite", action="store_true")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    for flag, value, ok, want in (
            ("--workers", args.workers, args.workers >= 1, ">= 1"),
            ("--notes-per-shard", args.notes_per_shard, args.notes_per_shard >= 1, ">= 1"),
            ("--max-bad-fraction", args.max_bad_fraction, 0.0 <= args.max_bad_fraction <= 1.0, "in [0, 1]"),
            ("--near-dup-threshold", args.near_dup_threshold, 0.0 < args.near_dup_threshold <= 1.0, "in (0, 1]"),
            ("--min-words", args.min_words, args.min_words >= 0, ">= 0"),
            ("--max-chars", args.max_chars, args.max_chars >= 1, ">= 1"),
            ("--limit", args.limit, args.limit is None or args.limit >= 1, ">= 1")):
        if not ok:
            parser.error(f"{flag}={value}: must be {want}")
    extra = read_name_list(args.names_file) if args.names_file else frozenset()
    config = PrepareConfig(
        scrub=ScrubConfig(use_name_lexicon=not args.no_name_lexicon, extra_names=extra,
                          normalize_mimic=not args.no_mimic_normalize),
        quality=QualityConfig(min_words=args.min_words, max_chars=args.max_chars,
                              enabled=not args.no_quality_filter),
        dedup=DedupConfig(exact=not args.no_dedup, near=not (args.no_dedup or args.no_near_dedup),
                          threshold=args.near_dup_threshold),
        keep_error_notes=args.keep_error_notes, notes_per_shard=args.notes_per_shard, workers=args.workers,
        max_bad_fraction=args.max_bad_fraction, limit=args.limit, allow_truncated=args.allow_truncated,
    )
    inputs = [p for p in args.inputs.split(",") if p]
    try:
        report = prepare(inputs, args.out, args.format, config, overwrite=args.overwrite)
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        print(f"prepare_clinical: error: {e}", file=sys.stderr)
        return 2
    summary = {k: report[k] for k in ("documents_in", "documents_out", "dropped", "placeholders", "bad_rows",
                                      "notes_per_second", "peak_rss_mb")}
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
