"""Convert between Hugging Face LLaMA directories and mellama-jax Orbax checkpoints.

  python -m mellama_jax.cli.convert hf_to_orbax --hf_dir DIR --out CKPT
  python -m mellama_jax.cli.convert orbax_to_hf --ckpt CKPT --out DIR [--step N] [--dtype bfloat16|float16|float32]
  python -m mellama_jax.cli.convert resize_vocab --ckpt CKPT --tokenizer DIR --out CKPT2 [--pad_to_multiple 64]

CKPT is any model artifact: a converter output, a training workdir (newest step unless --step), its
checkpoints/ dir or one checkpoints/<step> dir. Every output is an artifact with its tokenizer.

hf_to_orbax streams: source shards are memory-mapped, and each stacked parameter is assembled layer by
layer and written into the Orbax checkpoint on its own (Orbax partial saves), so peak memory stays near
one stacked weight and the model is never held in memory, let alone twice.
"""
from __future__ import annotations

import argparse
import resource
import sys

from mellama_jax.tokenizer import TokenizerMismatchError
from mellama_jax.checkpoint.convert import DTYPES, TOOL, hf_to_orbax, orbax_to_hf, resize_vocab
from mellama_jax.checkpoint.hf import ConversionError


def peak_rss_mib() -> float:
    """Peak resident memory of this process (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {TOOL}", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    to_orbax = commands.add_parser("hf_to_orbax", help="Hugging Face directory -> Orbax checkpoint")
    to_orbax.add_argument("--hf_dir", required=True)
    to_orbax.add_argument("--out", required=True)
    to_orbax.add_argument("--dtype", choices=DTYPES, default=None, help="default: the source dtype")
    to_hf = commands.add_parser("orbax_to_hf", help="Orbax checkpoint -> Hugging Face directory")
    to_hf.add_argument("--ckpt", required=True)
    to_hf.add_argument("--out", required=True)
    to_hf.add_argument("--dtype", choices=DTYPES, default=None, help="default: the stored dtype")
    to_hf.add_argument("--max_shard_size_mb", type=int, default=5120)
    to_hf.add_argument("--step", type=int, default=None, help="training checkpoints: default the newest")
    lora_mode = to_hf.add_mutually_exclusive_group()
    lora_mode.add_argument("--merge_lora", action="store_true",
                           help="LoRA SFT checkpoint: fold the adapters into the weights (the default for one)")
    lora_mode.add_argument("--adapter_only", action="store_true",
                           help="LoRA SFT checkpoint: write PEFT's adapter_config.json + adapter_model.safetensors")
    resize = commands.add_parser("resize_vocab", help="grow a model to an extended tokenizer's vocabulary")
    resize.add_argument("--ckpt", required=True, help="model artifact (its tokenizer is the base)")
    resize.add_argument("--tokenizer", required=True, help="extended tokenizer (directory or tokenizer.model)")
    resize.add_argument("--out", required=True)
    resize.add_argument("--pad_to_multiple", type=int, default=64,
                        help="embedding rows padded to this power of two (vocab sharding); default 64")
    resize.add_argument("--step", type=int, default=None, help="training checkpoints: default the newest")
    for sub in (to_orbax, to_hf, resize):
        sub.add_argument("--overwrite", action="store_true",
                         help="replace --out if it is an earlier output of this same command (nothing else)")
    args = parser.parse_args(argv)
    try:
        if args.command == "hf_to_orbax":
            out = hf_to_orbax(args.hf_dir, args.out, args.dtype, args.overwrite)
        elif args.command == "orbax_to_hf":
            out = orbax_to_hf(args.ckpt, args.out, args.dtype, args.max_shard_size_mb * 1024**2, args.step,
                              args.overwrite, merge_lora=args.merge_lora, adapter_only=args.adapter_only)
        else:
            out = resize_vocab(args.ckpt, args.tokenizer, args.out, args.pad_to_multiple, args.step, args.overwrite)
    except (ConversionError, FileNotFoundError, FileExistsError, ValueError, TokenizerMismatchError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {out}; peak RSS {peak_rss_mib():.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
