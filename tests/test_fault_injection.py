"""Fault injection (preemption and crashes must never cost a run): kill -9 at random points including mid-save, a corrupt newest
checkpoint, a torn metrics.jsonl and a second writer, then resume: the run ends bit-identical to
an uninterrupted one (losses and final params) or fails with a clear message, and no committed
checkpoint is lost (a corrupt one is moved to checkpoints.corrupt/, never deleted).

The default run injects each fault once; `-m slow` repeats the kill/corrupt/resume cycle at
several random points (seeded, so a failure is reproducible).
"""
from __future__ import annotations

import glob
import json
import os
import random
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from mellama_jax.checkpoint.orbax_io import read_model_config, restore_params  # noqa: E402
from mellama_jax.model.llama import param_shapes  # noqa: E402

STEPS = 8
ARGS = ["--config", os.path.join(ROOT, "configs", "pretrain.py") + ":tiny", "--config.data.seq_len=16",
        "--config.model.num_hidden_layers=1", f"--config.train.steps={STEPS}", "--config.train.log_every=1",
        "--config.train.checkpoint_every=2", "--config.train.eval_every=0", "--config.train.keep_checkpoints=3"]


def launch(workdir, *extra):
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=2")
    return subprocess.Popen([sys.executable, os.path.join(ROOT, "launch.py"), *ARGS, "--workdir", str(workdir),
                             *extra], env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(proc, timeout=300):
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-3000:]
    return out


def committed_steps(workdir):
    d = os.path.join(workdir, "checkpoints")
    return sorted(int(n) for n in os.listdir(d) if n.isdigit()
                  and os.path.exists(os.path.join(d, n, "commit_success.txt"))) if os.path.isdir(d) else []


def losses(workdir):
    rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    by_step = {}
    for r in rows:
        if "loss" in r:
            assert r["step"] not in by_step, f"step {r['step']} logged twice"
            by_step[r["step"]] = (r["loss"], r["grad_norm"])
    return by_step


def params_at(workdir, step=STEPS):
    ckpt = os.path.join(workdir, "checkpoints")
    one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=one),
                          param_shapes(read_model_config(ckpt)))
    return jax.device_get(restore_params(os.path.join(ckpt, str(step), "params"), target))


def kill_at_random_point(workdir, rng: random.Random, delay: str):
    """Starts a run and kill -9s it: preferably while a checkpoint is being written (an Orbax
    temporary directory exists), else at a random moment after the first committed checkpoint."""
    p = launch(workdir, delay)
    deadline = time.time() + 240
    t_kill = None
    while p.poll() is None and time.time() < deadline:
        steps = committed_steps(workdir)
        saving = glob.glob(os.path.join(workdir, "checkpoints", "*orbax-checkpoint-tmp*"))
        if steps and saving and rng.random() < 0.5:
            break  # mid-save
        if steps and t_kill is None:
            t_kill = time.time() + rng.uniform(0.0, 1.2)
        if t_kill is not None and time.time() >= t_kill:
            break
        time.sleep(0.005)
    before = committed_steps(workdir)
    p.send_signal(signal.SIGKILL)
    out = p.communicate()[0]
    return p.returncode, before, out


def corrupt_newest(workdir):
    steps = committed_steps(workdir)
    newest = os.path.join(workdir, "checkpoints", str(steps[-1]))
    files = [f for f in glob.glob(os.path.join(newest, "params", "**", "*"), recursive=True)
             if os.path.isfile(f) and "/d/" in f]
    for f in files:
        data = bytearray(open(f, "rb").read())
        data[len(data) // 2] ^= 0x5A
        open(f, "wb").write(data)
    return steps[-1]


def tear_metrics(workdir):
    with open(os.path.join(workdir, "metrics.jsonl"), "a") as f:
        f.write('{"step": 99, "loss": 1.2')  # a write cut by the kill


def check_against(ref_losses, ref_params, workdir):
    got = losses(workdir)
    assert sorted(got) == list(range(1, STEPS + 1))
    for s, v in ref_losses.items():
        assert got[s] == v, (s, got[s], v)
    jax.tree.map(np.testing.assert_array_equal, params_at(workdir), ref_params)


def test_kill_mid_save_second_writer_corrupt_newest_torn_metrics_then_exact_resume(tmp_path):
    ref, run = tmp_path / "ref", tmp_path / "run"
    p_ref = launch(ref)
    delay = "--config.train.debug_step_delay_s=0.4"
    first = launch(run, delay)
    # A second writer while the first runs: refused at once, naming the holder; nothing written.
    deadline = time.time() + 240
    while not os.path.exists(run / "metrics.jsonl"):
        assert first.poll() is None, first.communicate()[0][-3000:]
        assert time.time() < deadline
        time.sleep(0.05)
    second = launch(run, delay)
    out2 = second.communicate(timeout=240)[0]
    assert second.returncode == 3, out2[-2000:]
    assert f"is in use by pid {first.pid}" in out2 and "one run per workdir" in out2
    # kill -9 the first run at the first moment a checkpoint is being written after step 4
    while first.poll() is None and not (len(committed_steps(run)) >= 2 and glob.glob(
            str(run / "checkpoints" / "*orbax-checkpoint-tmp*"))):
        assert time.time() < deadline
        time.sleep(0.002)
    before = committed_steps(run)
    first.send_signal(signal.SIGKILL)
    first.communicate()
    assert committed_steps(run)[: len(before)] == before  # nothing committed was lost
    bad = corrupt_newest(run)
    tear_metrics(run)
    out = finish(launch(run))
    assert f"skipped checkpoint step {bad}:" in out and "resumed from" in out
    assert os.listdir(run / "checkpoints.corrupt")[0].startswith(f"{bad}-")  # moved aside, not deleted
    finish(p_ref)
    check_against(losses(ref), params_at(ref), run)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_random_kills_and_corruptions_resume_exactly(tmp_path, seed):
    """Several kill -9s per run at random points (mid-save when the dice say so), sometimes
    followed by a corrupt newest checkpoint or a torn metrics line; finally the run completes."""
    rng = random.Random(seed)
    ref, run = tmp_path / "ref", tmp_path / "run"
    finish(launch(ref))
    ref_losses, ref_params = losses(ref), params_at(ref)
    for _ in range(3):
        if STEPS in committed_steps(run):
            break
        rc, before, out = kill_at_random_point(run, rng, "--config.train.debug_step_delay_s=0.3")
        if rc == 0:
            break  # finished before the kill landed
        assert committed_steps(run)[: len(before)] == before, out[-2000:]
        if committed_steps(run) and rng.random() < 0.5:
            corrupt_newest(run)
        if os.path.exists(run / "metrics.jsonl") and rng.random() < 0.5:
            tear_metrics(run)
    finish(launch(run))
    check_against(ref_losses, ref_params, run)
