"""Exact resume after kill -9, SIGTERM checkpointing, NaN stop, restore onto another mesh, 2 processes."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
import types

import jax
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from configs.pretrain import get_config  # noqa: E402
from mellama_jax import sharding as shd  # noqa: E402
from mellama_jax.checkpoint.load import load_pretrained  # noqa: E402
from mellama_jax.checkpoint.orbax_io import read_model_config, restore_params  # noqa: E402
from mellama_jax.model.llama import param_shapes  # noqa: E402
from mellama_jax.train import loop  # noqa: E402
from mellama_jax.train.checkpointing import Checkpointer, write_model_config  # noqa: E402
from mellama_jax.train.hooks import NonFiniteLossError  # noqa: E402
from mellama_jax.train.synthetic import SyntheticPipeline  # noqa: E402

TINY = ["--config", os.path.join(ROOT, "configs", "pretrain.py") + ":tiny",
        "--config.data.seq_len=32", "--config.train.steps=12", "--config.train.log_every=1",
        "--config.train.checkpoint_every=4", "--config.train.eval_every=0"]


def launch(workdir, *extra, devices=2, env=None):
    e = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", **(env or {}))
    return subprocess.Popen([sys.executable, os.path.join(ROOT, "launch.py"), *TINY,
                             "--workdir", str(workdir), *extra], env=e, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(proc, timeout=180):
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-3000:]
    return out


def metrics(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        recs = [json.loads(line) for line in f]
    return {r["step"]: r for r in recs if "loss" in r}


def final_params(workdir, step=12):
    """Params of one step restored onto this process's first device (any saving topology)."""
    ckpt = os.path.join(workdir, "checkpoints")
    one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=one),
                          param_shapes(read_model_config(ckpt)))
    return jax.device_get(restore_params(os.path.join(ckpt, str(step), "params"), target))


def wait_for(path, proc, timeout=120):
    t0 = time.time()
    while not os.path.exists(path):
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        assert time.time() - t0 < timeout, f"timed out waiting for {path}"
        time.sleep(0.02)


def test_sigterm_then_kill9_resume_matches_uninterrupted(tmp_path):
    """Run 1 gets SIGTERM (checkpoint + clean exit), run 2 resumes and is kill -9'd right after a
    checkpoint, run 3 resumes to the end: losses and final params equal an uninterrupted run."""
    ref, run = tmp_path / "ref", tmp_path / "run"
    slow = "--config.train.debug_step_delay_s=0.3"
    p_ref = launch(ref)
    p = launch(run, slow)
    wait_for(run / "checkpoints" / "4", p)
    p.send_signal(signal.SIGTERM)
    out = finish(p)
    assert "SIGTERM: checkpointed step" in out
    term_step = int(out.split("SIGTERM: checkpointed step ")[1].split()[0])
    assert 4 <= term_step < 12 and (run / "checkpoints" / str(term_step)).exists()
    finish(p_ref)
    # the same command resumes; kill -9 as soon as the step-8 checkpoint is in place
    p = launch(run, slow)
    wait_for(run / "checkpoints" / "8", p)
    p.send_signal(signal.SIGKILL)
    out = p.communicate()[0]
    assert p.returncode == -signal.SIGKILL and "resumed from" in out
    assert not (run / "checkpoints" / "12").exists()
    out = finish(launch(run))
    assert "resumed from" in out
    m_ref, m_run = metrics(ref), metrics(run)
    assert sorted(m_ref) == sorted(m_run) == list(range(1, 13))
    for s in m_ref:
        assert m_run[s]["loss"] == m_ref[s]["loss"], s
        assert m_run[s]["grad_norm"] == m_ref[s]["grad_norm"], s
    assert m_ref[12]["loss"] < m_ref[1]["loss"]
    jax.tree.map(np.testing.assert_array_equal, final_params(run), final_params(ref))


