"""Sweeps under bad input and faults, without training anything: finished points are fixtures
(an experiment_config.json and a metrics.jsonl), and a point that must run is run by a stand-in
interpreter that writes the records launch.py would. Covered: a rerun with other settings is refused
naming the keys, a torn last metrics line is tolerated (a corrupt middle line is an error naming
file:line), every point's config is validated before anything runs or is written, and SLURM's
output file lies in a directory that exists at submit time."""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import pytest
from absl import flags

from mellama_jax.cli.config_flags import define_config_flag
from mellama_jax.sweep import IGNORED_KEYS, check_points, config_differences, plan, point_config, run
from mellama_jax.sweep.table import is_finished, read_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SWEEP = os.path.join(ROOT, "configs", "sweep.py")
BASE = ["--config.base.model.num_hidden_layers=1", "--config.base.data.seq_len=16",
        "--config.base.train.global_batch_size=4", "--config.base.train.steps=4", "--config.plot=false"]
GRID = "--config.grid=data.mixture.clinical=0,4"
SOURCES = ("biomedical", "clinical", "general")


def sweep_config(*args, variant="mixture:tiny"):
    argv = ["launch.py", "--config", f"{SWEEP}:{variant}", *args]
    fv = flags.FlagValues()
    holder = define_config_flag("config", flag_values=fv, argv=argv)
    fv(argv)
    return holder.value


def _records(steps=4) -> str:
    train = {"step": steps, "loss": 2.5, **{f"data/{s}/tokens": 64 for s in SOURCES}}
    ev = {"step": steps, **{f"eval/{s}/loss": 3.0 for s in SOURCES}, **{f"eval/{s}/perplexity": 20.0 for s in SOURCES}}
    return json.dumps(train) + "\n" + json.dumps(ev) + "\n"


def finish_points(config, workdir) -> list[str]:
    """Every point of `config` as launch.py leaves a finished one: its effective config and final records."""
    dirs = []
    for e in plan(config, str(workdir))["points"]:
        os.makedirs(e["workdir"])
        with open(os.path.join(e["workdir"], "experiment_config.json"), "w") as f:
            f.write(point_config(config.base, e["point"]).to_json_best_effort(indent=2, sort_keys=True))
        with open(os.path.join(e["workdir"], "metrics.jsonl"), "w") as f:
            f.write(_records())
        dirs.append(e["workdir"])
    return dirs


def test_rerun_with_other_base_settings_is_refused_naming_every_differing_key(tmp_path, capsys):
    w = tmp_path / "sweep"
    finish_points(sweep_config(GRID, *BASE), w)
    run(sweep_config(GRID, *BASE), str(w))
    assert capsys.readouterr().out.count("finished, skipped") == 2
    table = (w / "sweep.csv").read_text()
    # Keys that cannot change results do not make a point stale.
    run(sweep_config(GRID, *BASE, "--config.base.train.log_every=1", "--config.base.train.checkpoint_every=1"), str(w))
    assert capsys.readouterr().out.count("finished, skipped") == 2
    with pytest.raises(RuntimeError) as err:
        run(sweep_config(GRID, *BASE, "--config.base.optim.learning_rate=0.5", "--config.base.model.preset=small"),
            str(w))
    msg = str(err.value)
    assert "optim.learning_rate=0.003 (now 0.5)" in msg and "model.preset='tiny' (now 'small')" in msg, msg
    assert "finished, skipped" not in capsys.readouterr().out
    assert (w / "sweep.csv").read_text() == table
    with pytest.raises(RuntimeError, match=r"train\.steps=4 \(now 5\)"):
        run(sweep_config(GRID, *BASE, "--config.base.train.steps=5"), str(w))


def test_point_config_is_what_launch_py_parses_from_the_point_command(tmp_path):
    config = sweep_config("--config.base.data.sources_spec=bio=jsonl:/c/bio/*.jsonl;general",
                          "--config.base.data.mixture.bio=15", "--config.base.optim.learning_rate=0.01",
                          "--config.grid=data.mixture.bio=0,15;optim.b2=0.9,0.99", variant="mixture")
    for e in plan(config, str(tmp_path))["points"]:
        cmd = e["train"]
        argv = ["launch.py", *[a for a in cmd[cmd.index("--config"):] if a != "--workdir" and a != e["workdir"]]]
        fv = flags.FlagValues()
        launched = define_config_flag("config", flag_values=fv, argv=argv)
        fv(argv)
        saved = json.loads(launched.value.to_json_best_effort(indent=2, sort_keys=True))
        expected = json.loads(point_config(config.base, e["point"]).to_json_best_effort(sort_keys=True))
        assert config_differences(saved, expected) == [], e["point"].name
        # and no key is ignored that a result depends on
        assert all(k.split(".")[0] in ("train", "hardware", "distributed") for k in IGNORED_KEYS)


