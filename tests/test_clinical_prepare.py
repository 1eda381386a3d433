"""Clinical preparation: quality filters, dedup against exact Jaccard, streaming readers on real
MIMIC-style files, and the prepare_clinical CLI end to end (output contract, report, memory)."""
from __future__ import annotations

import csv
import gzip
import hashlib
import json
import os
import random
import subprocess
import sys

import pytest

from mellama_jax.cli import prepare_clinical
from mellama_jax.data.clinical import is_prepared_dir, iter_prepared_notes, read_marker, scrub_text
from mellama_jax.data.clinical.dedup import DedupConfig, Deduplicator, jaccard
from mellama_jax.data.clinical.io import InputStats, iter_notes
from mellama_jax.data.clinical.quality import QualityConfig, check_quality
from mellama_jax.data.clinical.synthetic import generate_notes, write_mimic3_csv

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# --------------------------------------------------------------------------- quality


def test_quality_reasons():
    good = next(generate_notes(1, seed=1)).text
    assert check_quality(good) is None
    assert check_quality("   ") == "empty"
    assert check_quality("Pt stable. Continue meds.") == "too_short"
    assert check_quality(good * 400) == "too_long"
    assert check_quality("12/14 34.5 88 " * 80 + good) == "non_alphabetic"
    assert check_quality("\n".join(["Vitals stable, continue current management."] * 30 + ["Plan: home."])) \
        == "repetitive_lines"
    form = "\n".join(f"{f}:" for f in ("Name", "Allergies", "Temp", "Pulse", "Resp", "BP", "Pain",
                                       "Diet", "Activity", "Wound", "Drains", "Skin")) + "\nComments: pt ok today"
    assert check_quality(form, QualityConfig(min_words=5)) == "boilerplate"
    spanish = ("El paciente es un hombre de la tercera edad que se presenta con dolor en el pecho y "
               "dificultad para respirar. Se le administra aspirina y se realiza un electrocardiograma "
               "que muestra cambios en la onda. La familia está con el paciente y se explica el plan.")
    assert check_quality(spanish) == "non_english"
    # Telegraphic English with few function words is still English.
    assert check_quality("Pt c/o CP x2d. BP 150/90 HR 98. EKG NSR no STE. Trop neg x2. ASA given. "
                         "Plan: admit tele, serial trops, stress test AM, cont home meds, NPO p MN.") is None


# --------------------------------------------------------------------------- dedup
def _mutate(text: str, rng: random.Random, n_edits: int) -> str:
    """A copy-forward edit: replace a few words and append one line."""
    words = text.split(" ")
    for _ in range(n_edits):
        words[rng.randrange(len(words))] = rng.choice(["stable", "improved", "unchanged", "better"])
    return " ".join(words) + "\nInterval: no acute events overnight."


def test_dedup_removes_planted_duplicates_and_keeps_distinct():
    rng = random.Random(0)
    base = [scrub_text(n.text)[0] for n in generate_notes(400, seed=5, family="dev", )]
    base = [b + f"\nDay {i} note: " + " ".join(rng.choice(["pain", "fever", "cough", "rash", "edema",
                                                            "nausea", "fatigue", "dizziness"]) for _ in range(40))
            for i, b in enumerate(base)]  # enough distinct content per note
    planted_exact = [base[i] for i in range(0, 400, 10)]
    planted_near = [_mutate(base[i], rng, 1) for i in range(5, 400, 10)]
    sims = [jaccard(base[i], t) for i, t in zip(range(5, 400, 10), planted_near)]
    assert min(sims) >= 0.8  # really near duplicates, by the exact measure
    stream = [(t, "orig") for t in base] + [(t, "exact") for t in planted_exact] + [(t, "near") for t in planted_near]
    d = Deduplicator(DedupConfig())
    results = {"orig": [], "exact": [], "near": []}
    for text, kind in stream:
        results[kind].append(d.check(text))
    assert results["exact"] == ["exact_duplicate"] * len(planted_exact)
    caught = [r == "near_duplicate" for r in results["near"]]
    # LSH is probabilistic: P(caught) = 1 - (1 - J^10)^12, >= 0.93 at J = 0.85, 0.99 at J = 0.9.
    assert all(c for c, j in zip(caught, sims) if j >= 0.9)
    assert sum(caught) >= 0.85 * len(caught), (sum(caught), len(caught), sorted(sims)[:5])
    # Distinct originals: dropped ones must really be similar (exact Jaccard) to an earlier note.
    dropped = [i for i, r in enumerate(results["orig"]) if r is not None]
    for i in dropped:
        assert max(jaccard(base[i], base[j]) for j in range(i)) >= 0.5, f"note {i} dropped without a near twin"
    assert len(dropped) <= 4