def test_two_process_distributed_run_matches_one_process(tmp_path):
    """2 processes x 1 CPU device (gloo, localhost coordinator) == 1 process x 2 devices."""
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    dist, single = tmp_path / "dist", tmp_path / "single"
    args = ("--config.train.steps=4", "--config.train.checkpoint_every=2")
    procs = [launch(dist, *args, devices=1, env=dict(
        JAX_COORDINATOR_ADDRESS=f"localhost:{port}", JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(i)))
        for i in range(2)]
    outs = [finish(p) for p in procs]
    assert "(2 process(es))" in outs[0]
    finish(launch(single, *args, devices=2))
    m_d, m_s = metrics(dist), metrics(single)
    assert sorted(m_d) == [1, 2, 3, 4]
    for s in m_s:
        np.testing.assert_allclose(m_d[s]["loss"], m_s[s]["loss"], rtol=1e-5)
        # Realised source fractions cover both processes' slices, not process 0's alone.
        fractions = {k: v for k, v in m_s[s].items() if k.startswith("data/") and k.endswith("/fraction")}
        assert len(fractions) == 3 and abs(sum(fractions.values()) - 1.0) < 1e-9
        assert {k: m_d[s][k] for k in fractions} == pytest.approx(fractions, abs=1e-12)
        # Tokens seen per source since step 0: summed over both processes, as in one process.
        tokens = {k: v for k, v in m_s[s].items() if k.endswith("/tokens")}
        assert len(tokens) == 3 and {k: m_d[s][k] for k in tokens} == tokens
    assert (dist / "checkpoints" / "4" / "params").is_dir()
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                 final_params(dist, 4), final_params(single, 4))


def _config(**train):
    c = get_config("tiny")
    c.data.seq_len = 32
    for k, v in train.items():
        c.train[k] = v
    return c


def test_restore_onto_different_meshes_is_identical(tmp_path):
    config = _config(steps=4)
    model_config = loop.resolve_model_config(config)
    mesh8 = shd.make_mesh(types.SimpleNamespace(data=1, fsdp=8, tensor=1))
    trainer = loop.Trainer(config, model_config, mesh8)
    state = trainer.init_state(0)
    pipe = SyntheticPipeline(vocab_size=model_config.vocab_size, seq_len=32, global_batch_size=8)
    state, _ = trainer.train_step(state, trainer.global_batch(pipe.batch(0)))
    ckpt = Checkpointer(str(tmp_path))
    write_model_config(ckpt.directory, model_config)
    ckpt.save(state, {"data_state": None})
    ckpt.wait()
    saved = jax.tree.map(lambda x: np.asarray(jax.device_get(x)), state)
    _, next_metrics = trainer.train_step(state, trainer.global_batch(pipe.batch(1)))
    for shape in (dict(data=1, fsdp=1, tensor=1), dict(data=2, fsdp=1, tensor=4)):
        n = int(np.prod(list(shape.values())))
        mesh = shd.make_mesh(types.SimpleNamespace(**shape), jax.devices()[:n])
        t2 = loop.Trainer(config, model_config, mesh)
        restored, meta = ckpt.restore(t2.abstract_state())
        assert meta["step"] == 1
        jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), b), restored, saved)
        q = restored.params["layers"]["attention"]["q_proj"]
        assert q.sharding.mesh.shape == mesh.shape
        # and training continues on the new mesh exactly where the old one would have
        _, m = t2.train_step(restored, t2.global_batch(pipe.batch(1)))
        np.testing.assert_allclose(float(m["loss"]), float(next_metrics["loss"]), rtol=1e-5)
    # the shared checkpoint contract: load_pretrained reads a training workdir
    cfg, params = load_pretrained(str(tmp_path))
    assert cfg == model_config
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), b), params, saved.params)
    ckpt.close()


def test_nonfinite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    config = _config(steps=12, checkpoint_every=2, log_every=1, eval_every=0,
                     async_checkpointing=False)
    real_build = loop.build_pipeline

    class Poisoned:  # a corrupt batch at step 5 (0-based) makes the loss NaN at step 6
        def __init__(self, inner):
            self.inner = inner

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def batch(self, step):
            b = self.inner.batch(step)
            if step == 5:
                b["loss_mask"] = np.full_like(b["loss_mask"], np.nan)
            return b

    monkeypatch.setattr(loop, "build_pipeline", lambda *a: Poisoned(real_build(*a)))
    with pytest.raises(NonFiniteLossError, match=r"step 6: loss is nan"):
        loop.run(config, str(tmp_path))
    ckpt = Checkpointer(str(tmp_path))
    assert ckpt.latest_step() == 4  # nothing written at or after the bad step
    params = final_params(str(tmp_path), 4)
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(params))
    assert max(metrics(str(tmp_path))) == 5
    ckpt.close()
