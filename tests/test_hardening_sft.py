"""Instruction data under bad input: a file that cannot be read is never one bad record among many,
decoding problems are located (file:line) instead of raised, a BOM costs nothing, control characters
are removed from every message, and no message quotes record text. Fixtures are written the way
their producers write them (json.dump of a list, gzip.open, pandas.to_parquet, a BOM as Windows
tools write it)."""
from __future__ import annotations

import gzip
import json
import logging
import os

import pandas as pd
import pytest
from absl import flags

from mellama_jax.data.sources.report import DataError
from mellama_jax.data.text_hygiene import has_control_chars, strip_control_chars
from mellama_jax.sft import data as sft_data
from mellama_jax.tokenizer import load_tokenizer
from test_hardening_phi import EXAMPLES, INVISIBLE, _variants

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOK = os.path.join(ROOT, "mellama_jax", "data", "samples", "tokenizer.model")


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(TOK)


def _alpaca(i: int) -> dict:
    return {"id": f"r{i}", "instruction": f"Question {i}: is aspirin an NSAID?", "output": "Yes."}


def _read(tok, paths, **src):
    return sft_data.read_source("qa", sft_data.sft_source_config([str(p) for p in paths], eval_fraction=0.0, **src),
                                tok, "mellama", 64)


def test_cut_off_json_list_fails_the_run_naming_file_and_position(tmp_path, tok):
    """200 good JSONL records plus a .json list of 400 cut off mid-way used to read as 'skipped 1
    (0.50%)' with the 400 records silently gone: its records cannot be counted, so it is an error."""
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(_alpaca(i)) + "\n" for i in range(200)))
    with open(tmp_path / "b.json", "w", encoding="utf-8") as f:
        json.dump([_alpaca(1000 + i) for i in range(400)], f, indent=1)
    whole = (tmp_path / "b.json").read_bytes()
    (tmp_path / "b.json").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(DataError) as err:
        _read(tok, [tmp_path / "a.jsonl", tmp_path / "b.json"])
    msg = str(err.value)
    assert f"{tmp_path / 'b.json'}:" in msg and "none of its records could be read" in msg
    line = whole[: len(whole) // 2].count(b"\n") + 1
    assert f"b.json:{line}:" in msg  # the parse position: where the cut is
    # the same list whole is 400 good records
    (tmp_path / "b.json").write_bytes(whole)
    docs, report, _ = _read(tok, [tmp_path / "a.jsonl", tmp_path / "b.json"])
    assert report.good == 600 and report.num_bad == 0
    # a gzipped .json list cut short: the same error, never a raw EOFError
    with gzip.open(tmp_path / "c.json.gz", "wt", encoding="utf-8") as f:
        json.dump([_alpaca(i) for i in range(400)], f)
    gz = (tmp_path / "c.json.gz").read_bytes()
    (tmp_path / "c.json.gz").write_bytes(gz[: len(gz) // 2])
    with pytest.raises(DataError, match=r"c\.json\.gz: gzip stream ends early"):
        _read(tok, [tmp_path / "c.json.gz"])


def test_non_utf8_byte_costs_its_record_named_by_file_and_line(tmp_path, tok):
    lines = [json.dumps(_alpaca(i)).encode() for i in range(5)]
    lines[2] = lines[2].replace(b"aspirin", b"asp\xffirin")
    (tmp_path / "x.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    docs, report, _ = _read(tok, [tmp_path / "x.jsonl"])
    assert report.good == 4 and dict(report.bad) == {"invalid_utf8": 1}
    assert any(f"{tmp_path / 'x.jsonl'}:3: invalid_utf8" in e for e in report.examples), report.examples
    # inside a .json list: the item holding the byte
    body = json.dumps([_alpaca(i) for i in range(3)]).encode().replace(b"Question 1", b"Quest\xe9ion 1")
    (tmp_path / "y.json").write_bytes(body)
    docs, report, _ = _read(tok, [tmp_path / "y.json"])
    assert report.good == 2 and dict(report.bad) == {"invalid_utf8": 1}


def _truncated_gz(path, n=300):
    with gzip.open(path, "wt", encoding="utf-8") as f:
        for i in range(n):
            f.write(json.dumps({**_alpaca(i), "output": f"Yes, answer number {i} " * 8}) + "\n")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_truncated_jsonl_gz_fails_naming_the_file_unless_allowed(tmp_path, tok):
    gz = tmp_path / "qa.jsonl.gz"
    _truncated_gz(gz)
    docs, report, _ = _read(tok, [gz])  # reading is not raising: the report holds the truncation
    with pytest.raises(DataError, match=rf"{gz}.*gzip stream ends early.*allow_truncated=True"):
        report.check(0.01)
    docs, report, _ = _read(tok, [gz], allow_truncated=True)
    report.check(0.01)
    assert 0 < report.good < 300 and report.truncations[0]["path"] == str(gz)
    assert report.truncations[0]["line"] == report.good + 1  # where the break is
    # without a report (a direct caller) the break is an error naming the file, never an EOFError
    with pytest.raises(DataError, match=rf"{gz}:\d+: gzip stream ends early"):
        list(sft_data.iter_records(str(gz)))


def test_allow_truncated_is_a_key_of_sft_sources_on_the_command_line(tmp_path):
    from mellama_jax.cli.config_flags import define_config_flag

    argv = ["prog", f"--config={os.path.join(ROOT, 'configs', 'sft.py')}:tiny",
            "--config.data.sources.qa.allow_truncated=True",
            f"--config.data.sources_spec=qa;extra=sharegpt:{tmp_path}/*.json"]
    fv = flags.FlagValues()
    define_config_flag("config", flag_values=fv, argv=argv)
    fv(argv)
    assert fv.config.data.sources.qa.allow_truncated is True
    assert fv.config.data.sources.extra.allow_truncated is False


def test_corrupt_parquet_is_an_error_naming_the_file(tmp_path, tok):
    pd.DataFrame({"instruction": ["q1", "q2"], "output": ["a1", "a2"]}).to_parquet(tmp_path / "ok.parquet")
    data = (tmp_path / "ok.parquet").read_bytes()
    (tmp_path / "cut.parquet").write_bytes(data[: len(data) // 2])
    (tmp_path / "garbage.parquet").write_bytes(data[:4] + b"\x00" * 64 + data[-40:])
    assert _read(tok, [tmp_path / "ok.parquet"])[1].good == 2
    for name in ("cut.parquet", "garbage.parquet"):
        with pytest.raises(DataError, match=rf"{tmp_path / name}: not a readable parquet file"):
            _read(tok, [tmp_path / name])


def test_utf8_bom_does_not_cost_the_first_record(tmp_path, tok):
    recs = [_alpaca(i) for i in range(3)]
    # Notepad / PowerShell "UTF-8 with BOM"; Excel's "CSV UTF-8" family writes the same prefix
    with open(tmp_path / "w.jsonl", "w", encoding="utf-8-sig", newline="\r\n") as f:
        f.write("".join(json.dumps(r) + "\n" for r in recs))
    with open(tmp_path / "w.json", "w", encoding="utf-8-sig") as f:
        json.dump(recs, f)
    with gzip.open(tmp_path / "w.jsonl.gz", "wt", encoding="utf-8-sig") as f:
        f.write("".join(json.dumps(r) + "\n" for r in recs))
    # two BOM files joined with cat: the second BOM starts a line in the middle
    (tmp_path / "cat.jsonl").write_bytes((tmp_path / "w.jsonl").read_bytes() * 2)
    for name, n in (("w.jsonl", 3), ("w.json", 3), ("w.jsonl.gz", 3), ("cat.jsonl", 6)):
        docs, report, _ = _read(tok, [tmp_path / name])
        assert (report.good, report.num_bad) == (n, 0), (name, report.examples)


def test_control_characters_are_removed_from_every_message(tmp_path, tok):
    notes = ["Call 617-555-\x001234 re: Jo\u200bhnathan", "MRN 12\x00345678", "Jane\u00ad Roe\x85 seen"]
    clean = ["Call 617-555-1234 re: Johnathan", "MRN 12345678", "Jane Roe seen"]
    records = [
        {"instruction": notes[0], "input": notes[1], "output": notes[2], "system": "Be\x00 brief"},
        {"conversations": [{"from": "human", "value": notes[0]}, {"from": "gpt", "value": notes[1]}]},
        {"messages": [{"role": "user", "content": notes[2]}, {"role": "assistant", "content": notes[0]}]},
    ]
    got = [sft_data.to_messages(r) for r in records]
    assert got[0] == [{"role": "system", "content": "Be brief"},
                      {"role": "user", "content": clean[0] + "\n\n" + clean[1]},
                      {"role": "assistant", "content": clean[2]}]
    assert [m["content"] for m in got[1]] == clean[:2] and [m["content"] for m in got[2]] == [clean[2], clean[0]]
    # a JSON "\u0000" escape only becomes a NUL once parsed: removed all the same
    (tmp_path / "esc.jsonl").write_text(json.dumps({"instruction": "MRN 12\x00345678", "output": "ok"}) + "\n")
    assert "\\u0000" in (tmp_path / "esc.jsonl").read_text()
    (_, rec), = sft_data.iter_records(str(tmp_path / "esc.jsonl"))
    assert sft_data.to_messages(rec)[0]["content"] == "MRN 12345678"
    # only invisible characters: an empty answer, not a trained example of nothing
    with pytest.raises(sft_data.RecordError) as err:
        sft_data.to_messages({"instruction": "q", "output": "\u200b\x00"})
    assert err.value.reason == "empty_answer"


def _secrets() -> list[str]:
    return sorted({v for _, _, v in EXAMPLES if len(v) > 3} | {"Pt Jane Roe", "4455667", "Johnathan"})


def _leaks(text: str) -> list[str]:
    flat = strip_control_chars(text)
    return [s for s in _secrets() if s in flat] + (["control character"] if has_control_chars(text) else [])


def broken_records(note: str) -> list:
    """Records that exercise every rejection path with `note` where a field name or label belongs."""
    return [
        {"conversations": [{"from": note, "value": "human"}, {"from": "gpt", "value": "ok"}]},  # swapped
        {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt"}, note]},
        {note: "x", "other": 1},  # note text as a key
        {"instruction": note},  # no output
        {"instruction": [note], "output": note},
        {"instruction": note, "output": "\u200b"},  # only an invisible character: empty
        {"messages": [{"role": note, "content": "q"}, {"role": "assistant", "content": "a"}]},
        {"messages": [{"role": "user", "content": note}, {"role": "assistant", "content": [note]}]},
        {"messages": [{"role": "assistant", "content": note}, {"role": "user", "content": note}]},
        {"messages": note},
        [note],
        note,
    ]


def phi_notes() -> list[str]:
    notes = ["Pt Jane Roe MRN 4455667 DOB 03/14/1931 called from 617-555-1234"]
    for _, note, value in EXAMPLES:  # a control-character variant of every PHI type the de-identifier knows
        notes += [v for _, v in list(_variants(note, value))[:: max(1, len(INVISIBLE) // 4)]]
    return notes


def test_no_sft_message_quotes_record_text(tmp_path, tok, caplog, capfd):
    caplog.set_level(logging.DEBUG)
    notes = phi_notes()
    lines = []
    for note in notes:
        lines += [json.dumps(r) for r in broken_records(note)]
        lines.append('{"instruction": "' + note.replace("\x00", "") + '", "output": ')  # invalid JSON
    lines.append(json.dumps(_alpaca(0)))
    (tmp_path / "bad.jsonl").write_text("\n".join(lines) + "\n")
    with open(tmp_path / "cut.json", "w", encoding="utf-8") as f:
        json.dump([{"instruction": n, "output": n} for n in notes], f)
    (tmp_path / "cut.json").write_bytes((tmp_path / "cut.json").read_bytes()[:-30])
    messages = []
    docs, report, _ = _read(tok, [tmp_path / "bad.jsonl"])
    assert report.good == 1 and report.num_bad == len(lines) - 1
    assert set(report.bad) >= {"bad_role", "unknown_format", "bad_conversation", "bad_field_type", "invalid_json",
                               "not_an_object", "empty_answer"}
    report.max_examples = 10_000
    for line, rec in sft_data.iter_records(str(tmp_path / "bad.jsonl")):  # every detail, not only the first 20
        try:
            sft_data.to_messages(rec if not isinstance(rec, sft_data.RecordError) else {})
        except sft_data.RecordError as err:
            messages.append(str(err) + err.detail)
        if isinstance(rec, sft_data.RecordError):
            messages.append(str(rec) + rec.detail)
    try:
        report.check(0.01)
    except DataError as err:
        messages.append(str(err))
    with pytest.raises(DataError) as err:
        _read(tok, [tmp_path / "cut.json"])
    messages += [str(err.value), report.summary(), json.dumps(report.to_dict())]
    captured = capfd.readouterr()
    messages += [captured.out, captured.err] + [r.getMessage() for r in caplog.records]
    everything = "\n".join(messages)
    assert "unknown_format" in everything and "bad_role" in everything and "skipping bad input" in everything
    assert "field 'from'" in everything and "has none of them and 2 other field(s)" in everything
    assert not _leaks(everything), _leaks(everything)[:5]


def test_pretraining_readers_drop_a_bom_too(tmp_path):
    """The same rule in the pretraining readers: a BOM used to cost the first JSON line and made a
    MIMIC CSV's header unrecognisable."""
    from mellama_jax.data.sources.readers import read_file
    from mellama_jax.data.sources.report import BadInputReport

    with open(tmp_path / "d.jsonl", "w", encoding="utf-8-sig") as f:
        f.write(json.dumps({"id": "a", "text": "first"}) + "\n" + json.dumps({"id": "b", "text": "second"}) + "\n")
    report = BadInputReport("g")
    assert [d["text"] for d in read_file("g", {"format": "jsonl"}, str(tmp_path / "d.jsonl"), report)] == ["first", "second"]
    assert report.num_bad == 0
    pd.DataFrame({"ROW_ID": [1], "SUBJECT_ID": [2], "CATEGORY": ["Nursing"], "TEXT": ["Stable."]}).to_csv(
        tmp_path / "n.csv", index=False, encoding="utf-8-sig")  # Excel's "CSV UTF-8"
    docs = list(read_file("c", {"format": "mimic_csv"}, str(tmp_path / "n.csv"), BadInputReport("c")))
    assert [d["text"] for d in docs] == ["Stable."]
