"""Robustness, one test per numbered defect (each failed on the code before the fix).

Items 5-7 (conversion, safetensors headers, path traversal) are in tests/test_hardening_convert.py;
item 12 (evaluation inputs) belongs to the evaluation tests. The fault-injection runs (random
kills, corrupt newest checkpoint, torn metrics, two writers) are in tests/test_fault_injection.py.
"""
from __future__ import annotations

import gzip
import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from configs.pretrain import get_config  # noqa: E402
from mellama_jax.config_validation import ConfigRangeError, validate_config  # noqa: E402
from mellama_jax.cli import prepare_clinical  # noqa: E402
from mellama_jax.data.clinical.synthetic import evaluate_scrubber, generate_notes, write_mimic3_csv  # noqa: E402
from mellama_jax.data.sources.readers import read_file  # noqa: E402
from mellama_jax.data.sources.report import BadInputReport, DataError  # noqa: E402
from mellama_jax.train import loop, workdir_lock  # noqa: E402
from mellama_jax.train import step as step_lib  # noqa: E402
from mellama_jax.train.checkpointing import (CheckpointCorruptError, Checkpointer,  # noqa: E402
                                             NonFiniteStateError)
from mellama_jax.train.hooks import NonFiniteLossError  # noqa: E402
from mellama_jax.train.metrics import MetricsWriter  # noqa: E402
from mellama_jax.train.state import TrainState  # noqa: E402


def tiny_config(**train):
    c = get_config("tiny")
    c.model.num_hidden_layers = 1
    c.data.seq_len = 16
    c.train.log_every = 1
    c.train.eval_every = 0
    c.train.async_checkpointing = False
    for k, v in train.items():
        c.train[k] = v
    return c


def metrics_rows(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def toy_state(step: int, scale: float = 1.0, dtype=jnp.float32) -> TrainState:
    """A small train state (any pytree works with the Checkpointer): fast checkpoint tests."""
    w = (jnp.arange(24, dtype=jnp.float32).reshape(4, 6) * scale + step).astype(dtype)
    return TrainState(step=jnp.asarray(step, jnp.int32), params={"w": w, "b": jnp.ones(6, dtype) * step},
                      opt_state={"mu": w * 0.5}, rng=jnp.asarray([0, step], jnp.uint32))


def toy_target() -> TrainState:
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=jax.sharding.SingleDeviceSharding(
        jax.devices()[0])), toy_state(0))


# ------------------------------------------------------------------ 1. NaN guard
def test_1_nonfinite_update_never_reaches_a_checkpoint(tmp_path, monkeypatch):
    """The update of step 3 turns the params NaN while the step's loss (computed before the
    update) is finite: the checkpoint of step 3 is refused, and the error names the newest
    checkpoint actually on disk (step 2), checked finite when saved.

    Also item 10's duplicated rows: the workdir starts with the metrics of a run killed before its
    first checkpoint (steps 1-5, no checkpoint); they are replaced, not appended to."""
    with open(tmp_path / "metrics.jsonl", "w") as f:
        f.writelines(json.dumps({"step": s, "loss": 99.0}) + "\n" for s in range(1, 6))
    real = step_lib.make_train_step

    def poisoned(*args, **kwargs):
        inner = real(*args, **kwargs)

        def train_step(state, batch):
            new, metrics = inner(state, batch)
            bad = jax.tree.map(lambda p: jnp.where(state.step == 2, p * jnp.nan, p), new.params)
            return new.replace(params=bad), metrics
        return train_step

    monkeypatch.setattr(loop.step_lib, "make_train_step", poisoned)
    with pytest.raises(NonFiniteLossError) as err:
        loop.run(tiny_config(steps=4, checkpoint_every=1), str(tmp_path))
    msg = str(err.value)
    assert "step 3: the updated state is not finite" in msg and "not saved" in msg
    assert "The newest checkpoint is step 2" in msg and "checked finite before it was saved" in msg
    ckpt = Checkpointer(str(tmp_path))
    assert ckpt.all_steps() == [1, 2]
    ckpt.close()
    rows = metrics_rows(tmp_path)
    assert [r["step"] for r in rows] == [1, 2, 3] and all(r["loss"] != 99.0 for r in rows)


