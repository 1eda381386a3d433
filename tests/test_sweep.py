"""Mixture sweeps end to end: a 3-point grid of the tiny config through launch.py, a rerun that skips
every finished point, a table equal to each point's metrics.jsonl, the plot, and slurm job scripts."""
import csv
import json
import os
import subprocess
import sys

import shutil

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SWEEP = os.path.join(ROOT, "configs", "sweep.py")
BASE = ["--config.base.model.num_hidden_layers=1", "--config.base.data.seq_len=16",
        "--config.base.train.global_batch_size=4", "--config.base.train.steps=4",
        "--config.base.train.log_every=2", "--config.base.train.eval_every=0",
        "--config.base.train.checkpoint_every=2", "--config.base.train.eval_batches=1"]
GRID = "--config.grid=data.mixture.clinical=0,1,4"


def sweep(workdir, *args):
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1")
    return subprocess.run([sys.executable, os.path.join(ROOT, "launch.py"), "--config", f"{SWEEP}:mixture:tiny",
                           "--workdir", str(workdir), *args], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=900)


def _final(path, steps):
    recs = [json.loads(x) for x in open(path).read().splitlines()]
    ev = [r for r in recs if r["step"] == steps and any(k.startswith("eval/") for k in r)][-1]
    tr = [r for r in recs if r["step"] == steps and "loss" in r][-1]
    return ev, tr


