"""Instruction data: readers for the formats people have, prompt-masked tokenization, packed rows,
and the SFT row source that the pretraining pipeline (its mixture, epochs and eval split) draws from.

Record formats (detected per record when a source's format is "auto"):
  alpaca    {"instruction", "input"?, "output"} (+ optional "system"): one user turn, the instruction
            and a non-empty input joined by a blank line, as in Alpaca's "input" prompt.
  messages  {"messages": [{"role": "system"|"user"|"assistant", "content"}...]}, multi-turn.
  sharegpt  {"conversations": [{"from": ..., "value": ...}...]}: "human"/"user" -> user,
            "gpt"/"agent"/"assistant"/"chatgpt"/"bard"/"model" -> assistant (Me-LLaMA's
            src/preprocess_instruct.py writes human/agent), "system" -> system.
Files: .jsonl / .jsonl.gz (one record per line), .json (a list of records, or one record), .parquet
(a `datasets` export; nested columns come back as arrays and are normalised). Text is read as the
pretraining readers read it: gzip by magic bytes, a UTF-8 BOM (as Windows tools write it) dropped,
bytes that are not UTF-8 kept as lone surrogates so that the record holding them is skipped by
file:line; control and invisible characters (mellama_jax.data.text_hygiene) are removed from every
message before anything else looks at it.

A file that cannot be read as a whole is never one bad record among many, because its records were
never counted: a .json that does not parse (a list cut off mid-way, a stray byte) or a corrupt
.parquet fails the run naming the file (and the parse position); a .jsonl(.gz) whose gzip stream
ends early or is corrupt fails it too unless the source sets allow_truncated=True, which keeps the
records read before the break and records the file (and the share left unread) in the report.

Every assistant turn is trained (its text, the template's closing text and EOS); prompts are masked.
An example longer than seq_len + 1 tokens is cut from the left (BOS kept), like evaluation cuts
prompts, and counted: `prompt_truncated` when only prompt tokens were lost, `answer_truncated` when
trained tokens of an earlier turn (or, for an over-long answer, of the answer itself) were lost.
Malformed records are counted per reason with file:line (never their text: instructions may quote
clinical notes) and fail the run above data.max_bad_fraction.
"""
from __future__ import annotations

import collections
import dataclasses
import gzip
import io
import json
import logging
import os
import re
import zlib
from typing import Any, Iterator

import ml_collections
import numpy as np

from mellama_jax import fs
from mellama_jax.data.config import register_source_kind
from mellama_jax.data.pipeline import TrainPipeline
from mellama_jax.data.rows import PackedRows, pack_rows
from mellama_jax.data.sources.report import BadInputReport, DataError, describe_keys, label_repr
from mellama_jax.data.sources.splits import split_of
from mellama_jax.data.text_hygiene import strip_control_chars
from mellama_jax.data.token_store import TokenizedDocs
from mellama_jax.tokenizer import chat_templates as chat

__all__ = ["FORMATS", "SFT_FORMATS", "to_messages", "iter_records", "read_source", "encode_example",
           "MaskedDocs", "MaskedPackedRows", "SFTRows", "build_sft_pipeline", "sft_source_config"]

log = logging.getLogger("mellama_jax.sft")

SFT_FORMATS = ("auto", "alpaca", "messages", "sharegpt")
FORMATS = SFT_FORMATS
_ASSISTANT = {"gpt", "agent", "assistant", "chatgpt", "bard", "model", "bot"}
_USER = {"human", "user"}
_ROLES = ("system", "user", "assistant")
# Top-level field names of the three formats: only these are ever named in a message.
_KNOWN_KEYS = ("messages", "conversations", "instruction", "input", "output", "system", "id")
_SURROGATE = re.compile("[\udc80-\udcff]")  # bytes that were not UTF-8, kept by surrogateescape
# EOFError: a gzip cut short; BadGzipFile / zlib.error / OSError: garbage inside the stream.
_TRUNCATION_ERRORS = (EOFError, zlib.error, gzip.BadGzipFile, OSError)


