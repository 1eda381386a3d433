"""Sampled protocols of the built-in harness: seeded sampling independent of batching, self-consistency
votes, the chain-of-thought rule, and bad decoding settings refused before the model loads."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import eval_fixtures as F
from mellama_jax.eval import sampling

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TASKS = "pubmedqa,medqa"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return F.write_eval_env(tmp_path_factory.mktemp("sampling"))


def _config(env, **decoding):
    from configs.eval import get_config

    c = get_config()
    c.show_progress = False
    c.checkpoint, c.data_dir, c.tasks = env["model"], env["data"], TASKS
    c.max_new_tokens, c.max_examples, c.batch_size = 6, 3, 4
    c.bootstrap.iterations = 50
    for k, v in decoding.items():
        setattr(c.decoding, k, v)
    return c


def _preds(workdir, task):
    with open(os.path.join(workdir, "predictions", f"{task}.jsonl")) as f:
        return [json.loads(line) for line in f]


def _run(env, tmp_path, name, batch_size=4, engine=None, **decoding):
    from mellama_jax.eval import runner

    c = _config(env, **decoding)
    c.batch_size = batch_size
    w = str(tmp_path / name)
    results = runner.run_builtin(c, w, engine=engine)
    return results, {t: _preds(w, t) for t in TASKS.split(",")}


def _samples(preds):
    return {t: [[s["generation"] for s in r["samples"]] for r in recs] for t, recs in preds.items()}


# --- units ---------------------------------------------------------------------------------------
def test_majority_vote_with_ties_and_unparsed():
    assert sampling.majority_vote(["no", "yes", "yes"]) == ("yes", [["no", 1], ["yes", 2]])
    # tie: the answer whose first vote came earliest wins, whatever the order of later votes
    assert sampling.majority_vote(["maybe", "yes", "yes", "maybe"])[0] == "maybe"
    assert sampling.majority_vote(["yes", "maybe", "maybe", "yes"])[0] == "yes"
    assert sampling.majority_vote([None, "no", None])[0] == "no"  # unparsed samples do not vote
    assert sampling.majority_vote([None, None]) == (None, [])


def test_cot_instruction_placement_and_extraction_rule():
    prompt = "Question: is it?\nThe answer is:\n"
    cot = sampling.add_cot(prompt)
    assert cot == f"Question: is it?\n{sampling.COT_INSTRUCTION}\nThe answer is:\n"
    assert sampling.extract_answer("answer: no\nwait, so Answer:  yes  \nthanks") == "yes"  # the last one
    assert sampling.extract_answer("ANSWER:maybe") == "maybe"
    assert sampling.extract_answer("I think yes") is None
    assert sampling.extract_answer("Answer:\n") is None


def test_cot_parse_falls_back_to_the_whole_generation():
    from mellama_jax.eval import runner
    from mellama_jax.eval.tasks import get_task
    from mellama_jax.eval.tasks.common import Example

    spec = get_task("pubmedqa")
    ex = Example(id="x", inputs={}, reference="yes", choices=("yes", "no", "maybe"))
    config = _config({"model": "", "data": ""})
    parse = lambda g: runner._parse_generation(spec, ex, g, config, cot=True)
    assert parse("yes, no, maybe... Answer: no") == ("no", "no")  # the answer line, not the first choice
    assert parse("it is maybe so. Answer: unsure") == ("maybe", "unsure")  # the line does not parse
    assert parse("no answer line but yes") == ("yes", None)  # the task's parse rule: first choice in order


def test_sample_keys_depend_only_on_seed_task_example_and_sample():
    a = sampling.sample_keys(0, "pubmedqa", 4, 3)
    assert a.shape[0] == 12 and a.dtype == np.uint32
    np.testing.assert_array_equal(sampling.sample_keys(0, "pubmedqa", 2, 3), a[:6])  # more examples: a prefix
    assert len({tuple(k) for k in a}) == 12
    assert not np.array_equal(sampling.sample_keys(1, "pubmedqa", 4, 3), a)
    assert not np.array_equal(sampling.sample_keys(0, "medqa", 4, 3), a)


# --- end to end ----------------------------------------------------------------------------------
def test_same_seed_same_samples_whatever_the_batching_other_seed_other_samples(env, tmp_path):
    from mellama_jax.eval import session

    c = _config(env)
    meshed = session.engine_from_config(c, show_progress=False)  # batch rows over the test's CPU devices
    c.use_mesh = False
    engine = session.engine_from_config(c, show_progress=False)
    res4, p4 = _run(env, tmp_path, "b4", batch_size=4, engine=engine, temperature=1.0, samples=3, seed=7)
    engine.batch_size = 1
    res1, p1 = _run(env, tmp_path, "b1", batch_size=1, engine=engine, temperature=1.0, samples=3, seed=7)
    engine.batch_size = 4
    resm, pm = _run(env, tmp_path, "bm", batch_size=4, engine=meshed, temperature=1.0, samples=3, seed=7)
    # batch 4 buckets 9 sampled rows as 4+4+1, batch 1 as 9 single rows, the mesh as 8+1 rows of 8 (sharded):
    # the samples are the same
    rows = lambda res: {s[1] for s in res["tasks"]["pubmedqa"]["compiled_shapes"]}
    assert rows(res4) == {4} and rows(res1) == {1} and rows(resm) == {meshed._rows(1)} != {4}
    assert _samples(p4) == _samples(p1) == _samples(pm)
    _, p_other = _run(env, tmp_path, "seed8", engine=engine, temperature=1.0, samples=3, seed=8)
    assert _samples(p_other) != _samples(p4)
    gens = [g for recs in _samples(p4).values() for r in recs for g in r]
    assert len(set(gens)) > len(gens) // 2  # the samples of one example differ from each other too

    # the recorded protocol, the votes and the scored outcome
    dec = res4["tasks"]["pubmedqa"]["decoding"]
    assert (dec["strategy"], dec["temperature"], dec["top_p"], dec["samples"], dec["seed"]) == \
        ("self-consistency", 1.0, 1.0, 3, 7)
    assert dec["vote"] == sampling.VOTE_RULE and "voted answer" in dec["scored"]
    for recs in p4.values():
        for r in recs:
            answers = [None if s["prediction"] == "missing" else s["prediction"] for s in r["samples"]]
            winner, votes = sampling.majority_vote(answers)
            assert r["prediction"] == (winner or "missing") and r["votes"] == votes
            assert r["generation"] == r["samples"][0]["generation"]
    # intervals are computed from the voted predictions (what predictions/ holds)
    from mellama_jax.eval import stats

    again = stats.intervals_from_run(str(tmp_path / "b4"))
    assert again["pubmedqa"]["metrics"] == res4["tasks"]["pubmedqa"]["intervals"]["metrics"]


def test_greedy_default_is_unchanged_and_temperature_zero_ignores_seed(env, tmp_path):
    from mellama_jax.eval import session

    engine = session.engine_from_config(_config(env), show_progress=False)
    res0, p0 = _run(env, tmp_path, "g0", engine=engine)
    _, p1 = _run(env, tmp_path, "g1", engine=engine, seed=5)
    assert p0 == p1
    ids = [engine.tokenizer.encode(r["prompt"]) for r in p0["pubmedqa"]]
    texts, _, _ = engine.generate(ids, 6)  # the plain greedy path
    assert [r["generation"] for r in p0["pubmedqa"]] == texts
    dec = res0["tasks"]["pubmedqa"]["decoding"]
    assert (dec["strategy"], dec["samples"], dec["seed"], dec["top_p"], dec["cot"]) == ("greedy", 1, None, None, False)
    assert "samples" not in p0["pubmedqa"][0]


def test_cot_prompts_and_protocol_record(env, tmp_path):
    res, p = _run(env, tmp_path, "cot", cot=True)
    task = res["tasks"]["pubmedqa"]
    assert task["decoding"]["cot"] is True and task["decoding"]["answer_extraction"] == sampling.EXTRACTION_RULE
    assert all(sampling.COT_INSTRUCTION in r["prompt"] and "answer_line" in r for r in p["pubmedqa"])
    # compare.py treats the switch as protocol: a CoT run and a plain run are not compared
    from mellama_jax.eval import compare

    _run(env, tmp_path, "plain")
    with pytest.raises(compare.ComparisonError, match=r"decoding\.cot"):
        compare.compare_runs(str(tmp_path / "plain"), str(tmp_path / "cot"), iterations=10)


def test_compare_refuses_different_sampling_settings(env, tmp_path):
    from mellama_jax.eval import compare, session

    engine = session.engine_from_config(_config(env), show_progress=False)
    _run(env, tmp_path, "s1", engine=engine, temperature=0.7, samples=2, seed=1)
    _run(env, tmp_path, "s2", engine=engine, temperature=0.7, samples=2, seed=2)
    with pytest.raises(compare.ComparisonError, match=r"decoding\.seed"):
        compare.compare_runs(str(tmp_path / "s1"), str(tmp_path / "s2"), iterations=10)


@pytest.mark.parametrize("override,message", [
    ("--config.decoding.samples=0", "config.decoding.samples=0: must be >= 1"),
    ("--config.decoding.temperature=-0.5", "config.decoding.temperature=-0.5: must be >= 0"),
    ("--config.decoding.top_p=0.0", "config.decoding.top_p=0.0: must be in (0, 1]"),
    ("--config.decoding.top_p=1.5", "config.decoding.top_p=1.5: must be in (0, 1]"),
    ("--config.decoding.samples=3", "greedy decoding gives the same continuation every time"),
])
def test_bad_decoding_settings_fail_before_the_model_loads(override, message, tmp_path):
    from configs.eval import get_config
    from mellama_jax.config_validation import ConfigRangeError, validate_config

    c = get_config()
    key, value = override[len("--config.decoding."):].split("=")
    setattr(c.decoding, key, type(getattr(c.decoding, key))(float(value)))
    with pytest.raises(ConfigRangeError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")
                       .replace("]", r"\]")):
        validate_config(c)
    if key == "samples" and value == "0":  # and through launch.py, with a checkpoint that does not exist
        proc = subprocess.run([sys.executable, "launch.py", "--config", "configs/eval.py", "--workdir",
                               str(tmp_path / "w"), "--config.checkpoint=/nonexistent", override], cwd=REPO,
                              capture_output=True, text=True, timeout=120, env={**os.environ, "JAX_PLATFORMS": "cpu"})
        assert proc.returncode != 0 and message in proc.stderr, proc.stderr[-2000:]


def test_protocol_sensitivity_refuses_bad_variants_before_the_model_loads(env, tmp_path):
    out = tmp_path / "sens"
    base = [sys.executable, "-m", "mellama_jax.cli.protocol_sensitivity", "--config", "configs/eval.py",
            "--out", str(out), f"--config.data_dir={env['data']}", "--config.tasks=pubmedqa"]
    run = lambda *extra: subprocess.run(base + list(extra), cwd=REPO, capture_output=True, text=True, timeout=120,
                                        env={**os.environ, "JAX_PLATFORMS": "cpu"})
    proc = run(f"--config.checkpoint={env['model']}", "--sc_samples=0")
    assert proc.returncode == 2 and "variant mellama-release__sc: config.decoding.samples=0" in proc.stderr, proc.stderr
    proc = run("--config.checkpoint=/nonexistent/model", "--prompt_sets=mellama-release,no-such-set")
    assert proc.returncode == 2 and "/nonexistent/model" in proc.stderr, proc.stderr
    assert not out.exists()
