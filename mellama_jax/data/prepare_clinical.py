"""Prepare clinical notes for pretraining: normalise MIMIC placeholders, filter, scrub PHI, dedup.

`prepare(inputs, out_dir, fmt, PrepareConfig(...))`; the command: `python -m mellama_jax.cli.prepare_clinical`.

Streams the input(s) in bounded memory (batches of notes; the dedup index keeps ~1 KB per
kept note), writes DIR/notes-*-of-*.jsonl.gz, DIR/report.json and, last, DIR/PREPARED.json.
Never prints note text: progress and errors carry counts and file:line locations only.
"""
from __future__ import annotations

import datetime
import json
import os
import resource
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterator, Sequence

from mellama_jax.data.clinical.dedup import DedupConfig, Deduplicator
from mellama_jax.data.clinical.io import (FORMAT_VERSION, MARKER, REPORT, TOOL_NAME, InputStats, RawNote,
                                          ShardedWriter, iter_notes)
from mellama_jax.data.clinical.mimic import normalize_mimic
from mellama_jax.data.clinical.phi import PhiScrubber, ScrubConfig
from mellama_jax.data.clinical.quality import QualityConfig, check_quality
from mellama_jax.output_dir import OutputDirError, StagedOutput


@dataclass(frozen=True)
class PrepareConfig:
    scrub: ScrubConfig = field(default_factory=ScrubConfig)
    quality: QualityConfig = field(default_factory=QualityConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)
    keep_error_notes: bool = False  # MIMIC-III ISERROR=1 rows
    notes_per_shard: int = 50_000
    workers: int = 1
    batch_size: int = 512
    max_bad_fraction: float = 0.01
    limit: int | None = None
    allow_truncated: bool = False  # keep what was read of a truncated/corrupt gzip input


# ------------------------------------------------------------------ per-note work (runs in workers)
_WORKER_SCRUBBER: PhiScrubber | None = None
_WORKER_CONFIG: PrepareConfig | None = None


def _init_worker(config: PrepareConfig) -> None:
    global _WORKER_SCRUBBER, _WORKER_CONFIG
    _WORKER_CONFIG = config
    _WORKER_SCRUBBER = PhiScrubber(config.scrub)


def _process(text: str) -> tuple[str | None, str, dict, dict]:
    """(drop reason or None, scrubbed text, MIMIC placeholder counts, PHI placeholder counts)."""
    cfg, scrubber = _WORKER_CONFIG, _WORKER_SCRUBBER
    mimic_counts: Counter = Counter()
    if cfg.scrub.normalize_mimic:
        text, mimic_counts = normalize_mimic(text)
    reason = check_quality(text, cfg.quality)
    if reason is not None:
        return reason, "", {}, {}
    # MIMIC rewriting already ran (before the filters), so the two kinds are counted apart.
    scrubbed, phi_counts = scrubber.scrub(text, normalize_mimic=False)
    return None, scrubbed, dict(mimic_counts), dict(phi_counts)