def test_torn_last_metrics_line_is_tolerated_and_a_corrupt_middle_line_is_named(tmp_path):
    p = tmp_path / "point"
    p.mkdir()
    good = _records()
    (p / "metrics.jsonl").write_text(good + '{"step": 4, "eval/clinical/lo')  # kill -9 mid-write
    assert len(read_metrics(str(p))) == 2 and is_finished(str(p), 4, [])
    (p / "metrics.jsonl").write_text(good.splitlines()[0] + "\n" + '{"step": 4, "eval/clin')
    assert not is_finished(str(p), 4, [])  # the torn record was the final evaluation: rerun it
    (p / "metrics.jsonl").write_text(good.splitlines()[0] + '\n{"step": 4, "eval/cl\n' + good.splitlines()[1] + "\n")
    with pytest.raises(ValueError, match=f"{p / 'metrics.jsonl'}:2: not a complete metrics record"):
        read_metrics(str(p))


def test_sweep_rerun_resumes_a_point_whose_last_metrics_line_is_torn(tmp_path, capsys):
    w = tmp_path / "sweep"
    stand_in = tmp_path / "fake_python"  # what launch.py's resume does: drop the torn line, finish
    stand_in.write_text("#!/bin/sh\nwhile [ \"$1\" != --workdir ]; do shift; done\n"
                        f"printf '%s' '{_records()}' > \"$2/metrics.jsonl\"\necho 'resumed from step 2'\n")
    stand_in.chmod(stand_in.stat().st_mode | stat.S_IXUSR)
    args = (GRID, *BASE, f"--config.python={stand_in}")
    dirs = finish_points(sweep_config(*args), w)
    with open(os.path.join(dirs[1], "metrics.jsonl"), "w") as f:
        f.write(json.dumps({"step": 2, "loss": 3.0}) + "\n" + '{"step": 4, "lo')
    out = run(sweep_config(*args), str(w))
    stdout = capsys.readouterr().out
    assert stdout.count("finished, skipped") == 1 and "[clinical=4] resumed" in stdout
    assert len(out["rows"]) == 2


def test_bad_grid_values_are_refused_before_any_point_runs(tmp_path):
    with pytest.raises(ValueError, match=r"point learning_rate=-1: config\.optim\.learning_rate=-1\.0"):
        check_points(sweep_config("--config.grid=optim.learning_rate=0.1,-1", *BASE))
    with pytest.raises(ValueError, match=r"point clinical=0_seq_len=0: config\.data\.seq_len=0"):
        check_points(sweep_config("--config.grid=data.mixture.clinical=0;data.seq_len=16,0", *BASE))
    # Through launch.py: exit 2 naming the point and key, and nothing written.
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    procs = {grid: subprocess.Popen([sys.executable, os.path.join(ROOT, "launch.py"), "--config",
                                     f"{SWEEP}:mixture:tiny", "--workdir", str(tmp_path / f"w{i}"),
                                     f"--config.grid={grid}", *BASE], env=env, cwd=ROOT, text=True,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for i, grid in enumerate(["optim.learning_rate=0.1,-1", "optim.nosuch=1,2"])}
    for (grid, proc), msg in zip(procs.items(), ["point learning_rate=-1: config.optim.learning_rate=-1.0",
                                                  "'optim.nosuch' is not a key of the base"]):
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 2 and msg in err and "Traceback" not in err, (grid, err[-2000:])
    assert not any(tmp_path.glob("w*"))


def test_emit_slurm_output_goes_to_a_directory_that_exists_at_submit_time(tmp_path):
    w = tmp_path / "sweep"
    run(sweep_config(GRID, *BASE, "--config.emit=slurm"), str(w))
    scripts = sorted((w / "slurm").glob("*.sbatch"))
    assert len(scripts) == 2
    for s in scripts:
        out = [x for x in s.read_text().splitlines() if x.startswith("#SBATCH --output=")]
        assert len(out) == 1
        path = out[0].split("=", 1)[1]
        assert os.path.isdir(os.path.dirname(path)) and "%j" in os.path.basename(path), path
        assert s.stem in os.path.basename(path)
