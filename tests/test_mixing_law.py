"""The mixing-law fit on sweeps where the true law is planted: parameters and the best weights are
recovered (noise-free and with small noise), too few points are refused, the proposal keeps its
constraint and beats every swept point it should, and a fabricated finished sweep directory gets
fit.json / fit.md / fit.png and its proposal point from the sweep command's own code."""
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from mellama_jax.sweep import mixing_law as ml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCES = ["biomedical", "clinical", "general"]
COLS = [f"eval/{s}/loss" for s in SOURCES]
DOMAIN = [("eval/biomedical/loss", 1.0), ("eval/clinical/loss", 1.0)]
GENERAL = [("eval/general/loss", 1.0)]
# Planted Ye law, one row per target (biomedical, clinical, general held-out loss): more of a
# source lowers its own loss most.
C = np.array([2.0, 2.3, 2.1])
K = np.array([1.0, 1.2, 0.9])
T = np.array([[-2.0, -0.5, 0.3], [-0.3, -3.0, 0.2], [0.4, 0.1, -2.5]])
BASE = np.array([15.0, 1.0, 4.0]) / 20.0  # Me-LLaMA's 15:1:4


def planted(r):
    return C + K * np.exp(np.atleast_2d(r) @ T.T)


def swept(n=10, seed=0, noise=0.0):
    w = np.random.default_rng(seed).dirichlet([2.0, 2.0, 2.0], size=n)
    y = planted(w) + noise * np.random.default_rng(seed + 1).normal(size=(n, 3))
    return w, {c: y[:, i] for i, c in enumerate(COLS)}


def planted_best(cand, eps):
    """The candidate the planted law itself would pick (same rule as propose's constrained)."""
    y = planted(cand)
    dom, gen = y[:, 0] + y[:, 1], y[:, 2]
    limit = planted(BASE)[0, 2] + eps
    return cand[np.argmin(np.where(gen <= limit, dom, np.inf))], limit


@pytest.mark.parametrize("noise,tol_param,tol_pred", [(0.0, 1e-8, 1e-10), (1e-3, 0.05, 0.015)])
def test_ye_fit_recovers_the_planted_law(noise, tol_param, tol_pred):
    w, y = swept(noise=noise)
    law, quality = ml.fit_law(w, y, SOURCES, "ye")
    for i, col in enumerate(COLS):
        co = law.coefficients(col)
        # The proportions sum to 1, so t is known up to a constant (absorbed by k): gauge sum t = 0.
        t = T[i] - T[i].mean()
        assert co["c"] == pytest.approx(C[i], abs=tol_param)
        assert co["k"] == pytest.approx(K[i] * np.exp(T[i].mean()), abs=tol_param)
        assert [co["t"][s] for s in SOURCES] == pytest.approx(t, abs=tol_param)
        q = quality[col]
        assert q["n"] == 10 and q["params"] == 4  # c, k and the 2 free directions of the simplex
        assert q["r2"] > (1 - 1e-12 if noise == 0 else 0.999)
        assert q["loo_rmse"] < (1e-8 if noise == 0 else 3 * noise)
    # Over the whole simplex, corners included (beyond the swept points: extrapolated).
    test = np.random.default_rng(7).dirichlet([1.0, 1.0, 1.0], size=200)
    pred = np.stack([law.predict_target(c, test) for c in COLS], axis=1)
    assert np.abs(pred - planted(test)).max() < tol_pred