class RecordError(ValueError):
    """A record that cannot be used; `reason` is the counter key."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(detail or reason)
        self.reason, self.detail = reason, detail


def sft_source_config(paths, fmt: str = "auto", *, eval_fraction: float = 0.02, allow_truncated: bool = False,
                      **_ignored):
    """One instruction source: globs, a record format (auto detects per record), held-out share, and
    whether a cut-short/corrupt .jsonl.gz keeps the records read before the break (default: fail)."""
    c = ml_collections.ConfigDict()
    c.paths = tuple(paths) if not isinstance(paths, str) else (paths,)
    c.format = fmt if fmt in SFT_FORMATS else "auto"
    c.eval_fraction = float(eval_fraction)
    c.allow_truncated = bool(allow_truncated)
    return c


# config.data.sources_spec of an SFT config (config.task == "sft") names these formats and builds its
# new sources with sft_source_config; an SFT config builds its sources here, so this is registered.
register_source_kind("sft", SFT_FORMATS, sft_source_config)


# --------------------------------------------------------------------------------------------------
# Records -> messages
# --------------------------------------------------------------------------------------------------
def _detect(record: dict) -> str:
    if "messages" in record:
        return "messages"
    if "conversations" in record:
        return "sharegpt"
    if "instruction" in record and "output" in record:
        return "alpaca"
    raise RecordError("unknown_format", f"of the fields messages, conversations, instruction+output it "
                                        f"{describe_keys(record, _KNOWN_KEYS)}")


def _as_list(value: Any) -> list:
    if isinstance(value, np.ndarray):  # parquet list columns
        return value.tolist()
    return list(value) if isinstance(value, (list, tuple)) else value


def to_messages(record: Any, fmt: str = "auto") -> list[dict]:
    """The conversation of one record as [{"role", "content"}] (validated for training)."""
    if not isinstance(record, dict):
        raise RecordError("not_an_object", f"got {type(record).__name__}")
    kind = _detect(record) if fmt == "auto" else fmt
    if kind == "alpaca":
        instruction, inp, output = record.get("instruction"), record.get("input") or "", record.get("output")
        if not isinstance(instruction, str) or not isinstance(output, str) or not isinstance(inp, str):
            raise RecordError("bad_field_type", "instruction/input/output must be strings")
        if not instruction.strip():
            raise RecordError("empty_prompt")
        if not output.strip():
            raise RecordError("empty_answer")
        user = instruction + ("\n\n" + inp if inp.strip() else "")
        msgs = [{"role": "user", "content": user}, {"role": "assistant", "content": output}]
        if isinstance(record.get("system"), str) and record["system"].strip():
            msgs.insert(0, {"role": "system", "content": record["system"]})
    elif kind == "messages":
        raw = _as_list(record.get("messages"))
        if not isinstance(raw, list):
            raise RecordError("bad_conversation", "'messages' is not a list")
        msgs = [dict(m) if isinstance(m, dict) else m for m in raw]
    elif kind == "sharegpt":
        raw = _as_list(record.get("conversations"))
        if not isinstance(raw, list):
            raise RecordError("bad_conversation", "'conversations' is not a list")
        msgs = []
        for i, turn in enumerate(raw):
            if not isinstance(turn, dict) or "from" not in turn or "value" not in turn:
                raise RecordError("bad_conversation", f"turn {i}: expected {{'from', 'value'}}")
            who = str(turn["from"]).strip().lower()
            role = "user" if who in _USER else "assistant" if who in _ASSISTANT else "system" if who == "system" else None
            if role is None:  # label_repr: swapped from/value puts the note text there
                raise RecordError("bad_role", f"turn {i}: field 'from' {label_repr(turn['from'])} is no "
                                              f"known speaker (expected one of {sorted(_USER | _ASSISTANT)} "
                                              "or 'system')")
            msgs.append({"role": role, "content": turn["value"]})
    else:
        raise RecordError("unknown_format", f"format {fmt!r}")
    for i, m in enumerate(msgs):
        if isinstance(m, dict) and "role" in m and m["role"] not in _ROLES:
            raise RecordError("bad_role", f"message {i}: field 'role' {label_repr(m['role'])} is not one "
                                          f"of {list(_ROLES)}")
        if isinstance(m, dict) and isinstance(m.get("content"), str):
            m["content"] = strip_control_chars(m["content"])  # before anything looks at the text
    try:
        return chat.normalize_messages(msgs, require_answer=True)
    except chat.ChatError as err:
        reason = "empty_answer" if "empty assistant" in str(err) else "empty_prompt" if "empty user" in str(err) \
            else "bad_conversation"
        raise RecordError(reason, str(err)) from None


# --------------------------------------------------------------------------------------------------
# Files -> (line, record)
# --------------------------------------------------------------------------------------------------
def expand(source: str, patterns: Any) -> list[str]:
    if isinstance(patterns, str):
        patterns = [patterns]
    files: list[str] = []
    for pat in patterns:
        try:  # local paths or gs:// / s3:// URLs; an object store's listing says which are objects
            matched = fs.glob(pat if fs.is_url(pat) else os.path.expanduser(pat), files_only=True)
        except fs.StorageError as err:
            raise DataError(f"data.sources.{source}.paths: glob {pat!r}: {err}") from err
        if not matched:
            raise DataError(f"data.sources.{source}.paths: glob {pat!r} matches no file")
        files.extend(matched)
    return sorted(dict.fromkeys(files))


def _has_bad_utf8(value: Any) -> bool:
    if isinstance(value, str):
        return _SURROGATE.search(value) is not None
    if isinstance(value, dict):
        return any(_has_bad_utf8(k) or _has_bad_utf8(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_bad_utf8(v) for v in value)
    return False


def _parquet_records(path: str) -> Iterator[tuple[int, Any]]:
    import pandas as pd  # heavy and only needed for parquet files

    try:
        with fs.open(path, "rb") as f:  # a local file, or an object through ranged GETs
            frame = pd.read_parquet(f)
    except fs.StorageError:
        raise
    except Exception as err:  # pyarrow raises several types (ArrowInvalid, OSError, ...) for a bad file
        detail = (str(err).splitlines() or [""])[0][:200]
        raise DataError(f"{path}: not a readable parquet file ({type(err).__name__}: {detail}); none of its "
                        "records could be read. Re-export it (pandas.DataFrame.to_parquet, "
                        "datasets.Dataset.to_parquet)") from None
    for i, row in enumerate(frame.to_dict("records"), 1):
        yield i, {k: v for k, v in row.items() if not (isinstance(v, float) and np.isnan(v))}


def iter_records(path: str, report: BadInputReport | None = None) -> Iterator[tuple[int, Any]]:
    """(line or item number, record | RecordError) of one file.

    A file that cannot be read as a whole raises DataError naming it: its records cannot be counted.
    A .jsonl(.gz) whose stream breaks is recorded in `report` (report.truncated: the file, the line
    and the share unread; report.check then fails unless the source allows truncation), or raises
    DataError without a report."""
    name = path[:-3] if path.endswith(".gz") else path
    if name.endswith(".parquet"):
        yield from _parquet_records(path)
        return
    try:
        raw = fs.open(path, "rb")
    except fs.StorageError as err:  # names the URL and what is wrong (missing, refused, ...)
        raise DataError(str(err)) from err
    except OSError as err:
        raise DataError(f"{path}: cannot be read ({err.strerror or err})") from None
    with raw:
        stream = gzip.GzipFile(fileobj=raw, mode="rb") if raw.peek(2)[:2] == b"\x1f\x8b" else raw
        # utf-8-sig: a BOM is not part of the first record; surrogateescape: a byte that is not
        # UTF-8 costs only the record holding it, reported by file:line.
        f = io.TextIOWrapper(stream, encoding="utf-8-sig", errors="surrogateescape")
        if name.endswith(".json"):
            yield from _json_file_records(path, f, raw)
            return
        lineno = 0
        try:
            for lineno, line in enumerate(f, 1):
                line = line.lstrip("\ufeff")  # files joined with `cat` keep each one's BOM
                if not line.strip():
                    continue
                if _SURROGATE.search(line):
                    yield lineno, RecordError("invalid_utf8", "bytes that are not UTF-8; re-save the file as UTF-8")
                    continue
                try:
                    yield lineno, json.loads(line)
                except json.JSONDecodeError as err:
                    yield lineno, RecordError("invalid_json", f"{err.msg} at column {err.colno}")
                except RecursionError:
                    yield lineno, RecordError("invalid_json", "nested too deeply")
        except _TRUNCATION_ERRORS as err:
            if isinstance(err, fs.StorageError):  # unreadable after the retries: not a truncated file
                raise
            kind = "gzip stream ends early" if isinstance(err, EOFError) else f"unreadable data ({type(err).__name__})"
            size = fs.size(path)
            pos = min(raw.tell(), size)
            if report is None:
                raise DataError(f"{path}:{lineno + 1}: {kind} at byte ~{pos} of {size}; the rest of the file "
                                "cannot be read") from None
            report.truncated(path, lineno + 1, kind, pos, size)


def _json_file_records(path: str, f: io.TextIOWrapper, raw: Any) -> Iterator[tuple[int, Any]]:
    """Items of a .json file: one JSON document, so a parse error loses every record of it and is
    an error naming the file and the position, never one bad record."""
    why = "a .json file is one JSON document (a list of records, or one record), so none of its records " \
          "could be read; fix or re-export the file, or write JSON lines (.jsonl) so that a bad line costs one record"
    try:
        data = json.load(f)
    except json.JSONDecodeError as err:
        raise DataError(f"{path}:{err.lineno}:{err.colno}: not valid JSON ({err.msg} at character {err.pos}, "
                        f"as a list cut off mid-way reads); {why}") from None
    except RecursionError:
        raise DataError(f"{path}: JSON nested too deeply; {why}") from None
    except _TRUNCATION_ERRORS as err:
        if isinstance(err, fs.StorageError):
            raise
        kind = "gzip stream ends early" if isinstance(err, EOFError) else f"unreadable data ({type(err).__name__})"
        raise DataError(f"{path}: {kind} at byte ~{raw.tell()} of {fs.size(path)}; {why}") from None
    for i, rec in enumerate(data if isinstance(data, list) else [data], 1):
        if _has_bad_utf8(rec):
            yield i, RecordError("invalid_utf8", "bytes that are not UTF-8; re-save the file as UTF-8")
        else:
            yield i, rec


# --------------------------------------------------------------------------------------------------
# Tokenized examples with trained-token flags
# --------------------------------------------------------------------------------------------------
def encode_example(tokenizer: Any, template: str, messages: list[dict], seq_len: int
                   ) -> tuple[np.ndarray, np.ndarray, str | None]:
    """(ids, trained, truncation reason or None): at most seq_len + 1 tokens (seq_len targets)."""
    ids, trained = chat.encode_chat(tokenizer, template, messages)
    limit = seq_len + 1
    if len(ids) <= limit:
        return ids, trained, None
    keep_bos = len(ids) > 0 and ids[0] == tokenizer.bos_id
    head = 1 if keep_bos else 0
    cut = len(ids) - limit  # tokens dropped right after BOS
    lost_trained = bool(trained[head:head + cut].any())
    ids = np.concatenate([ids[:head], ids[head + cut:]])
    trained = np.concatenate([trained[:head], trained[head + cut:]])
    return ids, trained, ("answer_truncated" if lost_trained else "prompt_truncated")


@dataclasses.dataclass
class MaskedDocs(TokenizedDocs):
    """Tokenized examples plus, per token, whether it is a trained (response) token."""

    trained: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, bool))

    @classmethod
    def from_examples(cls, examples: list[tuple[np.ndarray, np.ndarray]]) -> "MaskedDocs":
        base = TokenizedDocs.from_lists([e[0].tolist() for e in examples])
        trained = np.concatenate([e[1] for e in examples]) if examples else np.zeros(0, bool)
        return cls(base.tokens, base.offsets, trained.astype(bool))

    @property
    def trained_tokens(self) -> int:
        return int(self.trained.sum())


@dataclasses.dataclass
class MaskedPackedRows(PackedRows):
    """Packed rows whose loss mask is the trained flag of each target token."""

    trained: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, bool))

    def write(self, i: int, out: dict[str, np.ndarray], j: int, source_id: int) -> None:
        super().write(i, out, j, source_id)
        pos = 0
        for p in range(self.row_ptr[i], self.row_ptr[i + 1]):
            s, n = int(self.piece_start[p]), int(self.piece_len[p])
            out["loss_mask"][j, pos:pos + n] = self.trained[s + 1:s + n + 1]
            pos += n


def masked_rows(docs: MaskedDocs, seq_len: int, pad: bool) -> MaskedPackedRows:
    """First-fit packing (pad=True: one example per row) of examples of at most seq_len + 1 tokens."""
    rows = pack_rows(docs, seq_len, open_rows=0 if pad else 32)
    return MaskedPackedRows(rows.tokens, rows.piece_start, rows.piece_len, rows.row_ptr, seq_len,
                            trained=docs.trained)


def read_source(name: str, src: Any, tokenizer: Any, template: str, seq_len: int, process_index: int = 0,
                process_count: int = 1) -> tuple[dict[str, MaskedDocs], BadInputReport, collections.Counter]:
    """Train/eval examples of one source for this host, its bad-record report and truncation counts."""
    report = BadInputReport(name)
    counts: collections.Counter = collections.Counter()
    fmt = str(src.get("format", "auto"))
    if fmt not in SFT_FORMATS:
        raise DataError(f"data.sources.{name}.format={fmt!r}: expected one of {SFT_FORMATS}")
    eval_fraction = float(src.get("eval_fraction", 0.0))
    report.allow_truncated = bool(src.get("allow_truncated", False))
    examples = {"train": [], "eval": []}
    seen = {"train": 0, "eval": 0}
    for path in expand(name, src.paths):
        for line, rec in iter_records(path, report):
            if isinstance(rec, RecordError):
                report.skip(rec.reason, path, line, rec.detail)
                continue
            try:
                messages = to_messages(rec, fmt)
            except RecordError as err:
                report.skip(err.reason, path, line, err.detail)
                continue
            report.ok()
            doc_id = str(rec.get("id")) if rec.get("id") is not None else f"{os.path.basename(path)}:{line}"
            split = split_of(doc_id, eval_fraction, name)
            k = seen[split]
            seen[split] += 1
            if process_count > 1 and k % process_count != process_index:
                continue
            ids, trained, cut = encode_example(tokenizer, template, messages, seq_len)
            if cut:
                counts[f"{split}/{cut}"] += 1
            counts[f"{split}/examples"] += 1
            examples[split].append((ids, trained))
    return {s: MaskedDocs.from_examples(v) for s, v in examples.items()}, report, counts


# --------------------------------------------------------------------------------------------------
# The row source and the pipeline
# --------------------------------------------------------------------------------------------------
class SFTRows:
    """Rows of prompt-masked instruction examples, for data.pipeline.TrainPipeline (its mixture draws,
    per-source permutations per epoch, eval batches and stateless resume) in place of documents."""

    def __init__(self, data_config, tokenizer: Any = None):
        self.template = str(data_config.get("chat_template", "mellama"))
        # Fails early on an unknown name; `model` is the template the tokenizer's directory carries.
        self.chat_template_jinja = chat.hf_chat_template(self.template, tokenizer)
        self.packing = str(data_config.get("packing", "pack"))
        if self.packing not in ("pack", "pad"):
            raise DataError(f"data.packing={self.packing!r}: SFT expects 'pack' (examples packed into "
                            "rows, attention kept within each) or 'pad' (one example per row)")
        self.truncation: dict[str, collections.Counter] = {}

    def load(self, name: str, data_config, tokenizer, process_index: int, process_count: int
             ) -> tuple[dict[str, MaskedDocs], BadInputReport]:
        docs, report, counts = read_source(name, data_config.sources[name], tokenizer, self.template,
                                           int(data_config.seq_len), process_index, process_count)
        report.check(float(data_config.max_bad_fraction))
        self.truncation[name] = counts
        return docs, report

    def make_rows(self, docs: MaskedDocs, seq_len: int, for_eval: bool) -> MaskedPackedRows:
        return masked_rows(docs, seq_len, pad=self.packing == "pad")

    def state(self) -> dict:
        return {"chat_template": self.template}

    def stats(self, name: str, docs: dict[str, MaskedDocs]) -> dict[str, float]:
        out: dict[str, float] = {}
        for key, n in sorted(self.truncation.get(name, {}).items()):
            out[f"data/{name}/{key}"] = int(n)
        train = docs["train"]
        out[f"data/{name}/trained_token_fraction"] = train.trained_tokens / max(1, train.num_tokens)
        return out

    def warn_truncated(self, seq_len: int) -> None:
        for name, t in self.truncation.items():
            if t["train/prompt_truncated"] or t["train/answer_truncated"]:
                log.warning("sft: source %s: %d training examples longer than seq_len=%d were cut from the "
                            "left (%d lost only prompt tokens, %d lost trained tokens)", name,
                            t["train/prompt_truncated"] + t["train/answer_truncated"], seq_len,
                            t["train/prompt_truncated"], t["train/answer_truncated"])


def build_sft_pipeline(data_config, *, global_batch_size: int, process_index: int = 0, process_count: int = 1,
                       tokenizer: Any = None) -> TrainPipeline:
    """The pretraining pipeline over instruction examples (SFTRows): what the SFT task trains on."""
    rows = SFTRows(data_config, tokenizer)
    pipeline = TrainPipeline(data_config, global_batch_size=global_batch_size, process_index=process_index,
                             process_count=process_count, tokenizer=tokenizer, row_source=rows)
    rows.warn_truncated(pipeline.seq_len)
    return pipeline
