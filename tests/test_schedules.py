"""Learning-rate schedules: wsd (each decay shape), cyclic cosine and re-warm (from 0 and from the
init_from run's last lr) equal a closed-form reference at every step, the logged lr is the schedule's,
a run interrupted mid-decay resumes to identical learning rates and losses, and bad keys fail in
validation (before anything compiles)."""
import json
import math
import os
import signal
import subprocess
import sys
import types

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from configs.pretrain import get_config  # noqa: E402
from mellama_jax.config_validation import ConfigError, ConfigRangeError, validate_config  # noqa: E402
from mellama_jax.train import loop, optim  # noqa: E402

PEAK, MIN_RATIO = 1e-3, 0.1


# ------------------------------------------------------------------ closed-form references (floats)
def ref_shape(shape: str, p: float) -> float:
    return {"linear": 1 - p, "cosine": 0.5 * (1 + math.cos(math.pi * p)), "1-sqrt": 1 - math.sqrt(p)}[shape]


def ref_wsd(t, total, warm, decay_fraction, shape, start=0.0, peak=PEAK, end=PEAK * MIN_RATIO):
    d = max(1, min(int(round(decay_fraction * total)), total - warm))
    if t < warm:
        return start + (peak - start) * t / warm
    p = min(max((t - (total - d)) / d, 0.0), 1.0)
    return end + (peak - end) * ref_shape(shape, p)


def ref_cosine(t, total, warm, start=0.0, peak=PEAK, end=PEAK * MIN_RATIO):
    if t < warm:
        return start + (peak - start) * t / warm
    p = min((t - warm) / max(total - warm, 1), 1.0)
    return end + (peak - end) * 0.5 * (1 + math.cos(math.pi * p))


def ref_cyclic(t, total, cycles, warm, start=0.0, peak=PEAK, end=PEAK * MIN_RATIO):
    bounds = [round(i * total / cycles) for i in range(cycles + 1)]
    i = max(k for k in range(cycles) if bounds[k] <= t) if t < total else cycles - 1
    length = bounds[i + 1] - bounds[i]
    return ref_cosine(t - bounds[i], length, min(warm, length), start if i == 0 else end, peak, end)


def optim_cfg(**kw):
    base = dict(learning_rate=PEAK, min_lr_ratio=MIN_RATIO, warmup_steps=10, warmup_fraction=0.0,
                schedule="wsd", decay_fraction=0.2, decay_shape="linear", cycles=1)
    return types.SimpleNamespace(**{**base, **kw})


def lrs(schedule, total):
    return np.array([float(schedule(t)) for t in range(total + 1)])


@pytest.mark.parametrize("shape", ["linear", "cosine", "1-sqrt"])
@pytest.mark.parametrize("total,warm,frac", [(100, 10, 0.2), (97, 0, 1.0), (50, 5, 0.9), (40, 8, 0.05)])
def test_wsd_equals_closed_form_at_every_step(shape, total, warm, frac):
    sched = optim.make_schedule(optim_cfg(decay_shape=shape, warmup_steps=warm, decay_fraction=frac), total)
    want = [ref_wsd(t, total, warm, frac, shape) for t in range(total + 1)]
    np.testing.assert_allclose(lrs(sched, total), want, rtol=2e-6, atol=1e-12)
    d = max(1, min(round(frac * total), total - warm))
    got = lrs(sched, total)
    assert np.allclose(got[warm:total - d + 1], PEAK)  # stable phase held at the peak
    assert got[total] == pytest.approx(PEAK * MIN_RATIO)  # decayed to min_lr_ratio x peak at train.steps


def test_wsd_shapes_differ():
    """The three shapes are different curves (a shape key that is ignored would fail here)."""
    mid = {s: float(optim.make_schedule(optim_cfg(decay_shape=s, warmup_steps=0, decay_fraction=1.0), 100)(25))
           for s in ("linear", "cosine", "1-sqrt")}
    assert mid["1-sqrt"] < mid["linear"] < mid["cosine"]