@pytest.mark.parametrize("noise", [0.0, 1e-3])
def test_proposal_recovers_the_best_weights_and_keeps_its_constraint(noise):
    w, y = swept(noise=noise)
    law, _ = ml.fit_law(w, y, SOURCES, "ye")
    eps = 0.02
    p = ml.propose(law, w, [f"p{i}" for i in range(len(w))], DOMAIN, GENERAL, "constrained", eps,
                   baseline=BASE, candidates=5000)
    cand = p.pop("_candidates")[0]
    r = np.array([p["weights"][s] for s in SOURCES])
    assert r.sum() == pytest.approx(1.0) and r.min() >= 0
    # Its constraint holds under the fitted law.
    assert p["predicted"]["general"] <= p["baseline"]["general"] + eps + 1e-12
    assert p["limit_general"] == pytest.approx(p["baseline"]["general"] + eps)
    # The planted law's own choice among the same candidates: recovered exactly without noise.
    best, limit = planted_best(cand, eps)
    if noise == 0:
        assert r == pytest.approx(best, abs=1e-12)
    else:
        assert np.abs(r - best).sum() < 0.05
    true = planted(r)[0]
    assert true[2] <= limit + 3 * noise
    # Better (under the planted law) than every swept point that keeps the planted constraint.
    ys = planted(w)
    for i in range(len(w)):
        if ys[i, 2] <= limit:
            assert true[0] + true[1] <= ys[i, 0] + ys[i, 1] + 10 * noise
    assert any(ys[i, 2] <= limit for i in range(len(w)))  # the comparison is not vacuous


def test_weighted_objective_and_front():
    w, y = swept()
    law, _ = ml.fit_law(w, y, SOURCES, "ye")
    p = ml.propose(law, w, [f"p{i}" for i in range(len(w))], DOMAIN, GENERAL, "weighted", general_weight=2.0,
                   baseline=BASE, candidates=4000)
    cand, dom, gen = p.pop("_candidates")
    assert p["predicted"]["objective"] == pytest.approx(np.min(dom + 2.0 * gen))
    assert all(p["predicted"]["objective"] <= s["objective"] + 1e-12 for s in p["swept"])
    front = p["front"]
    gens = [f["general"] for f in front]
    doms = [f["domain"] for f in front]
    assert gens == sorted(gens) and doms == sorted(doms, reverse=True)  # a trade-off: less forgetting costs gain
    for f in front[::10]:  # nothing beats a front point on both
        assert not np.any((dom < f["domain"] - 1e-12) & (gen < f["general"] - 1e-12))


def test_fewer_points_than_parameters_are_refused():
    w, y = swept(n=3)
    with pytest.raises(ml.MixingLawError, match=r"3 points but the ye law has 4 parameters"):
        ml.fit_law(w, y, SOURCES, "ye")
    ml.fit_law(w, y, SOURCES, "linear")  # 3 parameters: allowed, exactly determined
    line = np.array([[15, c, 4] for c in (0.0, 1.0)]) / np.array([[19.0], [20.0]])
    with pytest.raises(ml.MixingLawError, match=r"2 points but the ye law has 3 parameters per target \(1 swept"):
        ml.fit_law(line, {c: planted(line)[:, i] for i, c in enumerate(COLS)}, SOURCES, "ye")
    same = np.tile(BASE, (4, 1))
    with pytest.raises(ml.MixingLawError, match="same mixture proportions"):
        ml.fit_law(same, {c: planted(same)[:, i] for i, c in enumerate(COLS)}, SOURCES, "ye")


def test_a_one_axis_sweep_is_fitted_and_proposed_along_its_line():
    """Sweeping only the clinical weight moves r along one line: the law is identified there only,
    and the proposal stays on it."""
    clin = np.array([0.0, 0.5, 1.0, 2.0, 4.0, 8.0])
    w = np.stack([np.full_like(clin, 15.0), clin, np.full_like(clin, 4.0)], axis=1)
    w = w / w.sum(axis=1, keepdims=True)
    law, quality = ml.fit_law(w, {c: planted(w)[:, i] for i, c in enumerate(COLS)}, SOURCES, "ye")
    assert law.dims == 1 and quality[COLS[1]]["params"] == 3
    line = np.stack([np.full(50, 15.0), np.linspace(0, 8, 50), np.full(50, 4.0)], axis=1)
    line = line / line.sum(axis=1, keepdims=True)
    for i, c in enumerate(COLS):
        assert np.abs(law.predict_target(c, line) - planted(line)[:, i]).max() < 1e-8
    p = ml.propose(law, w, [str(x) for x in clin], DOMAIN, GENERAL, "constrained", 0.01, baseline=BASE,
                   candidates=2000)
    r = np.array([p["weights"][s] for s in SOURCES])
    assert r[0] / r[2] == pytest.approx(15 / 4) and p["baseline"]["in_swept_span"]