@pytest.mark.slow
def test_1_huge_learning_rate_fails_without_any_checkpoint(tmp_path):
    """The filer's command: lr 1e39, one step, no warmup -- used to exit 0 with NaN params saved."""
    c = tiny_config(steps=1, checkpoint_every=1)
    c.optim.learning_rate, c.optim.warmup_steps = 1e39, 0
    with pytest.raises(NonFiniteLossError, match="No checkpoint has been written yet"):
        loop.run(c, str(tmp_path))
    assert not [d for d in os.listdir(tmp_path / "checkpoints") if d.isdigit()]


def test_1_float16_inf_state_is_refused_by_the_checkpointer(tmp_path):
    ckpt = Checkpointer(str(tmp_path), async_save=False)
    state = toy_state(1, scale=1e4, dtype=jnp.float16)  # 23e4 overflows float16 -> inf
    with pytest.raises(NonFiniteStateError, match=r"step 1: non-finite values in params\['w'\]"):
        ckpt.save(state, {})
    assert ckpt.all_steps() == []
    ckpt.save(toy_state(1, dtype=jnp.float16), {})
    ckpt.wait()
    assert ckpt.all_steps() == [1] and ckpt.read_meta(1)["integrity"]["finite"] is True
    ckpt.close()


# ------------------------------------------------------------------ 2. prepare_clinical deletes nothing
def test_2_prepare_clinical_never_deletes_the_users_files(tmp_path, capsys):
    src = tmp_path / "notes-raw.csv"
    write_mimic3_csv(str(src), generate_notes(30, seed=3))
    (tmp_path / "notes-summary.txt").write_text("my own notes")
    before = src.read_bytes()
    assert prepare_clinical.main(["--in", str(src), "--out", str(tmp_path)]) == 2
    assert "not empty and was not created by this tool" in capsys.readouterr().err
    assert src.read_bytes() == before and (tmp_path / "notes-summary.txt").read_text() == "my own notes"
    # A directory of its own output is replaced only with --overwrite, and only if it holds
    # nothing but what the tool wrote.
    out = tmp_path / "prepared"
    assert prepare_clinical.main(["--in", str(src), "--out", str(out)]) == 0
    assert prepare_clinical.main(["--in", str(src), "--out", str(out)]) == 2
    (out / "my-notes.txt").write_text("keep me")
    assert prepare_clinical.main(["--in", str(src), "--out", str(out), "--overwrite"]) == 2
    assert "did not write" in capsys.readouterr().err and (out / "my-notes.txt").exists()
    os.remove(out / "my-notes.txt")
    assert prepare_clinical.main(["--in", str(src), "--out", str(out), "--overwrite"]) == 0
    assert sorted(os.listdir(tmp_path)) == ["notes-raw.csv", "notes-summary.txt", "prepared"]


# ------------------------------------------------------------------ 3. keep_checkpoints=0
def test_3_keep_checkpoints_zero_is_refused(tmp_path):
    c = tiny_config(keep_checkpoints=0)
    with pytest.raises(ConfigRangeError, match=r"config.train.keep_checkpoints=0: must be >= 1"):
        validate_config(c)
    with pytest.raises(ValueError, match="keep_checkpoints=0"):
        Checkpointer(str(tmp_path), keep=0)


# ------------------------------------------------------------------ 4. one writer per workdir
HOLD = ("import sys, time; sys.path.insert(0, {root!r}); from mellama_jax.train import workdir_lock; "
        "workdir_lock.acquire({w!r}); print('held', flush=True); time.sleep(120)")


