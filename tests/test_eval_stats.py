"""Bootstrap intervals (eval/stats.py): equal to a naive per-resample loop over metrics.py recomputed
from the predictions file, cover a known accuracy at the stated rate, and reach results.json /
results.md; published figures (eval/published) are matched to our tasks and metrics."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import zlib

import numpy as np
import pytest

import eval_stats_fixtures as SF
from mellama_jax.eval import metrics as M
from mellama_jax.eval import published, report, stats

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAMILIES = list(SF.FAMILY_TASK)
# The vectorised sums (W @ X) and the loop's sums add the same numbers in another order.
TOLERANCE = 1e-9


def _reference_metrics(family, recs, choices):
    """metrics.py on the given records, as the runner computes a file's metrics."""
    preds, refs = [r["prediction"] for r in recs], [r["reference"] for r in recs]
    if family == "choice":
        return M.choice_metrics(preds, refs)
    if family == "multilabel":
        return M.multilabel_metrics(preds, refs, choices)
    if family == "extractive_qa":
        return M.squad_metrics(preds, refs)
    if family == "ner":
        return M.ner_metrics(preds, refs)
    if family == "summarization":
        out = M.rouge_metrics(preds, refs)
        out["bertscore_f1"] = float(np.mean([r["scores"]["bertscore_f1"] for r in recs]))
        return out
    if family == "diagnosis":
        return M.diagnosis_metrics(preds, refs)
    raise AssertionError(family)


def _reference_bootstrap(task, family, recs, choices, iterations, seed, confidence):
    """The naive bootstrap: one Python loop iteration per resample, metrics.py on the drawn records."""
    n = len(recs)
    draws = np.random.default_rng([seed, zlib.crc32(task.encode())]).integers(0, n, size=(iterations, n))
    values = {}
    for row in draws:
        for k, v in _reference_metrics(family, [recs[i] for i in row], choices).items():
            values.setdefault(k, []).append(v)
    a = (1 - confidence) / 2
    return {k: [float(np.quantile(v, a)), float(np.quantile(v, 1 - a))] for k, v in values.items()}


@pytest.mark.parametrize("family", FAMILIES)
def test_intervals_equal_a_naive_bootstrap_recomputed_from_the_predictions_file(family, tmp_path):
    task = SF.FAMILY_TASK[family]
    recs, choices = SF.records(family, 30, seed=3)
    run = SF.write_run(tmp_path / "run", {task: (family, recs, choices)}, iterations=150)
    results = json.load(open(os.path.join(run, "results.json")))
    from_file = stats.read_predictions(os.path.join(run, "predictions", f"{task}.jsonl"))
    ref = _reference_bootstrap(task, family, from_file, choices, 150, 0, 0.95)
    ours = stats.intervals_from_run(run)[task]
    assert ours == results["tasks"][task]["intervals"]  # recomputation from the file equals results.json
    assert set(ours["metrics"]) == set(ref)
    for k, (lo, hi) in ref.items():
        assert ours["metrics"][k] == pytest.approx([lo, hi], abs=TOLERANCE), k
    assert ours["iterations"] == 150 and ours["seed"] == 0 and ours["confidence"] == 0.95


@pytest.mark.parametrize("family", FAMILIES)
def test_point_estimates_from_sufficient_statistics_equal_metrics_py(family):
    recs, choices = SF.records(family, 57, seed=1)
    st = stats.example_stats(family, recs, choices)
    ref = _reference_metrics(family, recs, choices)
    point = st.point()
    for k, v in ref.items():
        assert point[k] == pytest.approx(v, abs=1e-12), k
    for metric in st.binary:  # the 0/1 outcomes McNemar uses average to the metric
        assert st.outcomes(metric).mean() == pytest.approx(ref[metric], abs=1e-12)


def test_choice_macro_f1_per_resample_averages_the_labels_gold_in_that_resample():
    # "maybe" is gold once: resamples without it must not average a 0 F1 for it
    recs = [{"prediction": p, "reference": g} for p, g in
            [("yes", "yes"), ("no", "no"), ("maybe", "maybe"), ("maybe", "yes"), ("yes", "no"), ("no", "no")]]
    st = stats.example_stats("choice", recs)
    without = [0, 1, 3, 4, 5, 5]
    sums = np.bincount(without, minlength=6).astype(float) @ st.x
    got = st.metric_fn(sums, np.asarray(6.0))
    ref = M.choice_metrics([recs[i]["prediction"] for i in without], [recs[i]["reference"] for i in without])
    for k in ref:
        assert float(got[k]) == pytest.approx(ref[k], abs=1e-12), k