def test_linear_and_loglinear_laws_recover_planted_regressions():
    w, _ = swept(n=8)
    coef = np.array([0.5, -1.0, 0.5])  # sum 0: the gauge the fit reports
    y = 3.0 + w @ coef
    law, q = ml.fit_law(w, {"eval/general/loss": y}, SOURCES, "linear", ridge=0.0)
    co = law.coefficients("eval/general/loss")
    assert co["intercept"] == pytest.approx(3.0, abs=1e-10)
    assert [co["coef"][s] for s in SOURCES] == pytest.approx(coef, abs=1e-10)
    assert q["eval/general/loss"]["loo_rmse"] < 1e-10
    law, _ = ml.fit_law(w, {"eval/general/loss": np.exp(y)}, SOURCES, "loglinear", ridge=0.0)
    assert [law.coefficients("eval/general/loss")["coef"][s] for s in SOURCES] == pytest.approx(coef, abs=1e-10)


def test_terms():
    assert ml.parse_terms("biomedical, clinical:2,bench/pubmedqa/accuracy:0.5") == [
        ("eval/biomedical/loss", 1.0), ("eval/clinical/loss", 2.0), ("bench/pubmedqa/accuracy", 0.5)]
    with pytest.raises(ml.MixingLawError, match="not a number"):
        ml.parse_terms("clinical:x")


# ----------------------------------------------------------------------------------------------
# A finished sweep directory, fabricated as the sweep writes it (no training)

STEPS = 4


def _sweep_config(*overrides):
    from configs import sweep as sweep_configs

    c = sweep_configs.get_config("mixture:tiny")
    c.base.train.steps = STEPS
    for key, value in overrides:
        node = c
        *parents, leaf = key.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = value
    return c


def _fabricate_point(pdir, mixture, config):
    """What launch.py leaves in a point's workdir: its whole experiment config (what a rerun compares
    with the sweep's) and metrics.jsonl with the final eval."""
    os.makedirs(pdir, exist_ok=True)
    saved = config.base.copy_and_resolve_references()
    with saved.unlocked():
        for s, w in mixture.items():
            saved.data.mixture[s] = float(w)
    total = sum(mixture.values())
    r = np.array([mixture[s] / total for s in SOURCES])
    losses = planted(r)[0]
    with open(os.path.join(pdir, "experiment_config.json"), "w") as f:
        f.write(saved.to_json_best_effort())
    with open(os.path.join(pdir, "metrics.jsonl"), "w") as f:
        f.write(json.dumps({"step": STEPS, "loss": 3.0, **{f"data/{s}/tokens": int(100 * x)
                                                           for s, x in zip(SOURCES, r)}}) + "\n")
        f.write(json.dumps({"step": STEPS, **{f"eval/{s}/loss": float(v) for s, v in zip(SOURCES, losses)},
                            **{f"eval/{s}/perplexity": float(np.exp(v)) for s, v in zip(SOURCES, losses)}}) + "\n")
    return losses


