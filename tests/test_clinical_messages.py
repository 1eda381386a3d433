"""No note text in any message (patient text must never reach a log): every error, warning, log line, console summary and report
file that the clinical and data code produces on a corpus of broken inputs is scanned for the note
bodies of the fixture. Each body is built from marker words that occur nowhere else, so a leak of
any fragment longer than a couple of words is found."""
from __future__ import annotations

import csv
import gzip
import io
import json
import logging
import os
import random

import pytest

from mellama_jax.cli import prepare_clinical
from mellama_jax.data.sources.readers import iter_documents, read_file
from mellama_jax.data.sources.report import BadInputReport, DataError

_MARKERS = [f"Qx{w}" for w in ("velorn", "tambu", "ziprel", "orkane", "mistral", "pellow", "grunda", "havik")]


def note_bodies(n: int = 12, seed: int = 5) -> list[str]:
    rng = random.Random(seed)
    words = ["pain", "stable", "follow", "up", "in", "clinic", "denies", "fever", "Mr.", "Smith", "aspirin"]
    out = []
    for i in range(n):
        toks = []
        for j in range(40):
            toks.append(_MARKERS[(i + j) % len(_MARKERS)] if j % 3 == 0 else rng.choice(words))
        out.append(" ".join(toks) + f" note{i}.")
    return out


def leaks(text: str, bodies: list[str]) -> list[str]:
    found = [m for m in _MARKERS if m in text]
    for body in bodies:
        found += [body[i:i + 20] for i in range(0, len(body) - 20, 5) if body[i:i + 20] in text]
    return found


def _csv(rows, header=("ROW_ID", "SUBJECT_ID", "CATEGORY", "TEXT")) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    if header:
        w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()


def broken_inputs(tmp_path, bodies) -> dict[str, str]:
    """name -> path of a file that exercises one bad-input path (plus some good rows)."""
    good = [(i, 100 + i, "Nursing", b) for i, b in enumerate(bodies[:6])]
    files = {}

    def put(name, data, binary=False):
        p = tmp_path / name
        (p.write_bytes if binary else p.write_text)(data)
        files[name] = str(p)

    put("headerless.csv", _csv(good, header=None))
    put("columns.csv", _csv(good) + f'7,8,"{bodies[6]}"\n9,9,Nursing,"{bodies[7]}",extra\n')
    put("unclosed.csv", _csv(good) + f'10,11,Nursing,"{bodies[8]}\n')
    put("badjson.jsonl", "".join(json.dumps({"id": i, "text": b}) + "\n" for i, b in enumerate(bodies[:4]))
        + '{"id": 5, "text": "' + bodies[9] + '"\n' + json.dumps([bodies[10]]) + "\n"
        + json.dumps({"id": 6, "body": bodies[11]}) + "\n" + "[" * 100_000 + "\n")
    put("utf8.csv", _csv(good).encode() + b'12,13,Nursing,"' + bodies[6].encode() + b'\xff\xfe"\n', binary=True)
    full = gzip.compress(_csv(good * 200).encode())
    put("cut.csv.gz", full[: len(full) // 2], binary=True)
    put("garbage.csv.gz", b"\x1f\x8b" + full[40:4000], binary=True)
    put("notext.csv", _csv(good, header=("ROW_ID", "SUBJECT_ID", "CATEGORY", "BODY")))
    return files


def test_no_message_carries_note_text(tmp_path, capfd, caplog):
    caplog.set_level(logging.DEBUG)
    bodies = note_bodies()
    (tmp_path / "in").mkdir()
    inputs = broken_inputs(tmp_path / "in", bodies)
    messages: list[str] = []
    # prepare_clinical on each input, in every format that applies, with and without tolerance
    for name, path in inputs.items():
        fmts = ["auto", "mimic3", "csv"] if not name.endswith(".jsonl") else ["auto", "jsonl", "mimic3"]
        for k, fmt in enumerate(fmts):
            out = tmp_path / f"out-{name}-{k}"
            for extra in ([], ["--max-bad-fraction", "1.0", "--allow-truncated"]):
                prepare_clinical.main(["--in", path, "--out", str(out), "--format", fmt, "--overwrite", *extra])
                for meta in ("report.json", "PREPARED.json"):
                    if (out / meta).exists():
                        messages.append((out / meta).read_text())
    # the pipeline readers: reports, summaries, check() errors, logged warnings
    for name, path in inputs.items():
        for fmt in ("mimic_csv", "jsonl", "text", "prepared_clinical", "instruction_jsonl", "pubmed_xml"):
            report = BadInputReport("clinical")
            try:
                list(read_file("clinical", {"format": fmt}, path, report))
                report.check(0.0)
            except DataError as err:
                messages.append(str(err))
            messages += [json.dumps(report.to_dict()), report.summary()]
    # raw clinical input refused by require_prepared; scrub_inline on a broken file
    src = {"paths": [inputs["columns.csv"]], "format": "mimic_csv", "require_prepared": True}
    with pytest.raises(DataError) as err:
        list(iter_documents("clinical", src, BadInputReport("clinical")))
    messages.append(str(err.value))
    report = BadInputReport("clinical")
    docs = list(iter_documents("clinical", {**src, "scrub_inline": True}, report))
    assert docs  # the good rows still come through
    messages += [json.dumps(report.to_dict())]
    captured = capfd.readouterr()
    messages += [captured.out, captured.err] + [r.getMessage() for r in caplog.records]
    everything = "\n".join(messages)
    assert "prepare_clinical: error" in everything and "skipping bad input" in everything  # paths ran
    assert not leaks(everything, bodies), leaks(everything, bodies)[:5]
