"""Paired comparison of two evaluation directories (eval/compare.py, python -m mellama_jax.cli.compare_evals):
antisymmetric, zero with p = 1 for a run against itself, equal to a naive paired bootstrap, McNemar
equal to scipy's binomial test, and refusing runs over other examples, protocols or tasks."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import zlib

import numpy as np
import pytest

import eval_stats_fixtures as SF
from mellama_jax.eval import compare as C
from mellama_jax.eval import metrics as M

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    a = SF.write_run(root / "a", SF.all_families(60, seed=0, skill=0.5), checkpoint="ckpt-a")
    b = SF.write_run(root / "b", SF.all_families(60, seed=1, skill=0.8), checkpoint="ckpt-b")
    return a, b


def test_comparison_is_antisymmetric(runs):
    a, b = runs
    ab, ba = C.compare_runs(a, b, iterations=300), C.compare_runs(b, a, iterations=300)
    assert set(ab["tasks"]) == set(SF.FAMILY_TASK.values())
    n_metrics = 0
    for task, t in ab["tasks"].items():
        for metric, m in t["metrics"].items():
            r = ba["tasks"][task]["metrics"][metric]
            assert r["difference"] == pytest.approx(-m["difference"], abs=1e-12)
            assert r["interval"] == pytest.approx([-m["interval"][1], -m["interval"][0]], abs=1e-12)
            assert r["p_value"] == m["p_value"]
            assert (r["run_a"], r["run_b"]) == (m["run_b"], m["run_a"])
            if "mcnemar" in m:
                assert (r["mcnemar"]["a_only"], r["mcnemar"]["b_only"]) == (m["mcnemar"]["b_only"],
                                                                          m["mcnemar"]["a_only"])
                assert r["mcnemar"]["p_value"] == m["mcnemar"]["p_value"]
            n_metrics += 1
    assert n_metrics > 30
    # the planted gap (skill 0.5 vs 0.8 over 60 examples) is found
    acc = ab["tasks"]["pubmedqa"]["metrics"]["accuracy"]
    assert acc["difference"] > 0 and acc["interval"][0] > 0 and acc["p_value"] < 0.05
    assert acc["mcnemar"]["b_only"] > acc["mcnemar"]["a_only"] and acc["mcnemar"]["p_value"] < 0.05


def test_a_run_against_itself_differs_by_zero_with_p_one(runs):
    a, _ = runs
    out = C.compare_runs(a, a, iterations=200)
    for t in out["tasks"].values():
        for metric, m in t["metrics"].items():
            assert m["difference"] == 0.0 and m["interval"] == [0.0, 0.0] and m["p_value"] == 1.0, metric
            if "mcnemar" in m:
                assert m["mcnemar"] == {"a_only": 0, "b_only": 0, "p_value": 1.0}


def test_paired_interval_equals_a_naive_paired_bootstrap(runs):
    a, b = runs
    out = C.compare_runs(a, b, tasks=["pubmedqa"], iterations=200, seed=4)["tasks"]["pubmedqa"]["metrics"]
    recs = [[json.loads(x) for x in open(os.path.join(d, "predictions", "pubmedqa.jsonl"))] for d in (a, b)]
    n = len(recs[0])
    draws = np.random.default_rng([4, zlib.crc32(b"pubmedqa")]).integers(0, n, size=(200, n))
    diffs = {}
    for row in draws:
        ma, mb = (M.choice_metrics([r[i]["prediction"] for i in row], [r[i]["reference"] for i in row]) for r in recs)
        for k in ma:
            diffs.setdefault(k, []).append(mb[k] - ma[k])
    for k, d in diffs.items():
        assert out[k]["interval"] == pytest.approx([np.quantile(d, 0.025), np.quantile(d, 0.975)], abs=1e-9), k
        observed = out[k]["difference"]
        p = (1 + sum(abs(x - observed) >= abs(observed) - 1e-12 for x in d)) / 201
        assert out[k]["p_value"] == pytest.approx(p), k


def test_mcnemar_exact_equals_scipy_and_statsmodels():
    from scipy.stats import binom, binomtest

    pairs = [(0, 0), (0, 1), (1, 0), (3, 3), (2, 9), (9, 2), (10, 25), (40, 41), (0, 30), (120, 95), (500, 560)]
    for a_only, b_only in pairs:
        ours = C.mcnemar_exact(a_only, b_only)
        m = a_only + b_only
        if m:
            assert ours == pytest.approx(min(1.0, 2 * binom.cdf(min(a_only, b_only), m, 0.5)), rel=1e-9, abs=1e-300)
            assert ours == pytest.approx(binomtest(a_only, m, 0.5).pvalue, rel=1e-9, abs=1e-300)
        else:
            assert ours == 1.0
    try:
        from statsmodels.stats.contingency_tables import mcnemar
    except ImportError:
        return  # statsmodels is not a dependency; scipy above is the reference
    for a_only, b_only in pairs:
        table = [[5, a_only], [b_only, 7]]
        assert C.mcnemar_exact(a_only, b_only) == pytest.approx(mcnemar(table, exact=True).pvalue, rel=1e-9)


def test_refuses_runs_over_different_examples(tmp_path):
    recs, choices = SF.records("choice", 30, seed=0)
    a = SF.write_run(tmp_path / "a", {"pubmedqa": ("choice", recs, choices)})
    shorter = SF.write_run(tmp_path / "b1", {"pubmedqa": ("choice", recs[:20], choices)})
    with pytest.raises(C.ComparisonError, match="run A scored 30 examples, run B 20"):
        C.compare_runs(a, shorter)
    moved = recs[1:2] + recs[:1] + recs[2:]
    swapped = SF.write_run(tmp_path / "b2", {"pubmedqa": ("choice", moved, choices)})
    with pytest.raises(C.ComparisonError, match="example 0 is 'ex0' in run A and 'ex1' in run B"):
        C.compare_runs(a, swapped)
    relabelled = [dict(r) for r in recs]
    relabelled[5]["reference"] = "maybe" if relabelled[5]["reference"] != "maybe" else "yes"
    other = SF.write_run(tmp_path / "b3", {"pubmedqa": ("choice", relabelled, choices)})
    with pytest.raises(C.ComparisonError, match="example 'ex5' has different references"):
        C.compare_runs(a, other)


def test_refuses_a_different_protocol_naming_each_difference(tmp_path):
    tasks = {"pubmedqa": ("choice", *SF.records("choice", 20, seed=0))}
    a = SF.write_run(tmp_path / "a", tasks)

    def edit(results):
        t = results["tasks"]["pubmedqa"]
        t["prompt_template_id"] = "mellama-v1/pubmedqa"
        t["few_shot"] = {"k": 3, "demo_ids": ["x", "y", "z"]}
        t["decoding"]["max_new_tokens"] = 64
        t["decoding"]["max_context"] = 2048  # the model's window, not the protocol: not a difference

    b = SF.write_run(tmp_path / "b", tasks, edit=edit)
    with pytest.raises(C.ComparisonError) as e:
        C.compare_runs(a, b)
    msg = str(e.value)
    assert "different protocols" in msg
    assert "pubmedqa.prompt_template_id: 'mellama-release/pubmedqa' (A) vs 'mellama-v1/pubmedqa' (B)" in msg
    assert "pubmedqa.few_shot.k: 0 (A) vs 3 (B)" in msg and "pubmedqa.decoding.max_new_tokens: 256 (A) vs 64 (B)" in msg
    assert "max_context" not in msg

    def context_only(results):
        results["tasks"]["pubmedqa"]["decoding"]["max_context"] = 2048

    C.compare_runs(a, SF.write_run(tmp_path / "c", tasks, edit=context_only), iterations=20)


def test_refuses_mismatched_tasks_unless_a_common_subset_is_named(tmp_path):
    fams = SF.all_families(20)
    a = SF.write_run(tmp_path / "a", {k: fams[k] for k in ("pubmedqa", "hoc")})
    b = SF.write_run(tmp_path / "b", {k: fams[k] for k in ("pubmedqa", "emrqa")})
    with pytest.raises(C.ComparisonError, match=r"only in A \['hoc'\], only in B \['emrqa'\]"):
        C.compare_runs(a, b)
    assert list(C.compare_runs(a, b, tasks=["pubmedqa"], iterations=20)["tasks"]) == ["pubmedqa"]
    with pytest.raises(C.ComparisonError, match=r"hoc \(not in B\)"):
        C.compare_runs(a, b, tasks=["pubmedqa", "hoc"])


def test_refuses_non_evaluation_directories_and_lm_eval_runs(tmp_path):
    a = SF.write_run(tmp_path / "a", {"pubmedqa": ("choice", *SF.records("choice", 10, seed=0))})
    (tmp_path / "empty").mkdir()
    with pytest.raises(C.ComparisonError, match="not an evaluation directory"):
        C.compare_runs(a, str(tmp_path / "empty"))
    with pytest.raises(C.ComparisonError, match="no such directory"):
        C.compare_runs(str(tmp_path / "missing"), a)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "results.json").write_text("{\"model\": 1}")
    with pytest.raises(C.ComparisonError, match="no 'tasks' table"):
        C.compare_runs(a, str(tmp_path / "bad"))

    def lm_eval(results):
        results["tasks"]["pubmedqa"]["family"] = "lm_eval"

    b = SF.write_run(tmp_path / "b", {"pubmedqa": ("choice", *SF.records("choice", 10, seed=0))}, edit=lm_eval)
    with pytest.raises(C.ComparisonError, match="family 'choice' \\(A\\) / 'lm_eval' \\(B\\)"):
        C.compare_runs(a, b)
    os.remove(os.path.join(a, "predictions", "pubmedqa.jsonl"))
    with pytest.raises(C.ComparisonError, match="pubmedqa.jsonl is missing"):
        C.compare_runs(a, a)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "mellama_jax.cli.compare_evals", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=300)


def test_cli_writes_json_and_markdown_staged_and_refuses_foreign_or_existing_output(runs, tmp_path):
    a, b = runs
    out = tmp_path / "cmp"
    r = _cli(a, b, "--out", str(out), "--tasks", "pubmedqa,i2b2", "--iterations", "100")
    assert r.returncode == 0, r.stderr
    data = json.load(open(out / "comparison.json"))
    assert sorted(data["tasks"]) == ["i2b2", "pubmedqa"] and data["bootstrap"]["iterations"] == 100
    assert data["tasks"] == C.compare_runs(a, b, tasks=["pubmedqa", "i2b2"], iterations=100)["tasks"]
    md = (out / "comparison.md").read_text()
    acc = data["tasks"]["pubmedqa"]["metrics"]["accuracy"]
    assert f"| PubMedQA | 60 | accuracy | {100 * acc['run_a']:.2f} | {100 * acc['run_b']:.2f} | " \
           f"{100 * acc['difference']:+.2f} [" in md
    assert "| i2b2 2012 | 60 | f1 |" in md and md in r.stdout
    assert sorted(os.listdir(out)) == [".mellama_output.json", "comparison.json", "comparison.md"]
    again = _cli(a, b, "--out", str(out))
    assert again.returncode == 2 and "--overwrite" in again.stderr
    assert _cli(a, b, "--out", str(out), "--overwrite", "--iterations", "50").returncode == 0
    assert json.load(open(out / "comparison.json"))["bootstrap"]["iterations"] == 50
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    r = _cli(a, b, "--out", str(foreign))
    assert r.returncode == 2 and "refusing" in r.stderr and os.listdir(foreign) == ["notes.txt"]
    # a refused comparison writes nothing
    r = _cli(a, str(tmp_path), "--out", str(tmp_path / "never"))
    assert r.returncode == 2 and "not an evaluation directory" in r.stderr and not (tmp_path / "never").exists()