@pytest.mark.parametrize("total,cycles,warm", [(120, 3, 10), (101, 4, 5), (30, 1, 3), (20, 20, 0)])
def test_cyclic_cosine_equals_closed_form(total, cycles, warm):
    sched = optim.make_schedule(optim_cfg(schedule="cyclic_cosine", cycles=cycles, warmup_steps=warm), total)
    want = [ref_cyclic(t, total, cycles, warm) for t in range(total + 1)]
    np.testing.assert_allclose(lrs(sched, total), want, rtol=2e-6, atol=1e-12)
    if cycles > 1 and warm:  # each later cycle warm-starts from the previous cycle's end, as Levanter's
        b = round(total / cycles)
        assert float(sched(b)) == pytest.approx(PEAK * MIN_RATIO)
        assert float(sched(b + warm)) == pytest.approx(PEAK)


@pytest.mark.parametrize("kind,ref", [("cosine", ref_cosine), ("wsd", None)])
def test_rewarm_start_equals_closed_form(kind, ref):
    start = 3.7e-4
    sched = optim.make_schedule(optim_cfg(schedule=kind, warmup_steps=12), 60, warmup_start=start)
    want = [ref_cosine(t, 60, 12, start) if ref else ref_wsd(t, 60, 12, 0.2, "linear", start)
            for t in range(61)]
    np.testing.assert_allclose(lrs(sched, 60), want, rtol=2e-6)
    assert float(sched(0)) == pytest.approx(start)


def test_legacy_schedules_unchanged():
    """cosine / linear / constant without re-warm are the optax curves they always were."""
    import optax
    cfg = optim_cfg(schedule="cosine", warmup_steps=10)
    old = optax.join_schedules([optax.linear_schedule(0.0, PEAK, 10),
                                optax.cosine_decay_schedule(PEAK, 90, alpha=MIN_RATIO)], [10])
    np.testing.assert_array_equal(lrs(optim.make_schedule(cfg, 100), 100), lrs(old, 100))


# ------------------------------------------------------------------------- training runs (tiny)
def tiny(steps=12, **optim_keys):
    c = get_config("tiny")
    c.data.seq_len = 32
    c.train.steps = steps
    c.train.log_every = 1
    c.train.eval_every = 0
    c.train.checkpoint_every = 4
    c.train.async_checkpointing = False
    c.optim.schedule = "wsd"
    c.optim.warmup_steps = 2
    c.optim.decay_fraction = 0.5
    c.optim.decay_shape = "1-sqrt"
    for k, v in optim_keys.items():
        c.optim[k] = v
    return c


def metrics(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    return {r["step"]: r for r in rows if "loss" in r}


def save_config(config, workdir):
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "experiment_config.json"), "w") as f:
        f.write(config.to_json_best_effort())


def test_restored_mid_decay_state_continues_identically(tmp_path):
    """Fast resume equivalence: the state checkpointed mid-decay (step 8 of 12), restored into a fresh
    abstract state, steps on with the same learning rates (the count lives in the optimizer state)
    and losses as the uninterrupted run, and both follow the closed form."""
    import jax
    from mellama_jax import sharding as shd
    from mellama_jax.train.checkpointing import Checkpointer
    from mellama_jax.train.synthetic import SyntheticPipeline

    config = tiny()
    model_config = loop.resolve_model_config(config)
    mesh = shd.make_mesh(types.SimpleNamespace(data=1, fsdp=1, tensor=1), jax.devices()[:1])
    trainer = loop.Trainer(config, model_config, mesh)
    pipe = SyntheticPipeline(vocab_size=model_config.vocab_size, seq_len=32, global_batch_size=8)
    state, ref = trainer.init_state(0), []
    ckpt = Checkpointer(str(tmp_path), async_save=False)
    for step in range(12):
        state, m = trainer.train_step(state, trainer.global_batch(pipe.batch(step)))
        ref.append((float(m["loss"]), float(m["learning_rate"])))
        if step + 1 == 8:
            ckpt.save(state, {"data_state": None})
    restored, meta = ckpt.restore(trainer.abstract_state())
    assert meta["step"] == 8
    got = []
    for step in range(8, 12):
        restored, m = trainer.train_step(restored, trainer.global_batch(pipe.batch(step)))
        got.append((float(m["loss"]), float(m["learning_rate"])))
    assert got == ref[8:]
    want = [ref_wsd(t, 12, 2, 0.5, "1-sqrt", peak=3e-3, end=3e-4) for t in range(12)]
    np.testing.assert_allclose([lr for _, lr in ref], want, rtol=2e-6)
    assert ref[7][1] > ref[8][1] > ref[11][1]  # the checkpoint is inside the decay
    ckpt.close()