def test_three_point_tiny_sweep_runs_resumes_and_tabulates(tmp_path):
    w = tmp_path / "sweep"
    r = sweep(w, GRID, *BASE)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    names = ["clinical=0", "clinical=1", "clinical=4"]
    for n in names:
        assert f"point {names.index(n) + 1}/3 {n}" in r.stdout
        assert (w / "points" / n / "checkpoints" / "4").is_dir()
    # The table: one row per point; every number equals the point's own metrics.jsonl.
    rows = list(csv.DictReader(open(w / "sweep.csv")))
    assert [row["point"] for row in rows] == names
    for row, clinical in zip(rows, (0.0, 1.0, 4.0)):
        assert float(row["data.mixture.clinical"]) == clinical
        assert float(row["weight/clinical"]) == pytest.approx(clinical / (15 + clinical + 4))
        ev, tr = _final(w / "points" / row["point"] / "metrics.jsonl", 4)
        for s in ("biomedical", "clinical", "general"):
            assert float(row[f"eval/{s}/loss"]) == ev[f"eval/{s}/loss"]
            assert float(row[f"eval/{s}/perplexity"]) == ev[f"eval/{s}/perplexity"]
            assert int(row[f"data/{s}/tokens"]) == tr[f"data/{s}/tokens"]
        assert float(row["train_loss"]) == tr["loss"]
    assert int(rows[0]["data/clinical/tokens"]) == 0 < int(rows[2]["data/clinical/tokens"])
    md = (w / "sweep.md").read_text().splitlines()
    assert md[0].startswith("| point | data.mixture.clinical |") and len(md) == 2 + 3
    assert (w / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    manifest = json.loads((w / "sweep.json").read_text())
    assert "--config.train.steps=4" in manifest["points"][0]["train_command"]
    assert manifest["points"][0]["train_command"].endswith("--config.data.mixture.clinical=0.0")
    first_table = (w / "sweep.csv").read_text()

    # Rerunning the same command skips every finished point and rebuilds the same table.
    r = sweep(w, GRID, *BASE)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("finished, skipped") == 3 and "step " not in r.stdout
    assert (w / "sweep.csv").read_text() == first_table
    # An interrupted point (its last checkpoint and final records gone) resumes from its checkpoint
    # and ends with exactly the same numbers (data order and state are functions of the step).
    point = w / "points" / "clinical=4"
    shutil.rmtree(point / "checkpoints" / "4")
    lines = (point / "metrics.jsonl").read_text().splitlines()
    (point / "metrics.jsonl").write_text("".join(x + "\n" for x in lines if json.loads(x)["step"] <= 2))
    r = sweep(w, GRID, *BASE)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("finished, skipped") == 2 and "[clinical=4] resumed" in r.stdout
    assert (w / "sweep.csv").read_text() == first_table
    # A finished point is never reused for other settings.
    r = sweep(w, GRID, *BASE[:-5], "--config.base.train.steps=5", *BASE[-4:])
    assert r.returncode != 0 and "train.steps=4" in (r.stdout + r.stderr)


def test_emit_slurm_writes_one_job_script_per_point(tmp_path):
    w = tmp_path / "sweep"
    r = sweep(w, "--config.grid=data.mixture.clinical=0,4;data.mixture.general=0,4", *BASE,
              "--config.emit=slurm", "--config.slurm.partition=gpu", "--config.slurm.setup=module load cuda")
    assert r.returncode == 0, r.stderr[-3000:]
    manifest = json.loads((w / "sweep.json").read_text())
    scripts = sorted((w / "slurm").glob("*.sbatch"))
    assert len(scripts) == 4 == len(manifest["points"])
    for p in manifest["points"]:
        text = (w / "slurm" / f"{p['name']}.sbatch").read_text()
        assert "#SBATCH --partition=gpu" in text and "module load cuda" in text
        assert f"srun {p['train_command']}" in text
    assert (w / "slurm" / "submit_all.sh").read_text().count("sbatch ") == 4
    assert not (w / "points" / "clinical=0_general=0").exists() or not any((w / "points").iterdir())


def test_grid_errors_name_the_key(tmp_path):
    for grid, msg in [("data.mixture.nosuch=1,2", "not a key of the base"),
                      ("data.mixture.clinical=a,b", "is not a float"),
                      ("data.mixture.clinical=1,1", "repeats a value"),
                      ("data.mixture.biomedical=0;data.mixture.clinical=0;data.mixture.general=0", "every data.mixture weight is 0")]:
        r = sweep(tmp_path / "w", f"--config.grid={grid}", *BASE)
        assert r.returncode != 0 and msg in (r.stdout + r.stderr), (grid, r.stderr[-2000:])


@pytest.mark.slow
def test_sweep_with_benchmarks_tabulates_headline_scores(tmp_path):
    """Each point's checkpoint evaluated through configs/eval.py; the table carries the headline metric."""
    from eval_fixtures import write_pubmedqa_tsv
    bench = tmp_path / "bench"
    bench.mkdir()
    write_pubmedqa_tsv(str(bench / "pubmedqa.tsv"), n=6)
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1")
    w = tmp_path / "sweep"
    r = subprocess.run([sys.executable, os.path.join(ROOT, "launch.py"), "--config", f"{SWEEP}:mixture",
                        "--workdir", str(w), "--config.grid=data.mixture.clinical=0,4",
                        "--config.base.model.preset=tiny", *BASE, "--config.base.optim.warmup_steps=1",
                        "--config.base.data.reader=direct", f"--config.base.data.data_dir={tmp_path / 'data'}",
                        "--config.eval.tasks=pubmedqa", f"--config.eval.data_dir={bench}",
                        "--config.eval.protocol=loglik", "--config.eval.show_progress=false"],
                       env=env, cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    rows = list(csv.DictReader(open(w / "sweep.csv")))
    assert len(rows) == 2
    for row in rows:
        res = json.loads((w / "points" / row["point"] / "eval" / "results.json").read_text())
        metric = res["tasks"]["pubmedqa"]["headline_metric"]
        assert float(row[f"bench/pubmedqa/{metric}"]) == res["tasks"]["pubmedqa"]["metrics"][metric]


def test_base_sources_from_the_command_line_reach_every_point(tmp_path):
    """--config.base.data.sources_spec and overrides naming its new sources become each point's flags."""
    from absl import flags

    from mellama_jax.cli.config_flags import define_config_flag
    from mellama_jax.sweep import plan

    argv = ["launch.py", "--config", f"{SWEEP}:mixture",
            "--config.base.data.sources_spec=bio=jsonl:/c/bio/*.jsonl,/c/pmc/*.jsonl;general",
            "--config.base.data.mixture.bio=15", "--config.base.data.sources.bio.text_field=body",
            "--config.base.train.steps=200", "--config.grid=data.mixture.bio=0,15;data.mixture.general=4"]
    fv = flags.FlagValues()
    holder = define_config_flag("config", flag_values=fv, argv=argv)
    fv(argv)
    p = plan(holder.value, str(tmp_path))
    assert p["base_overrides"][0] == "--config.data.sources_spec=bio=jsonl:/c/bio/*.jsonl,/c/pmc/*.jsonl;general"
    assert set(p["base_overrides"][1:]) == {"--config.data.mixture.bio=15.0", "--config.data.sources.bio.text_field=body",
                                           "--config.train.steps=200"}
    names = [e["point"].name for e in p["points"]]
    assert names == ["bio=0_general=4", "bio=15_general=4"]
    cmd = p["points"][0]["train"]
    assert cmd[cmd.index("--config") + 1].endswith("configs/pretrain.py:demo")
    assert cmd[-2:] == ["--config.data.mixture.bio=0.0", "--config.data.mixture.general=4.0"]
    # The point's command, parsed as launch.py parses it, is the base plus the point.
    argv = ["launch.py", *cmd[cmd.index("--config"):]]
    argv = [a for a in argv if a != "--workdir" and not a.startswith(str(tmp_path))]
    fv = flags.FlagValues()
    point = define_config_flag("config", flag_values=fv, argv=argv)
    fv(argv)
    assert dict(point.value.data.mixture) == {"bio": 0.0, "general": 4.0}
    assert point.value.data.sources.bio.paths == ("/c/bio/*.jsonl", "/c/pmc/*.jsonl")
    assert point.value.data.sources.bio.text_field == "body" and point.value.train.steps == 200