def test_chunked_draws_equal_the_one_array_definition(monkeypatch):
    n, iterations = 37, 250
    idx = stats.resample_indices(n, iterations, 5, "pubmedqa")
    want = np.stack([np.bincount(row, minlength=n) for row in idx]).astype(float)
    for chunk_elements in (n, 7 * n + 3, 1 << 22):
        monkeypatch.setattr(stats, "_CHUNK_ELEMENTS", chunk_elements)
        got = np.concatenate(list(stats.resample_counts(n, iterations, 5, "pubmedqa")))
        np.testing.assert_array_equal(got, want)


def test_95_percent_interval_covers_a_known_accuracy_at_the_stated_rate():
    """400 synthetic tasks of 200 examples each, every example right with probability 0.7: the 95%
    interval must contain 0.7 in 93% to 97% of them."""
    rng = np.random.default_rng(2024)
    truth, n, trials, covered = 0.7, 200, 400, 0
    for t in range(trials):
        right = rng.random(n) < truth
        recs = [{"prediction": "yes" if r else "no", "reference": "yes"} for r in right]
        lo, hi = stats.task_intervals(f"synthetic{t}", "choice", recs, iterations=1000, seed=t)["metrics"]["accuracy"]
        covered += lo <= truth <= hi
    assert 0.93 <= covered / trials <= 0.97, covered / trials


def test_disabled_and_bad_settings():
    recs, _ = SF.records("choice", 10, seed=0)
    off = stats.task_intervals("pubmedqa", "choice", recs, iterations=0)
    assert off["metrics"] == {} and off["iterations"] == 0
    from configs.eval import get_config

    c = get_config()
    assert stats.settings(c) == {"iterations": 1000, "seed": 0, "confidence": 0.95}
    c.bootstrap.iterations = -1
    with pytest.raises(ValueError, match="config.bootstrap.iterations=-1"):
        stats.check_config(c)
    c.bootstrap.iterations, c.bootstrap.confidence = 10, 1.5
    with pytest.raises(ValueError, match="config.bootstrap.confidence=1.5"):
        stats.check_config(c)
    with pytest.raises(ValueError, match="no bootstrap for task family 'lm_eval'"):
        stats.example_stats("lm_eval", recs)


def test_intervals_from_run_rejects_a_non_evaluation_directory(tmp_path):
    with pytest.raises(ValueError, match="not an evaluation directory"):
        stats.intervals_from_run(str(tmp_path))
    r = subprocess.run([sys.executable, "-m", "mellama_jax.cli.eval_intervals", str(tmp_path)], cwd=REPO,
                       capture_output=True, text=True)
    assert r.returncode == 2 and "not an evaluation directory" in r.stderr


def test_eval_intervals_check_catches_an_edited_interval(tmp_path):
    run = SF.write_run(tmp_path / "run", {"pubmedqa": ("choice", *SF.records("choice", 20, seed=0))})
    cmd = [sys.executable, "-m", "mellama_jax.cli.eval_intervals", run, "--check"]
    assert subprocess.run(cmd, cwd=REPO, capture_output=True, text=True).returncode == 0
    path = os.path.join(run, "results.json")
    results = json.load(open(path))
    results["tasks"]["pubmedqa"]["intervals"]["metrics"]["accuracy"][0] += 0.01
    json.dump(results, open(path, "w"))
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 1 and "pubmedqa.accuracy" in r.stderr