@pytest.mark.slow
def test_interrupted_mid_decay_resumes_exactly_and_logs_the_schedule(tmp_path, monkeypatch):
    """Fast resume equivalence: a run stopped mid-decay (after its step-8 checkpoint) and run again
    logs the same learning rates and losses as an uninterrupted run, and both equal the schedule."""
    config = tiny()
    ref_dir, run_dir = str(tmp_path / "ref"), str(tmp_path / "run")
    loop.run(config, ref_dir)
    real_build = loop.build_pipeline

    class Stop(Exception):
        pass

    class StopsAt9:  # the run dies when asked for batch 9 (0-based): mid-decay, after checkpoint 8
        def __init__(self, inner):
            self.inner = inner

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def batch(self, step):
            if step == 9:
                raise Stop()
            return self.inner.batch(step)

    monkeypatch.setattr(loop, "build_pipeline", lambda *a: StopsAt9(real_build(*a)))
    with pytest.raises(Stop):
        loop.run(tiny(), run_dir)
    monkeypatch.setattr(loop, "build_pipeline", real_build)
    assert max(metrics(run_dir)) < 12
    loop.run(tiny(), run_dir)
    ref, run = metrics(ref_dir), metrics(run_dir)
    assert sorted(ref) == sorted(run) == list(range(1, 13))
    sched = optim.make_schedule(config.optim, 12)
    for s in ref:
        assert run[s]["loss"] == ref[s]["loss"], s
        assert run[s]["learning_rate"] == ref[s]["learning_rate"], s
        # the lr logged at step s is the one update s applied: the schedule at count s - 1
        assert ref[s]["learning_rate"] == pytest.approx(
            ref_wsd(s - 1, 12, 2, 0.5, "1-sqrt", peak=3e-3, end=3e-4), rel=2e-6)
        assert ref[s]["learning_rate"] == pytest.approx(float(sched(s - 1)), rel=1e-7)


def _fake_training_workdir(tmp_path, config, step):
    """A training workdir whose newest checkpoint is `step` (weights of a fresh init: the last lr
    depends only on the experiment config and the step), with its experiment_config.json."""
    import jax
    from mellama_jax import sharding as shd
    from mellama_jax.train import state as state_lib
    from mellama_jax.train.checkpointing import Checkpointer, write_model_config

    model_config = loop.resolve_model_config(config)
    mesh = shd.make_mesh(types.SimpleNamespace(data=1, fsdp=1, tensor=1), jax.devices()[:1])
    opt = optim.make_optimizer(config.optim, int(config.train.steps))
    from mellama_jax.model.llama import init_params, param_logical_axes, param_shapes
    abstract = param_shapes(model_config)
    shardings = state_lib.state_shardings(opt, abstract, shd.logical_to_sharding(
        param_logical_axes(model_config), mesh, shd.rules_as_tuple(config.sharding.rules), abstract), mesh)
    state = state_lib.create_state(lambda: init_params(model_config, jax.random.key(0)), opt,
                                   jax.random.PRNGKey(0), shardings).replace(step=jax.numpy.asarray(step, "int32"))
    workdir = str(tmp_path / "base")
    ckpt = Checkpointer(workdir, async_save=False)
    write_model_config(ckpt.directory, model_config)
    ckpt.save(state, {"data_state": None})
    ckpt.close()
    save_config(config, workdir)
    return workdir