def _batches(notes: Iterator[RawNote], size: int) -> Iterator[list[RawNote]]:
    batch: list[RawNote] = []
    for n in notes:
        batch.append(n)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _peak_rss_mb() -> float:
    """Peak RSS of this process. VmHWM, not ru_maxrss: on Linux ru_maxrss survives exec, so a CLI
    started from a big parent (a test holding its fixture corpus) would report the parent's size."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# ------------------------------------------------------------------ driver
def prepare(inputs: Sequence[str], out_dir: str, fmt: str = "auto", config: PrepareConfig = PrepareConfig(),
            overwrite: bool = False, log=sys.stderr) -> dict:
    """Runs the whole preparation; returns the report (also written to out_dir/report.json).

    `out_dir` must be new, empty, or an earlier output of this tool (replaced only with
    `overwrite`, or without it when that earlier run failed and left only its report). Everything is
    written to a temporary sibling that becomes `out_dir` at the end: nothing of the user's is
    deleted, and an interrupted run leaves the old output (or nothing) in place.
    """
    for p in inputs:
        if not os.path.isfile(p):
            raise FileNotFoundError(f"--in {p}: no such file")
    staged = StagedOutput(out_dir, TOOL_NAME, overwrite, legacy_manifest=_legacy_manifest,
                          is_complete=lambda d: os.path.exists(os.path.join(d, MARKER)))
    try:
        staged.check()
    except OutputDirError as e:
        raise FileExistsError(str(e)) from None
    failure: str | None = None
    with staged as staging:
        report = _prepare_into(inputs, staging, fmt, config, log)
        failure = report.pop("_failure", None)
    if failure:
        raise ValueError(failure.replace(staging, out_dir))
    return report


def _legacy_manifest(path: str) -> list[str] | None:
    """Outputs written before owner files existed: recognised by their PREPARED.json."""
    try:
        with open(os.path.join(path, MARKER), encoding="utf-8") as f:
            meta = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or meta.get("tool") != TOOL_NAME:
        return None
    return [s for s in meta.get("shards", []) if isinstance(s, str)] + [MARKER, REPORT]


def _prepare_into(inputs: Sequence[str], out_dir: str, fmt: str, config: PrepareConfig, log) -> dict:
    start = time.time()
    dedup = Deduplicator(config.dedup) if (config.dedup.exact or config.dedup.near) else None
    writer = ShardedWriter(out_dir, config.notes_per_shard)
    dropped: Counter = Counter()
    mimic_counts: Counter = Counter()
    phi_counts: Counter = Counter()
    note_types: Counter = Counter()
    stats_list: list[InputStats] = []
    docs_in = 0

    def all_notes() -> Iterator[RawNote]:
        nonlocal docs_in
        for path in inputs:
            st = InputStats(path)
            stats_list.append(st)
            for note in iter_notes(path, fmt, st):
                if config.limit is not None and docs_in >= config.limit:
                    return
                docs_in += 1
                if note.is_error and not config.keep_error_notes:
                    dropped["mimic_iserror"] += 1
                    continue
                yield note

    def handle(batch: list[RawNote], results) -> None:
        results = results.get() if hasattr(results, "get") else results
        for note, (reason, text, mc, pc) in zip(batch, results):
            if reason is None and dedup is not None:
                reason = dedup.check(text)
            if reason is not None:
                dropped[reason] += 1
                continue
            mimic_counts.update(mc)
            phi_counts.update(pc)
            note_types[note.note_type or "unknown"] += 1
            writer.write({"id": note.id, "text": text, "note_type": note.note_type,
                          "subject_id": note.subject_id})

    pool = None
    if config.workers > 1:
        import multiprocessing as mp

        pool = mp.get_context("spawn" if sys.platform == "darwin" else "fork").Pool(
            config.workers, initializer=_init_worker, initargs=(config,))
    else:
        _init_worker(config)
    try:
        last_log = time.time()
        chunk = max(1, config.batch_size // 4)

        def submit(batch: list[RawNote]):
            texts = [n.text for n in batch]
            if pool is None:
                return batch, [_process(t) for t in texts]
            return batch, pool.map_async(_process, texts, chunksize=chunk)

        # Workers scrub batch k+1 while this process dedups and writes batch k.
        pending = None
        for batch in _batches(all_notes(), config.batch_size * max(1, config.workers)):
            nxt = submit(batch)
            if pending is not None:
                handle(*pending)
            pending = nxt
            if log is not None and time.time() - last_log > 30:
                last_log = time.time()
                print(f"[prepare_clinical] {docs_in} notes read, {writer.count} written, "
                      f"{docs_in / (last_log - start):.0f} notes/s", file=log, flush=True)
        if pending is not None:
            handle(*pending)
    finally:
        if pool is not None:
            pool.close()
            pool.join()
    shards = writer.close()
    seconds = time.time() - start

    rows = sum(s.rows for s in stats_list)
    bad = sum(sum(s.bad_rows.values()) for s in stats_list)
    truncated = [s for s in stats_list if s.truncated]
    report = {
        "documents_in": docs_in,
        "documents_out": writer.count,
        "dropped": dict(sorted(dropped.items())),
        "placeholders": dict(sorted((mimic_counts + phi_counts).items())),
        "placeholders_from_mimic": dict(sorted(mimic_counts.items())),
        "placeholders_from_scrubber": dict(sorted(phi_counts.items())),
        "note_types_out": dict(note_types.most_common(50)),
        "rows_read": rows,
        "bad_rows": bad,
        "inputs": [s.to_dict() for s in stats_list],
        "truncated_inputs": len(truncated),
        "dedup_index": dedup.stats() if dedup else None,
        "seconds": round(seconds, 2),
        "notes_per_second": round(docs_in / seconds, 1) if seconds > 0 else None,
        "peak_rss_mb": round(_peak_rss_mb(), 1),  # main process; each worker holds its own scrubber
        "workers": config.workers,
    }
    _write_json(os.path.join(out_dir, REPORT), report)
    failure = None
    if truncated and not config.allow_truncated:
        failure = ("truncated or corrupt input: " + "; ".join(s.truncation_message() for s in truncated)
                   + f". Pass --allow-truncated to keep what was read; see {out_dir}/{REPORT}. "
                   f"Not marking {out_dir} as prepared.")
    elif rows and bad / rows > config.max_bad_fraction:
        locs = [loc for s in stats_list for loc in s.bad_locations][:5]
        failure = (f"{bad} of {rows} rows were bad ({bad / rows:.2%} > max_bad_fraction "
                   f"{config.max_bad_fraction}); first: {locs}; see {out_dir}/{REPORT}. "
                   f"Not marking {out_dir} as prepared.")
    if failure:
        # The report stays (the output is marked incomplete: a rerun replaces it without
        # --overwrite); the shards of a rejected corpus do not.
        for name in shards:
            os.remove(os.path.join(out_dir, name))
        return {**report, "_failure": failure}
    marker = {
        "tool": TOOL_NAME,
        "format_version": FORMAT_VERSION,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "inputs": [{"path": os.path.abspath(s.path), "format": s.format, "size_bytes": s.size_bytes,
                    "sha256": s.sha256} for s in stats_list],
        "complete_inputs": (config.limit is None or docs_in < config.limit) and not truncated,
        "scrubber": config.scrub.to_dict(),
        "quality": config.quality.to_dict(),
        "dedup": config.dedup.to_dict(),
        "keep_error_notes": config.keep_error_notes,
        "shards": shards,
        "num_notes": writer.count,
    }
    _write_json(os.path.join(out_dir, MARKER), marker)  # last: its presence means "complete"
    return report


def _write_json(path: str, obj: dict) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, sort_keys=False)
        f.write("\n")
    os.replace(tmp, path)