# --------------------------------------------------------------------------- readers
MIMIC3_HEADER = ["ROW_ID", "SUBJECT_ID", "HADM_ID", "CHARTDATE", "CHARTTIME", "STORETIME", "CATEGORY",
                 "DESCRIPTION", "CGID", "ISERROR", "TEXT"]


def test_mimic3_reader_multiline_quotes_errors(tmp_path):
    path = str(tmp_path / "NOTEEVENTS.csv.gz")
    rows = [
        [1, 10, 100, "2151-07-16", "", "", "Discharge summary", "Report", "", "",
         'Admission Date:  [**2151-7-16**]\nHe said "fine", then left.\n\nPlan: home'],
        [2, 11, 101, "2151-07-17", "", "", "Nursing", "Note", "", "1", "error note\nline two"],
        [3, 12, 102, "2151-07-18", "", "", "Radiology", "CXR", "", "", ""],
    ]
    with gzip.open(path, "wt", newline="") as f:
        w = csv.writer(f)
        w.writerow(MIMIC3_HEADER)
        w.writerows(rows)
        f.write('4,13,103,2151-07-19,,,Nursing,Note,,,"secret text",EXTRA\n')
    st = InputStats(path)
    notes = list(iter_notes(path, "auto", st))
    assert st.format == "mimic3" and [n.id for n in notes] == ["1", "2"]
    assert notes[0].text == rows[0][-1] and notes[0].note_type == "Discharge summary"
    assert notes[1].is_error and not notes[0].is_error
    assert st.rows == 4 and sum(st.bad_rows.values()) == 2
    assert st.bad_locations == [f"{path}:8: empty text", f"{path}:9: expected 11 columns, got 12"]
    assert "secret" not in json.dumps(st.to_dict())
    with open(path, "rb") as f:
        assert st.sha256 == hashlib.sha256(f.read()).hexdigest() and st.size_bytes == os.path.getsize(path)


def test_mimic4_and_jsonl_readers(tmp_path):
    p4 = tmp_path / "discharge.csv"
    with open(p4, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["note_id", "subject_id", "hadm_id", "note_type", "note_seq", "charttime", "storetime", "text"])
        w.writerow(["10000032-DS-21", "10000032", "22595853", "DS", "21", "2180-05-07", "",
                    "Name:  ___   Unit No:   ___\nSex: F"])
    notes = list(iter_notes(str(p4)))
    assert notes[0].id == "10000032-DS-21" and notes[0].subject_id == "10000032" and notes[0].note_type == "DS"
    pj = tmp_path / "notes.jsonl"
    pj.write_text('{"id": "a", "text": "hello there", "note_type": "x"}\n{not json}\n\n{"text": ""}\n')
    st = InputStats(str(pj))
    notes = list(iter_notes(str(pj), "auto", st))
    assert [n.id for n in notes] == ["a"] and st.bad_locations == [
        f"{pj}:2: invalid JSON at column 2", f"{pj}:4: missing or empty 'text'"]
    bad = tmp_path / "other.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="other.csv: cannot tell the format"):
        list(iter_notes(str(bad)))