def test_finished_sweep_directory_gets_fit_files_and_its_proposal_point(tmp_path, capsys):
    from mellama_jax.sweep import plan, run

    w = str(tmp_path / "sweep")
    config = _sweep_config(("fit.max_general_increase", 0.02))
    for p in plan(config, w)["points"]:  # the default grid: clinical=0,1,4 x general=0,4
        mixture = {"biomedical": 15.0, "clinical": 1.0, "general": 4.0, **{k.split(".")[-1]: v
                                                                          for k, v in p["point"].as_dict().items()}}
        _fabricate_point(p["workdir"], mixture, config)
    out = run(config, w)
    assert "rerun" not in out["fit"] and "ye law fitted" in capsys.readouterr().out
    fit = json.loads(open(os.path.join(w, "fit.json")).read())
    assert fit["law"] == "ye" and len(fit["points"]) == 6 and fit["swept_dims"] == 2
    for col in COLS:
        assert fit["targets"][col]["quality"]["r2"] > 1 - 1e-9
        assert fit["targets"][col]["quality"]["params"] == 4
    prop = fit["proposal"]
    assert prop["baseline"]["name"] == "base mixture"
    assert prop["baseline"]["weights"] == pytest.approx(dict(zip(SOURCES, BASE)))
    assert prop["predicted"]["general"] <= planted(BASE)[0, 2] + 0.02 + 1e-9
    assert "## Proposal: minimise domain loss" in open(os.path.join(w, "fit.md")).read()
    assert open(os.path.join(w, "fit.png"), "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert not any(e["point"].name == "proposal" for e in plan(config, w)["points"])

    # With run_proposal, the proposal becomes the next point: its command sets every weight.
    config = _sweep_config(("fit.max_general_increase", 0.02), ("fit.run_proposal", True))
    entries = plan(config, w)["points"]
    assert [e["point"].name for e in entries][-1] == "proposal"
    train = entries[-1]["train"]
    for s in SOURCES:
        assert f"--config.data.mixture.{s}={prop['weights'][s]!r}" in train
    # The proposal point, finished (fabricated at its weights): skipped, tabulated, compared with the
    # prediction, never used to fit (the same proposal comes out).
    observed = _fabricate_point(entries[-1]["workdir"], prop["weights"], config)
    config.plot = False
    out = run(config, w)
    again = json.loads(open(os.path.join(w, "fit.json")).read())
    assert again["proposal"]["weights"] == prop["weights"] and len(again["points"]) == 6
    assert again["proposal"]["observed"]["eval/general/loss"] == pytest.approx(observed[2])
    assert again["proposal"]["observed"]["general"] == pytest.approx(prop["predicted"]["general"], abs=1e-6)
    assert [r["point"] for r in out["rows"]][-1] == "proposal"


def test_sweep_stage_refusals(tmp_path, capsys):
    from mellama_jax.sweep import run

    w = str(tmp_path / "sweep")
    config = _sweep_config(("grid", "data.mixture.clinical=0,4"))  # 2 points on a line: ye needs 3
    for c in (0.0, 4.0):
        _fabricate_point(os.path.join(w, "points", f"clinical={c:g}"), {"biomedical": 15.0, "clinical": c,
                                                                      "general": 4.0}, config)
    run(config, w)
    assert "no mixing-law fit (the sweep has 2 points but the ye law has 3 parameters" in capsys.readouterr().out
    assert not os.path.exists(os.path.join(w, "fit.json"))
    config.fit.run_proposal = True
    with pytest.raises(ml.MixingLawError, match="2 points but the ye law has 3 parameters"):
        run(config, w)
    for key, value, msg in [("law", "cubic", "fit.law='cubic'"), ("objective", "max", "fit.objective='max'"),
                            ("domain", " ", "fit.domain is empty")]:
        bad = _sweep_config(("fit." + key, value))
        with pytest.raises(ml.MixingLawError, match=re.escape(msg)):
            run(bad, str(tmp_path / "other"))  # refused before any point runs
        assert not os.path.exists(tmp_path / "other" / "points")


# ----------------------------------------------------------------------------------------------

def _readme_command():
    text = open(os.path.join(ROOT, "README.md")).read()
    section = text.split("#### Fitting the mixture trade-off", 1)[1]
    block = section.split("```bash\n", 1)[1].split("```", 1)[0]
    return block.replace("\\\n", " ").split()


@pytest.mark.slow
def test_readme_fit_command_runs_the_proposal(tmp_path):
    """The README's command as written (its workdir moved into tmp): 6 tiny points, the fit, the proposal."""
    argv = _readme_command()
    assert argv[:2] == ["python", "launch.py"]
    argv[argv.index("--workdir") + 1] = str(tmp_path / "sweep")
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1")
    r = subprocess.run([sys.executable, *argv[1:]], env=env, cwd=ROOT, capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    w = tmp_path / "sweep"
    fit = json.loads((w / "fit.json").read_text())
    assert len(fit["points"]) == 6 and "observed" in fit["proposal"]
    prop = json.loads((w / "points" / "proposal" / "experiment_config.json").read_text())["data"]["mixture"]
    assert prop == pytest.approx(fit["proposal"]["weights"])
    assert "sweep: point 7/7 proposal" in r.stdout
