"""Tokenize a config's sources once, on Apache Beam, into a token store (local directory or bucket).

    python -m mellama_jax.cli.tokenize_beam --config configs/pretrain.py:demo --output /data/store \\
        -- --runner DirectRunner --direct_num_workers 2 --direct_running_mode multi_processing
    python -m mellama_jax.cli.tokenize_beam --config configs/pretrain.py:llama2_7b \\
        --config.data.sources_spec='bio=pubmed_xml:gs://corpora/pubmed/*.xml.gz;gen=jsonl:gs://corpora/gen/*.jsonl' \\
        --output gs://my-bucket/stores/me-llama -- --runner DataflowRunner --project P --region R \\
        --temp_location gs://my-bucket/tmp --setup_file ./setup.py --requirements_file requirements.txt

Everything after `--` is Beam's own pipeline options (DirectRunner, DataflowRunner, FlinkRunner,
SparkRunner, ...). The sources are read with the same readers, scrubber, exclude_ids, dedup and
train/eval split as training, and tokenized with the run's tokenizer (config.data.tokenizer_path,
else the one that travels with config.model.init_from); the store equals today's in-process
tokenization document for document (mellama_jax.data.store.build). The store's manifest is written
last, by this driver, after every worker's file is checked; a killed build leaves no manifest, is
refused by training, and a rerun of the same command completes it (only unfinished files are redone).

--output must be empty, absent, or a store of this same build (resumed); --overwrite rebuilds a
store this builder made (never a directory of other files). --serial builds in this process,
without Beam (the reference builder). `--sources_spec SPEC` is short for --config.data.sources_spec.

Workers import mellama_jax: DirectRunner's multi_processing workers get the repository root on their
PYTHONPATH (set here before the pipeline starts); cluster workers need the package shipped, e.g.
`--setup_file ./setup.py` (in the repository root) or a worker container image that holds it
(`--sdk_container_image`).
"""
from __future__ import annotations

import shlex
import sys
import time

from absl import app, flags

from mellama_jax.checkpoint.model_spec import training_tokenizer_file
from mellama_jax.cli.config_flags import define_config_flag, parse_flags
from mellama_jax.data.sources.report import DataError
from mellama_jax.data.store import build
from mellama_jax.tokenizer import load_tokenizer

__all__ = ["main"]

PROG = "mellama_jax.cli.tokenize_beam"
_CONFIG = define_config_flag("config", "Experiment config whose data.sources to tokenize, e.g. "
                             "configs/pretrain.py:demo (--config.data.* overrides work as in launch.py)")
_OUTPUT = flags.DEFINE_string("output", None, "The token store: a local directory, gs:// or s3:// prefix.")
_SOURCES = flags.DEFINE_list("sources", None, "Build only these sources (default: every data.sources entry).")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Rebuild a store this builder made (complete or of "
                               "another build); never touches a directory of other files.")
_THREADS = flags.DEFINE_integer("tokenize_threads", 1, "sentencepiece threads per worker (0 = all cores); "
                                "parallelism comes from Beam's workers.")
_SERIAL = flags.DEFINE_bool("serial", False, "Build in this process without Beam (the reference builder).")


def _expand_sources_spec(argv: list[str]) -> list[str]:
    """`--sources_spec X` / `--sources_spec=X` as `--config.data.sources_spec=X` (expanded when the
    config file loads, so later --config.data.sources.<name>.* overrides can name its sources)."""
    out, i = [], 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            out.extend(argv[i:])
            break
        if arg in ("--sources_spec", "-sources_spec") and i + 1 < len(argv):
            out.append(f"--config.data.sources_spec={argv[i + 1]}")
            i += 2
            continue
        if arg.startswith("--sources_spec="):
            arg = "--config.data.sources_spec=" + arg.split("=", 1)[1]
        out.append(arg)
        i += 1
    return out


def _summary(manifest: dict, store: str, seconds: float) -> str:
    docs = sum(s["splits"][sp]["docs"] for s in manifest["sources"].values() for sp in s["splits"])
    tokens = sum(s["splits"][sp]["tokens"] for s in manifest["sources"].values() for sp in s["splits"])
    files = sum(len(s["files"]) for s in manifest["sources"].values())
    b = manifest["builder"]
    return (f"{PROG}: {len(manifest['sources'])} sources, {files} files, {docs} documents, {tokens} tokens in "
            f"{seconds:.2f} s ({tokens / max(seconds, 1e-9):,.0f} tokens/s; {b['runner']}, {b['workers']} "
            f"worker(s)) -> {store}")


def main(argv: list[str]) -> None:
    config = _CONFIG.value
    store = _OUTPUT.value
    if not store:
        print(f"{PROG}: --output is required (a directory, gs:// or s3:// prefix)", file=sys.stderr)
        sys.exit(2)
    command = " ".join(["python", "-m", PROG] + [shlex.quote(a) for a in sys.argv[1:]])
    start = time.time()
    try:
        tokenizer_file = training_tokenizer_file(config)
        tokenizer = load_tokenizer(tokenizer_file)
        if _SERIAL.value:
            if len(argv) > 1:
                print(f"{PROG}: --serial runs without Beam; drop the pipeline options {argv[1:]}", file=sys.stderr)
                sys.exit(2)
            manifest = build.build_store_serial(config.data, tokenizer, store, sources=_SOURCES.value,
                                                overwrite=_OVERWRITE.value, threads=_THREADS.value, command=command)
        else:
            # Beam is heavy: imported (with the pipeline's DoFns) only when a pipeline is to run.
            from mellama_jax.cli.beam_store import run_beam

            manifest = run_beam(config.data, tokenizer, store, list(argv[1:]), sources=_SOURCES.value,
                                overwrite=_OVERWRITE.value, threads=_THREADS.value, command=command)
    except (DataError, ValueError, OSError) as err:  # OSError: fs.StorageError and local I/O
        print(f"{PROG}: {err}", file=sys.stderr)
        sys.exit(1)
    print(_summary(manifest, store, time.time() - start), flush=True)


def _parse(argv: list[str]) -> list[str]:
    argv = _expand_sources_spec(argv)
    sys.argv[:] = argv  # the config flag finds data.sources_spec in sys.argv
    return parse_flags(argv, PROG)


if __name__ == "__main__":
    app.run(main, flags_parser=_parse)