def test_rewarm_start_from_checkpoint_config_or_metrics_and_zero(tmp_path):
    """The init_from run's last lr is its schedule at its checkpoint's last update (from its
    experiment config; from metrics.jsonl without one); the re-warmed schedule climbs from it."""
    first = tiny(steps=8, schedule="cosine", warmup_steps=2)
    base = _fake_training_workdir(tmp_path, first, 6)
    last = ref_cosine(5, 8, 2, peak=3e-3, end=3e-4)
    cont = tiny(steps=10, schedule="wsd", warmup_steps=4, learning_rate=1e-3, rewarm=True,
                rewarm_from="checkpoint")
    cont.model.init_from = base
    assert optim.rewarm_start(cont) == pytest.approx(last, rel=1e-6)
    want = [ref_wsd(t, 10, 4, 0.5, "1-sqrt", start=last, peak=1e-3, end=1e-4) for t in range(11)]
    np.testing.assert_allclose(lrs(optim.schedule_for(cont), 10), want, rtol=2e-6)
    os.remove(os.path.join(base, "experiment_config.json"))
    with open(os.path.join(base, "metrics.jsonl"), "w") as f:  # logged rows, one past the checkpoint
        for s, lr in ((5, 1.0), (6, 2.5e-4), (7, 9.0)):
            f.write(json.dumps({"step": s, "learning_rate": lr}) + "\n")
    assert optim.rewarm_start(cont) == pytest.approx(2.5e-4)
    os.remove(os.path.join(base, "metrics.jsonl"))
    with pytest.raises(ConfigError, match="neither experiment_config.json nor a learning_rate"):
        optim.rewarm_start(cont)
    cont.optim.rewarm_from = "zero"
    assert optim.rewarm_start(cont) == 0.0
    np.testing.assert_allclose(lrs(optim.schedule_for(cont), 10),
                               [ref_wsd(t, 10, 4, 0.5, "1-sqrt", peak=1e-3, end=1e-4) for t in range(11)],
                               rtol=2e-6)


@pytest.mark.slow
def test_rewarm_from_checkpoint_and_zero(tmp_path):
    """A continued run re-warms from the init_from run's last learning rate (from its experiment
    config, or its metrics.jsonl without one) or from 0, to the new peak over the warmup steps."""
    first = tiny(steps=8, schedule="cosine", warmup_steps=2)
    base = str(tmp_path / "base")
    save_config(first, base)
    loop.run(first, base)
    last = metrics(base)[8]["learning_rate"]  # the last update's lr, as logged
    assert last == pytest.approx(ref_cosine(7, 8, 2, peak=3e-3, end=3e-4), rel=2e-6)

    cont = tiny(steps=10, schedule="wsd", warmup_steps=4, learning_rate=1e-3, rewarm=True,
                rewarm_from="checkpoint")
    cont.model.init_from = base
    assert optim.rewarm_start(cont) == pytest.approx(last, rel=1e-6)
    want = [ref_wsd(t, 10, 4, 0.5, "1-sqrt", start=last, peak=1e-3, end=1e-4) for t in range(11)]
    np.testing.assert_allclose(lrs(optim.schedule_for(cont), 10), want, rtol=2e-6)
    os.remove(os.path.join(base, "experiment_config.json"))  # metrics.jsonl's last lr instead
    assert optim.rewarm_start(cont) == pytest.approx(last, rel=1e-6)
    out = str(tmp_path / "cont")
    loop.run(cont, out)
    logged = metrics(out)
    np.testing.assert_allclose([logged[s]["learning_rate"] for s in range(1, 11)], want[:10], rtol=2e-6)

    cont.optim.rewarm_from = "zero"
    assert optim.rewarm_start(cont) == 0.0
    np.testing.assert_allclose(lrs(optim.schedule_for(cont), 10),
                               [ref_wsd(t, 10, 4, 0.5, "1-sqrt", peak=1e-3, end=1e-4) for t in range(11)],
                               rtol=2e-6)


# ---------------------------------------------------------------------------------- bad input
def _pretrain(**optim_keys):
    c = get_config("tiny")
    for k, v in optim_keys.items():
        c.optim[k] = v
    return c


@pytest.mark.parametrize("value", [0.0, -0.1, 1.5, float("nan")])
def test_decay_fraction_outside_0_1_is_refused_naming_the_key(value):
    with pytest.raises(ConfigRangeError, match=r"config\.optim\.decay_fraction=.*\(0, 1\]"):
        validate_config(_pretrain(schedule="wsd", decay_fraction=value))
    validate_config(_pretrain(schedule="wsd", decay_fraction=1.0))  # the closed end is allowed