# --------------------------------------------------------------------------- CLI end to end
def _make_corpus(path: str, n: int, seed: int = 0) -> list:
    rng = random.Random(seed)
    notes = list(generate_notes(n, seed=seed))
    extra = [notes[rng.randrange(n)] for _ in range(n // 50)]  # exact duplicates
    short = next(generate_notes(1, seed=99))
    short.text = "Pt seen. Stable."
    write_mimic3_csv(path, notes + extra + [short])
    return notes


def test_prepare_cli_end_to_end(tmp_path, capsys):
    src = str(tmp_path / "NOTEEVENTS.csv.gz")
    notes = _make_corpus(src, 1500)
    out = str(tmp_path / "prepared")
    names_file = tmp_path / "names.txt"
    names_file.write_text("# staff roster\nQuorvex Zandrel\n")
    rc = prepare_clinical.main(["--in", src, "--out", out, "--notes-per-shard", "500",
                                "--names-file", str(names_file)])
    assert rc == 0
    captured = capsys.readouterr()
    # No note text reaches the console: planted names/phones/emails are absent from it.
    for note in notes[:200]:
        for a, b, _ in note.phi:
            value = note.text[a:b]
            if len(value) >= 6:
                assert value not in captured.out + captured.err
    files = sorted(os.listdir(out))
    assert files == [".mellama_output.json", "PREPARED.json", "notes-00000-of-00003.jsonl.gz", "notes-00001-of-00003.jsonl.gz",
                     "notes-00002-of-00003.jsonl.gz", "report.json"]
    report = json.load(open(os.path.join(out, "report.json")))
    assert report["documents_in"] == 1500 + 30 + 1
    assert report["documents_in"] == report["documents_out"] + sum(report["dropped"].values())
    assert report["dropped"]["exact_duplicate"] >= 30 and report["dropped"]["too_short"] == 1
    marker = read_marker(out)
    assert marker["num_notes"] == report["documents_out"] and marker["scrubber"]["extra_names"] == 2
    assert marker["inputs"][0]["sha256"] == hashlib.sha256(open(src, "rb").read()).hexdigest()
    assert is_prepared_dir(out) and not is_prepared_dir(str(tmp_path))
    written = list(iter_prepared_notes(out))
    assert len(written) == report["documents_out"]
    assert set(written[0]) == {"id", "text", "note_type", "subject_id"}
    # Every planted PHI value of the first 200 notes is gone from the output.
    out_text = "\n".join(w["text"] for w in written)
    leaked = [note.text[a:b] for note in notes[:200] for a, b, t in note.phi
              if t in ("DATE", "PHONE", "EMAIL", "ID", "URL", "ZIP") and note.text[a:b] in out_text
              and len(note.text[a:b]) >= 8]
    assert not leaked, f"{len(leaked)} PHI values survived"
    phi_total = sum(report["placeholders"].values())
    assert phi_total == sum(w["text"].count("[") for w in written)
    # A second run refuses to overwrite without --overwrite.
    assert prepare_clinical.main(["--in", src, "--out", out]) == 2
    assert "already holds output of mellama_jax.data.prepare_clinical" in capsys.readouterr().err


def test_prepare_rejects_too_many_bad_rows(tmp_path, capsys):
    src = tmp_path / "notes.jsonl"
    src.write_text("".join('{"id": %d, "text": "%s"}\n' % (i, "word " * 30) for i in range(20)) + "{broken\n" * 5)
    out = str(tmp_path / "out")
    assert prepare_clinical.main(["--in", str(src), "--out", out]) == 2
    err = capsys.readouterr().err
    assert "5 of 25 rows were bad" in err and f"{src}:21" in err
    assert not is_prepared_dir(out) and os.path.exists(os.path.join(out, "report.json"))


def _run_cli_subprocess(src: str, out: str, workers: int = 1) -> dict:
    env = dict(os.environ, PYTHONPATH=REPO)
    proc = subprocess.run([sys.executable, "-m", "mellama_jax.cli.prepare_clinical", "--in", src, "--out", out,
                           "--workers", str(workers)], capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.load(open(os.path.join(out, "report.json")))


def test_prepare_5k_notes_bounded_memory_and_workers_agree(tmp_path):
    src = str(tmp_path / "notes.csv.gz")
    _make_corpus(src, 5000, seed=3)
    r1 = _run_cli_subprocess(src, str(tmp_path / "w1"), workers=1)
    r2 = _run_cli_subprocess(src, str(tmp_path / "w2"), workers=2)
    print(f"\n5k notes: {r1['notes_per_second']} notes/s (1 worker), {r2['notes_per_second']} (2 workers), "
          f"peak RSS {r1['peak_rss_mb']} MB")
    assert r1["peak_rss_mb"] < 500, r1["peak_rss_mb"]
    a = [n["text"] for n in iter_prepared_notes(str(tmp_path / "w1"))]
    b = [n["text"] for n in iter_prepared_notes(str(tmp_path / "w2"))]
    assert a == b and r1["placeholders"] == r2["placeholders"]


@pytest.mark.slow
def test_prepare_100k_notes(tmp_path):
    src = str(tmp_path / "notes.csv.gz")
    _make_corpus(src, 100_000, seed=4)
    r = _run_cli_subprocess(src, str(tmp_path / "out"), workers=2)
    print(f"\n100k notes: {r['notes_per_second']} notes/s, peak RSS {r['peak_rss_mb']} MB")
    assert r["documents_out"] > 95_000 and r["peak_rss_mb"] < 1000
