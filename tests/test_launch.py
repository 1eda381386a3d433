"""launch.py: config errors fail fast naming the key; a tiny run writes config, metrics, events."""
import glob
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "pretrain.py")


def launch(workdir, *args, variant="tiny"):
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=2")
    return subprocess.run([sys.executable, os.path.join(ROOT, "launch.py"), "--config",
                           f"{CONFIG}:{variant}", "--workdir", str(workdir), *args],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_config_typo_and_wrong_type_fail_before_any_work(tmp_path):
    r = launch(tmp_path / "w", "--config.trian.steps=3")
    assert r.returncode == 2
    assert "unknown config key 'trian' in --config.trian.steps" in r.stderr
    assert 'Did you mean "train"' in r.stderr
    r = launch(tmp_path / "w", "--config.train.steps=abc")
    assert r.returncode == 2 and "--config.train.steps=abc" in r.stderr
    r = launch(tmp_path / "w", "--config.model.num_hidden_layers=two")
    assert r.returncode == 2 and "config.model.num_hidden_layers" in r.stderr
    r = launch(tmp_path / "w", "--config.model.dtype=float8")
    assert r.returncode == 2 and "LlamaConfig.dtype='float8'" in r.stderr
    r = launch(tmp_path / "w", "--config.optim.schedule=cosinus")
    assert r.returncode == 2 and "config.optim.schedule='cosinus'" in r.stderr
    r = launch(tmp_path / "w", variant="nonexistent")
    assert r.returncode != 0 and "unknown variant 'nonexistent'" in r.stderr
    assert not (tmp_path / "w").exists()  # nothing was written, nothing compiled or read


def test_tiny_run_writes_config_metrics_tensorboard(tmp_path):
    w = tmp_path / "w"
    r = launch(w, "--config.train.steps=6", "--config.train.log_every=2",
               "--config.train.eval_every=3", "--config.model.num_hidden_layers=1",
               "--config.hardware.peak_tflops=1.0")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "step 6/6" in r.stdout
    saved = json.loads((w / "experiment_config.json").read_text())
    assert saved["train"]["steps"] == 6 and saved["model"]["num_hidden_layers"] == 1
    model_cfg = json.loads((w / "checkpoints" / "model_config.json").read_text())
    assert model_cfg["num_hidden_layers"] == 1
    recs = [json.loads(line) for line in (w / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in recs if "loss" in r]
    assert [r["step"] for r in train] == [2, 4, 6]
    for key in ("learning_rate", "grad_norm", "tokens_per_second", "step_time", "mfu",
                "data/biomedical/fraction", "data/clinical/fraction", "data/general/fraction"):
        assert key in train[-1], key
    assert 0 < train[-1]["mfu"] < 1  # peak overridden to 1 TFLOP/s
    assert abs(sum(train[-1][f"data/{s}/fraction"] for s in ("biomedical", "clinical", "general")) - 1) < 1e-6
    evals = [r for r in recs if "eval/biomedical/loss" in r]
    assert [r["step"] for r in evals] == [3, 6]
    assert all(f"eval/{s}/loss" in evals[0] for s in ("biomedical", "clinical", "general"))
    assert glob.glob(str(w / "tensorboard" / "events.out.tfevents.*"))
    assert (w / "checkpoints" / "6" / "params").is_dir()


@pytest.mark.slow
def test_demo_variant_trains_on_bundled_corpus(tmp_path):
    """The README's demo: real samples + bundled tokenizer; the loss visibly falls (~1 min)."""
    w = tmp_path / "demo"
    r = launch(w, "--config.train.steps=40", "--config.train.eval_every=0", variant="demo")
    assert r.returncode == 0, r.stderr[-3000:]
    recs = [json.loads(line) for line in (w / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in recs if "loss" in r]
    assert train[-1]["loss"] < train[0]["loss"] - 1.0
    assert json.loads((w / "checkpoints" / "model_config.json").read_text())["vocab_size"] == 2000
