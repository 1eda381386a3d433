"""Decontamination reports only complete scans: a source that broke off (cut-short gzip), an empty
source or a file that does not parse exits 2 naming the file and writes nothing, unless the source's
truncation is allowed (then recorded with its counts); bad records are counted in
decontamination.json; --out is a staged output like the other tools'; no message quotes record text."""
from __future__ import annotations

import gzip
import json
import logging
import os

import pytest

from mellama_jax.cli import decontaminate as cli
from test_decontam import MEDQA_QUESTION, _write_benchmarks
from test_hardening_sft import _leaks, broken_records, phi_notes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SFT = os.path.join(ROOT, "configs", "sft.py") + ":tiny"


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    d = tmp_path_factory.mktemp("bench")
    _write_benchmarks(d)
    return str(d)


def _docs(n: int) -> list[dict]:
    """n documents; every 10th quotes the MedQA test question (contaminated)."""
    return [{"id": f"d{i}", "text": (MEDQA_QUESTION if i % 10 == 0 else f"Unrelated note {i} about renal care.")
             + " filler words" * 30} for i in range(n)]


def _run(capsys, bench, out, *args) -> tuple[int, str, str]:
    code = cli.main([*args, "--benchmarks", bench, "--tasks", "medqa", "--out", str(out)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _cut_gz(path, docs) -> None:
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write("".join(json.dumps(d) + "\n" for d in docs))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_truncated_source_fails_without_output_unless_allowed(tmp_path, bench, capsys):
    gz = tmp_path / "train.jsonl.gz"
    _cut_gz(gz, _docs(400))
    out = tmp_path / "out"
    code, stdout, err = _run(capsys, bench, out, "--sources_spec", f"train=jsonl:{gz}", "--write_exclude")
    assert code == 2 and str(gz) in err and "scan incomplete" in err and "--allow_truncated train" in err, err
    assert not out.exists() and not list(tmp_path.glob("out.partial-*"))  # no short exclude list
    code, stdout, err = _run(capsys, bench, out, "--sources_spec", f"train=jsonl:{gz}", "--write_exclude",
                             "--allow_truncated", "train")
    assert code == 0, err
    report = json.loads((out / "decontamination.json").read_text())
    src = report["sources"]["train"]
    assert 0 < src["documents"] < 400 and src["contaminated"] == len((out / "exclude" / "train.txt").read_text().split())
    (t,) = src["truncated"]
    assert t["path"] == str(gz) and t["line"] == src["documents"] + 1 and src["bad"] == {"truncated_gzip": 1}
    assert "Scanned only in part" in (out / "decontamination.md").read_text() and str(gz) in stdout
    # an instruction source (configs/sft.py) that breaks off: the same rule
    sft_gz = tmp_path / "qa.jsonl.gz"
    _cut_gz(sft_gz, [{"instruction": d["text"], "output": "ok"} for d in _docs(400)])
    code, _, err = _run(capsys, bench, tmp_path / "out_sft", "--sources", SFT, "--sources_spec", f"qa={sft_gz}")
    assert code == 2 and str(sft_gz) in err and not (tmp_path / "out_sft").exists(), err
    code, _, err = _run(capsys, bench, tmp_path / "out_sft", "--sources", SFT, "--sources_spec", f"qa={sft_gz}",
                        "--allow_truncated", "qa")
    assert code == 0, err
    assert json.loads((tmp_path / "out_sft" / "decontamination.json").read_text())["sources"]["qa"]["truncated"]


def test_empty_or_unparseable_sources_are_errors(tmp_path, bench, capsys):
    (tmp_path / "empty.jsonl").write_text("")
    code, _, err = _run(capsys, bench, tmp_path / "o1", "--sources_spec", f"train=jsonl:{tmp_path / 'empty.jsonl'}")
    assert code == 2 and "'train': no documents were read" in err and not (tmp_path / "o1").exists(), err
    # an instruction .json list cut off mid-way: the file and the parse position
    with open(tmp_path / "qa.json", "w", encoding="utf-8") as f:
        json.dump([{"instruction": d["text"], "output": "ok"} for d in _docs(50)], f, indent=1)
    data = (tmp_path / "qa.json").read_bytes()
    (tmp_path / "qa.json").write_bytes(data[: len(data) // 2])
    code, _, err = _run(capsys, bench, tmp_path / "o2", "--sources", SFT, "--sources_spec", f"qa={tmp_path / 'qa.json'}")
    line = data[: len(data) // 2].count(b"\n") + 1
    assert code == 2 and f"{tmp_path / 'qa.json'}:{line}:" in err and not (tmp_path / "o2").exists(), err
    # a pretraining .json that is not JSON lines: every line bad, nothing read
    code, _, err = _run(capsys, bench, tmp_path / "o3", "--sources_spec", f"train={tmp_path / 'qa.json'}")
    assert code == 2 and "no documents were read" in err and "malformed_json" in err, err


def test_bad_records_are_counted_in_the_report(tmp_path, bench, capsys):
    lines = [json.dumps(d) for d in _docs(20)] + ['{"id": "x", "text": ', json.dumps({"id": "y", "body": "no text"})]
    (tmp_path / "t.jsonl").write_text("\n".join(lines) + "\n")
    (tmp_path / "qa.jsonl").write_text(json.dumps({"instruction": MEDQA_QUESTION, "output": "CRAO"}) + "\n"
                                       + json.dumps({"foo": 1}) + "\n")
    code, _, err = _run(capsys, bench, tmp_path / "o", "--sources_spec", f"train=jsonl:{tmp_path / 't.jsonl'}")
    assert code == 0, err
    report = json.loads((tmp_path / "o" / "decontamination.json").read_text())
    assert report["sources"]["train"] == {"documents": 20, "contaminated": 2, "bad_records": 2, "truncated": [],
                                          "bad": {"malformed_json": 1, "missing_field": 1}}
    assert "| train | 20 | 2 | 2 | 0 |" in (tmp_path / "o" / "decontamination.md").read_text()
    code, _, err = _run(capsys, bench, tmp_path / "o_sft", "--sources", SFT, "--sources_spec",
                        f"qa={tmp_path / 'qa.jsonl'}")
    assert code == 0, err
    src = json.loads((tmp_path / "o_sft" / "decontamination.json").read_text())["sources"]["qa"]
    assert (src["documents"], src["contaminated"], src["bad"]) == (1, 1, {"unknown_format": 1})


def test_out_is_a_staged_output(tmp_path, bench, capsys):
    (tmp_path / "t.jsonl").write_text("".join(json.dumps(d) + "\n" for d in _docs(10)))
    spec = ["--sources_spec", f"train=jsonl:{tmp_path / 't.jsonl'}", "--write_exclude"]
    foreign = tmp_path / "theirs"
    foreign.mkdir()
    (foreign / "decontamination.json").write_text("someone else's file")
    code, _, err = _run(capsys, bench, foreign, *spec)
    assert code == 2 and "not created" in err and (foreign / "decontamination.json").read_text() == "someone else's file"
    out = tmp_path / "out"
    assert _run(capsys, bench, out, *spec)[0] == 0
    first = (out / "exclude" / "train.txt").read_text()
    code, _, err = _run(capsys, bench, out, *spec)
    assert code == 2 and "--overwrite" in err
    # a failing rerun with --overwrite leaves the earlier output as it was
    _cut_gz(tmp_path / "cut.jsonl.gz", _docs(400))
    code, _, err = _run(capsys, bench, out, "--sources_spec", f"train=jsonl:{tmp_path / 'cut.jsonl.gz'}",
                        "--write_exclude", "--overwrite")
    assert code == 2 and (out / "exclude" / "train.txt").read_text() == first
    assert _run(capsys, bench, out, *spec, "--overwrite")[0] == 0
    assert not list(tmp_path.glob("out.partial-*")) and not list(tmp_path.glob("out.old-*"))


def test_no_decontamination_message_quotes_record_text(tmp_path, bench, capsys, caplog):
    caplog.set_level(logging.DEBUG)
    notes = phi_notes()
    sft_lines, pre_lines = [json.dumps({"instruction": "q", "output": "a"})], [json.dumps({"id": "g", "text": "ok"})]
    for note in notes:
        sft_lines += [json.dumps(r) for r in broken_records(note)]
        pre_lines += [json.dumps({"id": 1, "body": note}), json.dumps([note]), '{"text": "' + note[:20],
                      json.dumps({"text": note, "id": None})[:-2]]
    (tmp_path / "qa.jsonl").write_text("\n".join(sft_lines) + "\n")
    (tmp_path / "pre.jsonl").write_text("\n".join(pre_lines) + "\n")
    with open(tmp_path / "cut.json", "w", encoding="utf-8") as f:
        json.dump([{"instruction": n, "output": n} for n in notes], f)
    (tmp_path / "cut.json").write_bytes((tmp_path / "cut.json").read_bytes()[:-30])
    messages = []
    for i, args in enumerate([["--sources", SFT, "--sources_spec", f"qa={tmp_path / 'qa.jsonl'}"],
                              ["--sources", SFT, "--sources_spec", f"qa={tmp_path / 'cut.json'}"],
                              ["--sources_spec", f"pre=jsonl:{tmp_path / 'pre.jsonl'}"]]):
        out = tmp_path / f"o{i}"
        code, stdout, err = _run(capsys, bench, out, *args)
        messages += [stdout, err] + [p.read_text() for p in out.glob("decontamination.*")]
        assert code == (2 if i == 1 else 0), err
    messages += [r.getMessage() for r in caplog.records]
    everything = "\n".join(messages)
    assert "bad_role" in everything and "malformed_json" in everything and "none of its records" in everything
    assert not _leaks(everything), _leaks(everything)[:5]