# --- published figures -----------------------------------------------------------------------------
def test_published_table_maps_every_row_onto_a_metric_our_task_reports():
    from mellama_jax.eval.tasks import get_task

    produced = {family: set(_reference_metrics(family, *SF.records(family, 8, seed=0)))
                for family in FAMILIES}
    cols = published.models()
    assert cols == ("llama2_13b", "me_llama_13b", "llama2_13b_instruct", "me_llama_13b_chat", "llama2_70b",
                    "me_llama_70b", "llama2_70b_instruct", "me_llama_70b_chat")
    n_rows = 0
    for task in published.DATASET_TASK.values():
        figs = published.figures(task, "me_llama_13b_chat")
        assert figs, task
        family = get_task(task).family
        assert set(figs) <= produced[family], (task, figs)
        n_rows += len(figs)
    assert n_rows == 18  # every row of the table
    assert published.figures("pubmedqa", "me_llama_13b_chat") == {"accuracy": 0.700, "macro_f1": 0.504}
    assert published.figures("emrqa", "llama2_70b_instruct") == {"mellama_exact_match": 0.181, "mellama_f1": 0.399}
    assert published.figures("pubmedsum", "me_llama_70b_chat") == {"rougeL": 0.169, "bertscore_f1": 0.678}
    assert published.figures("i2b2", "me_llama_13b") == {"f1": 0.030}
    assert published.figures("ncbi_disease", "me_llama_13b") == {}


def test_package_copy_equals_the_reference_table_when_it_is_present():
    ref = os.path.join(REPO, "..", "shared", "reference", "me_llama_zero_shot_table3.csv")
    ref = ref if os.path.exists(ref) else "/work/shared/reference/me_llama_zero_shot_table3.csv"
    if not os.path.exists(ref):
        pytest.skip("the shared reference table is not on this machine")
    with open(ref, "rb") as a, open(published._PATH, "rb") as b:
        assert a.read() == b.read()


def test_unknown_published_column_is_a_clear_error_before_the_model_loads(tmp_path):
    from configs.eval import get_config
    from mellama_jax.eval.runner import run

    c = get_config()
    c.checkpoint = str(tmp_path / "no-such-checkpoint")
    c.published.model = "gpt4"
    with pytest.raises(ValueError, match=r"config.published.model='gpt4': not a column .*me_llama_13b_chat"):
        run(c, str(tmp_path / "out"))
    assert not os.path.exists(tmp_path / "out")


def test_results_md_shows_intervals_and_published_figures_with_inside_flags(tmp_path):
    from configs.eval import get_config

    c = get_config()
    c.published.model = "me_llama_13b_chat"

    def edit(results):
        for name, r in results["tasks"].items():
            r.update(published.task_block(name, c))
        # plant one measured figure beside its published one (0.700) and one far from it
        results["tasks"]["pubmedqa"]["intervals"]["metrics"]["accuracy"] = [0.65, 0.75]
        results["tasks"]["pubmedqa"]["intervals"]["metrics"]["macro_f1"] = [0.10, 0.20]

    run = SF.write_run(tmp_path / "run", SF.all_families(20), edit=edit)
    md = open(os.path.join(run, "results.md")).read()
    r = json.load(open(os.path.join(run, "results.json")))["tasks"]["pubmedqa"]
    acc = r["metrics"]["accuracy"]
    assert f"| accuracy | {100 * acc:.2f} [65.00, 75.00] |" in md
    assert "Brackets: 95% intervals, percentile bootstrap over examples (200 resamples, seed 0" in md
    assert "## Published figures: `me_llama_13b_chat`" in md and published.CITATION in md
    assert "| PubMedQA | accuracy |" in md and "| 70.00 | yes |" in md
    assert "| PubMedQA | macro_f1 |" in md and "| 50.40 | no |" in md
    assert "EmrQA: compared with mellama_exact_match" in md and "| EmrQA | mellama_f1 |" in md
    for task, rr in json.load(open(os.path.join(run, "results.json")))["tasks"].items():
        head = rr["headline_metric"]
        lo, hi = rr["intervals"]["metrics"][head]
        assert f"{100 * rr['metrics'][head]:.2f} [{100 * lo:.2f}, {100 * hi:.2f}]" in md, task


def test_report_without_intervals_reads_as_before():
    r = {"display_name": "PubMedQA", "family": "choice", "protocol": "generate", "few_shot": {"k": 0},
         "num_examples": 2, "headline_metric": "accuracy",
         "metrics": {"accuracy": 0.5, "macro_f1": 0.25, "weighted_f1": 0.5, "missing_rate": 0.0}}
    md = report.markdown({"checkpoint": {"path": "p", "sha256": "0" * 64}, "code": {}, "seed": 0,
                          "tasks": {"pubmedqa": r}})
    assert "| PubMedQA | generate | 2 | accuracy | 50.00 | macro_f1 25.00, weighted_f1 50.00, missing_rate 0.00 |" in md
    assert "Brackets" not in md and "Published" not in md