def test_4_second_writer_fails_at_once_and_a_dead_holder_is_taken_over(tmp_path):
    w = str(tmp_path / "w")
    holder = subprocess.Popen([sys.executable, "-c", HOLD.format(root=ROOT, w=w)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        t0 = time.time()
        with pytest.raises(workdir_lock.WorkdirLocked) as err:
            workdir_lock.acquire(w)
        assert time.time() - t0 < 5
        assert f"pid {holder.pid} on host {socket.gethostname()!r}" in str(err.value)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with workdir_lock.acquire(w):  # the kernel dropped the dead holder's lock
        with workdir_lock.acquire(w):  # re-entrant within one process
            pass
        info = json.loads(open(workdir_lock.lock_path(w)).read())
        assert info["pid"] == os.getpid()


def test_4_pidfile_fallback_takes_over_only_a_dead_local_holder(tmp_path, monkeypatch):
    """Filesystems without flock: the O_EXCL lock file names its owner; a dead pid on this host is
    stale and taken over, a live one or one on another host is not."""
    monkeypatch.setattr(workdir_lock.WorkdirLock, "_try_flock", lambda self: False)
    w = str(tmp_path)
    pidfile = workdir_lock.lock_path(w) + ".pid"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    with open(pidfile, "w") as f:
        json.dump({"host": socket.gethostname(), "pid": dead.pid}, f)
    handle = workdir_lock.acquire(w)
    assert json.load(open(pidfile))["pid"] == os.getpid()
    handle.release()
    assert not os.path.exists(pidfile)
    with open(pidfile, "w") as f:
        json.dump({"host": "another-host", "pid": 1}, f)
    with pytest.raises(workdir_lock.WorkdirLocked, match="if that run is gone, remove"):
        workdir_lock.acquire(w)


# ------------------------------------------------------------------ 8. no note text; OOV surnames
def test_8_headerless_csv_error_does_not_print_the_note(tmp_path, capsys):
    notes = list(generate_notes(5, seed=8))
    full = tmp_path / "with_header.csv"
    write_mimic3_csv(str(full), notes)
    headerless = tmp_path / "notes.csv"
    headerless.write_text(full.read_text().split("\n", 1)[1])
    assert prepare_clinical.main(["--in", str(headerless), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "is the header row missing?" in err
    first = notes[0].text
    assert not any(first[i:i + 12] in err for i in range(0, len(first) - 12))
    with pytest.raises(DataError) as e:  # the pipeline's reader says the same without the text
        list(read_file("clinical", {"format": "mimic_csv"}, str(headerless), BadInputReport("clinical")))
    assert not any(first[i:i + 12] in str(e.value) for i in range(0, len(first) - 12))


def test_8_surnames_outside_every_lexicon_are_removed():
    from mellama_jax.data.clinical.oov_names import generate_oov_notes

    res = evaluate_scrubber(generate_oov_notes(300, seed=99, held_out=True))
    assert res["planted"]["SURNAME"] > 1000
    assert res["recall"]["SURNAME"] >= 0.98, res["recall"]
    assert all(v == 0.0 for v in res["keep_touched"].values()), res["keep_touched"]
    assert res["precision"]["NAME"] >= 0.99


# ------------------------------------------------------------------ 9. broken inputs
def _cut_gzip(path, notes, fraction=0.5):
    write_mimic3_csv(str(path) + ".full.gz", notes)
    data = open(str(path) + ".full.gz", "rb").read()
    os.remove(str(path) + ".full.gz")
    path.write_bytes(data[: int(len(data) * fraction)])


def test_9_truncated_and_garbage_gzip_fail_clearly_unless_allowed(tmp_path, capsys):
    cut = tmp_path / "half.csv.gz"
    _cut_gzip(cut, list(generate_notes(400, seed=9)))
    out = tmp_path / "out"
    assert prepare_clinical.main(["--in", str(cut), "--out", str(out), "--max-bad-fraction", "0.5"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "truncated or corrupt input" in err and "--allow-truncated" in err
    assert "end of the original file is missing" in err
    assert prepare_clinical.main(["--in", str(cut), "--out", str(out), "--allow-truncated"]) == 0
    report = json.load(open(out / "report.json"))
    assert report["truncated_inputs"] == 1 and 0 < report["documents_in"] < 400
    garbage = tmp_path / "garbage.csv.gz"
    garbage.write_bytes(b"\x1f\x8b" + os.urandom(4000))
    assert prepare_clinical.main(["--in", str(garbage), "--out", str(tmp_path / "g")]) == 2
    assert "Traceback" not in capsys.readouterr().err
    # The pipeline readers: a half gzip is one bad item, but it fails the source by itself.
    docs = tmp_path / "docs.jsonl.gz"
    payload = "".join(json.dumps({"id": i, "text": f"document {i} " * 20}) + "\n" for i in range(3000))
    data = gzip.compress(payload.encode())
    docs.write_bytes(data[: len(data) // 2])
    report = BadInputReport("general")
    n = sum(1 for _ in read_file("general", {"format": "jsonl"}, str(docs), report))
    assert 0 < n < 3000 and report.bad_fraction < 0.01 and len(report.truncations) == 1
    with pytest.raises(DataError, match="truncated or corrupt file.*allow_truncated=True"):
        report.check(0.01)
    report.allow_truncated = True
    report.check(0.01)
    assert BadInputReport.from_dict(report.to_dict()).truncations == report.truncations


def test_9_deeply_nested_json_is_a_counted_bad_line(tmp_path):
    f = tmp_path / "deep.jsonl"
    f.write_text('{"id": 1, "text": "fine text here"}\n' + "[" * 200_000 + "\n" + '{"text": ' * 50_000 + "\n")
    report = BadInputReport("general")
    docs = list(read_file("general", {"format": "jsonl"}, str(f), report))
    assert len(docs) == 1 and report.bad["malformed_json"] == 2
    from mellama_jax.data.clinical.io import InputStats, iter_notes

    stats = InputStats(str(f))
    assert len(list(iter_notes(str(f), "jsonl", stats))) == 1 and sum(stats.bad_rows.values()) == 2


# ------------------------------------------------------------------ 10. restore falls back
def _corruptions():
    def flip(path):
        data = bytearray(open(path, "rb").read())
        data[len(data) // 2] ^= 0xFF
        open(path, "wb").write(data)

    def truncate(path):
        data = open(path, "rb").read()
        open(path, "wb").write(data[: len(data) // 3])

    return {"flip_byte": flip, "truncate": truncate, "delete": os.remove,
            "zero": lambda p: open(p, "wb").write(b"\0" * os.path.getsize(p))}


def _data_files(step_dir, item):
    out = []
    for root, _, files in os.walk(os.path.join(step_dir, item)):
        out += [os.path.join(root, f) for f in files if os.path.getsize(os.path.join(root, f)) > 64
                and "/d/" in os.path.join(root, f)]
    return sorted(out)


@pytest.mark.parametrize("how", sorted(_corruptions()))
def test_10_corrupt_newest_checkpoint_falls_back_to_the_intact_one(tmp_path, how):
    ckpt = Checkpointer(str(tmp_path), async_save=False)
    for s in (1, 2):
        ckpt.save(toy_state(s), {"data_state": {"pos": s}})
    ckpt.wait()
    files = _data_files(os.path.join(ckpt.directory, "2"), "params")
    assert files
    for f in files:
        _corruptions()[how](f)
    ckpt.close()
    ckpt = Checkpointer(str(tmp_path))
    state, meta, step, skipped = ckpt.restore_latest(toy_target())
    assert step == 1 and meta["data_state"] == {"pos": 1}
    np.testing.assert_array_equal(np.asarray(state.params["w"]), np.asarray(toy_state(1).params["w"]))
    assert len(skipped) == 1 and skipped[0].startswith("skipped checkpoint step 2: ")
    assert ckpt.all_steps() == [1] and os.listdir(tmp_path / "checkpoints.corrupt")[0].startswith("2-")
    ckpt.save(toy_state(2), {})  # the run can write step 2 again
    ckpt.close()


def test_10_a_checkpoint_that_restores_but_holds_other_values_is_caught(tmp_path):
    """Valid files with the wrong contents (step 1's params under step 2): only the recorded
    fingerprint can tell, and it does."""
    import shutil

    ckpt = Checkpointer(str(tmp_path), async_save=False)
    for s in (1, 2):
        ckpt.save(toy_state(s), {})
    ckpt.wait()
    d = ckpt.directory
    shutil.rmtree(os.path.join(d, "2", "params"))
    shutil.copytree(os.path.join(d, "1", "params"), os.path.join(d, "2", "params"))
    with pytest.raises(CheckpointCorruptError, match=r"params\['b'\] does not match the fingerprint"):
        ckpt.restore(toy_target(), 2)
    assert ckpt.restore_latest(toy_target())[2] == 1
    ckpt.close()


def test_10_torn_metrics_line_is_dropped_not_fatal(tmp_path):
    w = tmp_path
    with open(w / "metrics.jsonl", "w") as f:  # a killed run: 3 rows, the last one torn
        f.write(json.dumps({"step": 1, "loss": 9.0}) + "\n" + json.dumps({"step": 2, "loss": 8.0}) + "\n"
                + '{"step": 3, "lo')
    writer = MetricsWriter(str(w))
    writer.truncate_after(3)  # used to raise JSONDecodeError and block the resume
    assert [r["step"] for r in metrics_rows(w)] == [1, 2]
    writer.truncate_after(0)  # a fresh start (no checkpoint) keeps nothing of a lost run
    assert metrics_rows(w) == []
    writer.close()


# ------------------------------------------------------------------ 11. config ranges
@pytest.mark.parametrize("key,value,expect", [
    ("optim.learning_rate", -3e-4, "must be > 0"),
    ("optim.b1", 1.5, "must be in [0, 1)"),
    ("optim.warmup_fraction", 2.0, "must be in [0, 1]"),
    ("optim.grad_clip_norm", -1.0, "must be >= 0"),
    ("data.seq_len", 0, "must be >= 2"),
    ("train.eval_batches", -1, "must be >= 1"),
    ("train.keep_checkpoints", 0, "must be >= 1"),
    ("optim.learning_rate", float("nan"), "must be > 0"),
    ("optim.warmup_steps", -5, "or -1"),
    ("mesh.fsdp", 0, "or -1"),
    ("data.mixture.clinical", -1.0, "must be >= 0"),
])
def test_11_out_of_range_values_fail_naming_the_key(key, value, expect):
    import launch

    c = get_config("tiny")
    section, name = key.rsplit(".", 1)
    node = c
    for part in section.split("."):
        node = node[part]
    node[name] = value
    with pytest.raises(launch.ConfigError) as err:
        launch.validate(c)
    assert f"config.{key}={value!r}" in str(err.value) and expect in str(err.value)


def test_11_cross_key_checks_and_every_shipped_numeric_key_has_a_rule():

    from mellama_jax.config_validation import uncovered_numeric_keys
    c = get_config("tiny")
    c.optim.warmup_steps = 50
    c.train.steps = 20
    with pytest.raises(ConfigRangeError, match="peak learning rate would never be reached"):
        validate_config(c)
    import configs.eval
    import configs.pretrain
    import configs.sft
    import configs.sweep
    shipped = {"eval.py": configs.eval, "pretrain.py": configs.pretrain, "sft.py": configs.sft,
               "sweep.py": configs.sweep}
    on_disk = {n for n in os.listdir(os.path.join(ROOT, "configs"))
               if n.endswith(".py") and n not in ("__init__.py", "base.py")}
    assert on_disk == set(shipped), "a config file this test does not cover"
    for name, module in sorted(shipped.items()):
        variants = getattr(module, "VARIANTS", None) or [None]
        for variant in variants:
            cfg = module.get_config(variant) if variant else module.get_config()
            assert uncovered_numeric_keys(cfg) == [], (name, variant)
            validate_config(cfg)  # the shipped configs are valid


def test_11_range_errors_come_before_any_work(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    r = subprocess.run([sys.executable, os.path.join(ROOT, "launch.py"), "--config",
                        os.path.join(ROOT, "configs", "pretrain.py") + ":tiny", "--workdir", str(tmp_path / "w"),
                        "--config.optim.b1=1.5"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "config.optim.b1=1.5: must be in [0, 1)" in r.stderr
    assert not (tmp_path / "w").exists()


# ---------------------------------------------------------------- the workdir lock and the seed range
@pytest.mark.parametrize("fallback", [False, True], ids=["flock", "pidfile"])
def test_lock_file_that_is_a_link_or_directory_is_refused_and_never_written_through(tmp_path, monkeypatch,
                                                                                     fallback):
    """A symlink at .lock.p0 used to have its target overwritten with the lock JSON; a directory gave
    IsADirectoryError. Now each is refused naming the path, and the target is untouched."""
    if fallback:
        monkeypatch.setattr(workdir_lock.WorkdirLock, "_try_flock", lambda self: False)
    suffix = ".pid" if fallback else ""
    precious = tmp_path / "precious.txt"
    precious.write_text("other data\n")
    cases = {"symlink": lambda p: os.symlink(precious, p), "dangling": lambda p: os.symlink(tmp_path / "nope", p),
             "directory": os.mkdir, "hardlink": lambda p: os.link(precious, p), "fifo": os.mkfifo}
    for kind, make in cases.items():
        w = tmp_path / f"w-{kind}"
        w.mkdir()
        path = workdir_lock.lock_path(str(w)) + suffix
        make(path)
        with pytest.raises(workdir_lock.WorkdirLockUnsafe) as err:
            workdir_lock.acquire(str(w))
        assert path in str(err.value) and "refusing" in str(err.value), (kind, str(err.value))
        assert isinstance(err.value, workdir_lock.WorkdirLocked)  # launch.py: one line, exit 3
        assert precious.read_text() == "other data\n", kind
        assert not (tmp_path / "nope").exists()
    with workdir_lock.acquire(str(tmp_path / "fresh")):  # an ordinary workdir still locks
        pass


def test_seed_outside_the_prng_range_is_refused_by_validation():
    """jax.random.PRNGKey keeps only the low 32 bits without jax_enable_x64 (2**32 is seed 0) and raises
    OverflowError from 2**63; numpy seeds stop at 2**32 - 1. So seeds must be in [0, 2**32 - 1]."""
    for key, value in (("seed", 2**64), ("seed", 2**32), ("data.seed", 2**32)):
        c = get_config("tiny")
        if key == "seed":
            c.seed = value
        else:
            c.data.seed = value
        with pytest.raises(ConfigRangeError, match=rf"config\.{key}={value}"):
            validate_config(c)
    c = get_config("tiny")
    c.seed = 2**32 - 1
    validate_config(c)


# ---------------------------------------------------------------- sources with no held-out examples
class _Sums:
    def __init__(self, nll: float, weight: float):
        self.nll, self.weight = nll, weight


def test_a_source_with_no_held_out_examples_is_not_reported_as_loss_zero(capsys):
    """eval_fraction=0 used to log eval/<source>/loss 0.0, perplexity 1.0: the best source in any table."""
    from types import SimpleNamespace

    from mellama_jax.train.hooks import Evaluator

    held = {"qa": [], "bio": [{"rows": 1}]}  # qa holds nothing out (what the pipeline returns for it)
    pipeline = SimpleNamespace(source_names=["bio", "qa"], eval_batches=lambda n, k: held[n])
    trainer = SimpleNamespace(global_batch=lambda b: b, eval_step=lambda params, batch: _Sums(6.0, 3.0))
    written = []
    evaluator = Evaluator(trainer, pipeline, 1, lambda step, out: written.append(out))
    for step in (1, 2):
        evaluator(SimpleNamespace(step=step, state=SimpleNamespace(params=None)))
    assert written == [{"eval/bio/loss": 2.0, "eval/bio/perplexity": pytest.approx(np.exp(2.0))}] * 2
    out = capsys.readouterr().out + capsys.readouterr().err
    assert out.count("'qa' has no held-out examples") == 1


def test_sweep_table_and_mixing_law_skip_held_out_losses_that_measured_nothing(tmp_path):
    """Older metrics hold eval/qa/loss 0.0 (perplexity 1.0); the table and the law leave them out."""
    from mellama_jax.sweep.mixing_law import sweep_data
    from mellama_jax.sweep.table import point_row

    rows = []
    for i, (w, bio) in enumerate(((0.2, 2.5), (0.5, 2.1), (0.8, 1.9))):
        d = tmp_path / f"p{i}"
        d.mkdir()
        records = [{"step": 4, "loss": 3.0},
                   {"step": 4, "eval/bio/loss": bio, "eval/bio/perplexity": float(np.exp(bio)),
                    "eval/qa/loss": 0.0, "eval/qa/perplexity": 1.0, "eval/gen/loss": float("nan")}]
        (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        row = point_row(f"p{i}", {}, {"bio": w, "qa": 1 - w}, str(d), 4, [])
        assert "eval/bio/loss" in row and not any(k.startswith(("eval/qa/", "eval/gen/")) for k in row), row
        rows.append({**row, "eval/qa/loss": 0.0})  # as an older sweep.csv holds it
    _, _, _, targets = sweep_data(rows)
    assert sorted(targets) == ["eval/bio/loss"]


# ---------------------------------------------------------------- the planner's exit codes
def _plan(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    return subprocess.run([sys.executable, "-m", "mellama_jax.cli.plan", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def test_planner_bad_input_exits_2_with_one_line():
    """A missing config or an eval config was a traceback with exit 1 ("does not fit"); --gpus with
    --topology silently ignored the topology."""
    for args, expect in ((("--config", "configs/missing.py:x", "--gpus", "8xH100"), "configs/missing.py"),
                         (("--config", "configs/eval.py", "--gpus", "8xH100"), "config.task='eval'"),
                         (("--config", "configs/pretrain.py:tiny", "--gpus", "8xH100", "--topology", "v5e:2x2"),
                          "exclude each other")):
        r = _plan(*args)
        assert r.returncode == 2 and expect in r.stderr and "Traceback" not in r.stderr, (args, r.stderr[-2000:])


def test_planner_refuses_the_batch_launch_refuses():
    """--gpus 8xH100 --config.train.global_batch_size=3 printed "0.375 rows ... FITS": the estimate
    now runs train.loop.validate_batch_layout on the cluster's mesh, as launch.py does."""
    from mellama_jax.plan import aot, estimate as est_lib, hardware

    config = get_config("tiny")
    config.train.global_batch_size = 3
    _, mc, _ = aot.plan_model_config(config)
    cluster = hardware.parse_gpu_cluster("8xH100")
    with pytest.raises(ValueError, match="not divisible by mesh data x fsdp = 8"):
        est_lib.estimate(config, mc, cluster.num_gpus, cluster.chip, cluster.name)
    config.train.global_batch_size = 8
    assert est_lib.estimate(config, mc, cluster.num_gpus, cluster.chip, cluster.name).rows_per_device == 1


# ---------------------------------------------------------------- lm-eval model args, corrupt gzip
def test_lm_eval_model_args_are_refused_naming_the_argument():
    """max_length=0 silently meant the default and add_bos_token=maybe meant true."""
    pytest.importorskip("lm_eval")
    from mellama_jax.eval import lm_eval_adapter as adapter

    for kwargs, name in (({"max_length": 0}, "max_length=0"), ({"max_length": "-3"}, "max_length=-3"),
                         ({"max_length": "abc"}, "max_length='abc'"), ({"max_gen_toks": 0}, "max_gen_toks=0"),
                         ({"add_bos_token": "maybe"}, "add_bos_token='maybe'")):
        with pytest.raises(ValueError, match=f"--model_args {name}"):
            adapter.MellamaJaxLM(checkpoint="/nonexistent", **kwargs)
    assert [adapter._bool_arg("x", v) for v in ("true", "False", 1, 0, "yes", "NO", True, None, "")] == [
        True, False, True, False, True, False, True, None, None]
    assert adapter._positive_int("max_length", "2048") == 2048 and adapter._positive_int("max_length", None) is None


def test_gzip_corrupted_mid_file_is_called_corrupt_not_cut_short(tmp_path, capsys):
    """A flipped byte inside a .csv.gz used to read "all bytes were read ... end of the original file is
    missing"; every byte is there, the data is wrong."""
    path = tmp_path / "notes.csv.gz"
    write_mimic3_csv(str(tmp_path / "notes.csv"), list(generate_notes(300, seed=4)))
    data = bytearray(gzip.compress((tmp_path / "notes.csv").read_bytes()))
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    assert prepare_clinical.main(["--in", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "corrupt" in err and "Traceback" not in err, err
    assert "end of the original file is missing" not in err and "ends early" not in err, err
    assert "gzip check at the end failed" in err or "corrupt data at byte" in err, err