@pytest.mark.parametrize("keys,match", [
    (dict(schedule="warmup_stable_decay"), r"config\.optim\.schedule=.*wsd"),
    (dict(schedule="wsd", decay_shape="exp"), r"config\.optim\.decay_shape=.*1-sqrt"),
    (dict(schedule="cyclic_cosine", cycles=0), r"config\.optim\.cycles=0"),
    (dict(schedule="cyclic_cosine", cycles=21), r"config\.optim\.cycles=21 exceeds config\.train\.steps=20"),
    (dict(rewarm=True), r"config\.optim\.rewarm=True .*model\.init_from"),
    (dict(rewarm_from="last"), r"config\.optim\.rewarm_from='last'"),
])
def test_bad_schedule_keys_are_refused(keys, match):
    with pytest.raises(ConfigError, match=match):
        validate_config(_pretrain(**keys))


def test_rewarm_from_checkpoint_refuses_a_model_without_a_learning_rate(tmp_path):
    """A Hugging Face base has no last lr: refused before anything compiles, not 0 in silence."""
    from launch import ARTIFACTS
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({
        "model_type": "llama", "vocab_size": 256, "hidden_size": 64, "intermediate_size": 128,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 4,
        "max_position_embeddings": 128, "rms_norm_eps": 1e-5}))
    c = _pretrain(rewarm=True, rewarm_from="checkpoint")
    c.model.init_from = str(hf)
    with pytest.raises(ConfigError, match=r"rewarm_from='checkpoint'.*hf_dir.*rewarm_from=zero"):
        validate_config(c, ARTIFACTS)
    with pytest.raises(ConfigError, match=r"rewarm_from='checkpoint' needs model.init_from to be a training"):
        optim.rewarm_start(c)


def test_launch_refuses_bad_decay_fraction_before_compiling(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    p = subprocess.run([sys.executable, os.path.join(ROOT, "launch.py"), "--config",
                        os.path.join(ROOT, "configs", "pretrain.py") + ":tiny", "--workdir", str(tmp_path / "w"),
                        "--config.optim.schedule=wsd", "--config.optim.decay_fraction=1.5"],
                       env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode != 0
    assert "config.optim.decay_fraction=1.5" in p.stdout + p.stderr
    assert not (tmp_path / "w" / "checkpoints").exists()


@pytest.mark.slow
def test_kill9_mid_decay_resumes_exactly(tmp_path):
    """launch.py killed with SIGKILL mid-decay, run again: identical lrs and losses to an uninterrupted run."""
    args = ["--config", os.path.join(ROOT, "configs", "pretrain.py") + ":tiny", "--config.data.seq_len=32",
            "--config.train.steps=12", "--config.train.log_every=1", "--config.train.checkpoint_every=4",
            "--config.train.eval_every=0", "--config.optim.schedule=wsd", "--config.optim.decay_fraction=0.5",
            "--config.optim.decay_shape=cosine", "--config.optim.warmup_steps=2"]
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=2")

    def launch(workdir, *extra):
        return subprocess.Popen([sys.executable, os.path.join(ROOT, "launch.py"), *args, "--workdir",
                                 str(workdir), *extra], env=env, cwd=ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)

    ref, run = tmp_path / "ref", tmp_path / "run"
    p_ref = launch(ref)
    p = launch(run, "--config.train.debug_step_delay_s=0.3")
    import time
    t0 = time.time()
    while not (run / "checkpoints" / "8").exists():
        assert p.poll() is None and time.time() - t0 < 180
        time.sleep(0.02)
    p.send_signal(signal.SIGKILL)
    p.communicate()
    assert not (run / "checkpoints" / "12").exists()
    assert p_ref.wait(timeout=180) == 0
    p = launch(run)
    out = p.communicate(timeout=180)[0]
    assert p.returncode == 0 and "resumed from" in out, out[-2000:]
    m_ref, m_run = metrics(str(ref)), metrics(str(run))
    assert sorted(m_ref) == sorted(m_run) == list(range(1, 13))
    for s in m_ref:
        assert m_run[s]["loss"] == m_ref[s]["loss"] and m_run[s]["learning_rate"] == m_ref[s]["learning_rate"], s