# --- end to end: a tiny random model through the runner -------------------------------------------
E2E_TASKS = "pubmedqa,hoc,emrqa,ncbi_disease,pubmedsum,diagnosis"  # one task of every family


def test_runner_writes_intervals_for_every_metric_recomputable_from_the_predictions(tmp_path):
    import eval_fixtures as F
    from configs.eval import get_config
    from mellama_jax.eval.compare import compare_runs
    from mellama_jax.eval.runner import run

    env = F.write_eval_env(tmp_path / "env")
    c = get_config()
    c.show_progress = False
    c.checkpoint, c.data_dir, c.tasks = env["model"], env["data"], E2E_TASKS
    c.max_examples, c.max_new_tokens, c.batch_size = 3, 8, 4
    c.bootstrap.iterations, c.bootstrap.seed = 200, 7
    c.published.model = "me_llama_13b_chat"
    work = str(tmp_path / "run")
    results = run(c, work)
    on_disk = json.load(open(os.path.join(work, "results.json")))
    md = open(os.path.join(work, "results.md")).read()
    for task, r in on_disk["tasks"].items():
        computed = {k for k, v in r["metrics"].items() if v is not None}
        assert set(r["intervals"]["metrics"]) == computed, task
        assert r["intervals"]["iterations"] == 200 and r["intervals"]["seed"] == 7
        for k, (lo, hi) in r["intervals"]["metrics"].items():
            assert 0.0 <= lo <= hi <= 1.0, (task, k)
        head = r["headline_metric"]
        lo, hi = r["intervals"]["metrics"][head]
        assert f"| {head} | {100 * r['metrics'][head]:.2f} [{100 * lo:.2f}, {100 * hi:.2f}] |" in md, task
        assert r == json.loads(json.dumps(results["tasks"][task]))
    assert on_disk["tasks"]["pubmedqa"]["published"]["metrics"] == {"accuracy": 0.700, "macro_f1": 0.504}
    assert "published" in on_disk["tasks"]["ncbi_disease"] and not on_disk["tasks"]["ncbi_disease"]["published"]["metrics"]
    assert "## Published figures: `me_llama_13b_chat`" in md and "| PubMed | rougeL |" in md
    summ = stats.read_predictions(os.path.join(work, "predictions", "pubmedsum.jsonl"))
    assert all(set(r["scores"]) == {"rouge1", "rouge2", "rougeL"} for r in summ)
    assert stats.intervals_from_run(work) == {t: r["intervals"] for t, r in on_disk["tasks"].items()}
    r = subprocess.run([sys.executable, "-m", "mellama_jax.cli.eval_intervals", work, "--check"], cwd=REPO,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    self_cmp = compare_runs(work, work, iterations=50)
    assert all(m["difference"] == 0.0 and m["p_value"] == 1.0
               for t in self_cmp["tasks"].values() for m in t["metrics"].values())


def test_bertscore_per_example_scores_reach_the_records_and_the_intervals(tmp_path):
    from test_eval_bertscore import _tiny_bert

    from configs.eval import get_config
    from mellama_jax.eval.bertscore import bertscore_f1, bertscore_scores
    from mellama_jax.eval.runner import _bertscore

    _tiny_bert(tmp_path)
    preds = ["fever treated with aspirin .", "the patient improved", "no acute process ."]
    refs = ["fever treated with aspirin .", "no acute process .", "the patient improved ."]
    mean, per_pair = bertscore_scores(preds, refs, str(tmp_path))
    assert mean == bertscore_f1(preds, refs, str(tmp_path))  # the reported mean is unchanged
    assert per_pair[0] == pytest.approx(1.0, abs=1e-6) and mean == pytest.approx(np.mean(per_pair), abs=1e-6)
    c = get_config()
    c.bertscore_model = str(tmp_path)
    recs = [{"id": i, "prediction": p, "reference": g} for i, (p, g) in enumerate(zip(preds, refs))]
    stats.add_rouge_scores(recs)
    assert _bertscore(recs, c) == {"bertscore_f1": mean}
    assert [r["scores"]["bertscore_f1"] for r in recs] == per_pair
    iv = stats.intervals("pubmedsum", "summarization", recs, (), c)
    assert set(iv["metrics"]) == {"rouge1", "rouge2", "rougeL", "bertscore_f1"}
