"""The training loop's skeleton: when hooks run, and in what order; what the pipelines promise it;
and which packages train/ and data/ may name."""
from __future__ import annotations

import ast
import os
import pathlib

import numpy as np
import pytest

from mellama_jax.data.batch_source import BatchSource
from mellama_jax.train.hooks import NonFiniteGuard, NonFiniteLossError, StepInfo
from mellama_jax.train.loop import TrainLoop
from mellama_jax.train.synthetic import SyntheticPipeline

ROOT = pathlib.Path(__file__).resolve().parents[1]


class FakeTrainer:
    """state = steps done; the loss of step n is 1 / n (or NaN at `nan_at`)."""

    def __init__(self, nan_at: int = -1):
        self.nan_at = nan_at

    def global_batch(self, local):
        return local

    def train_step(self, state, batch):
        n = state + 1
        return n, {"loss": np.float32(np.nan if n == self.nan_at else 1.0 / n), "grad_norm": np.float32(1.0)}


def _loop(total, nan_at=-1):
    pipe = SyntheticPipeline(vocab_size=64, seq_len=8, global_batch_size=2)
    return TrainLoop(FakeTrainer(nan_at), pipe, total), pipe


def test_metrics_hooks_run_one_step_late_except_where_a_state_hook_is_due():
    loop, _ = _loop(total=7)
    events = []
    loop.add_metrics_hook(lambda info: events.append(("metrics", info.step, round(info.metrics["loss"], 4))))
    loop.add_hook(lambda info: events.append(("eval", info.step, info.state)), every=3)
    loop.add_hook(lambda info: events.append(("ckpt", info.step, info.state)), every=0)  # only at the end
    final = loop.run(0, 0)
    assert final == 7
    assert [e[:2] for e in events] == [
        ("metrics", 1), ("metrics", 2), ("metrics", 3), ("eval", 3), ("metrics", 4), ("metrics", 5),
        ("metrics", 6), ("eval", 6), ("metrics", 7), ("eval", 7), ("ckpt", 7)]
    assert all(e[2] == e[1] for e in events if e[0] != "metrics")  # state hooks see the state after the step
    assert [e[2] for e in events if e[0] == "metrics"] == [round(1.0 / n, 4) for n in range(1, 8)]


def test_preemption_stops_after_the_step_running_the_preemption_hooks_only():
    loop, _ = _loop(total=10)
    events = []
    loop.add_metrics_hook(lambda info: events.append(("metrics", info.step, info.preempted)))
    loop.add_hook(lambda info: events.append(("eval", info.step, info.preempted)), every=5)
    loop.add_hook(lambda info: events.append(("ckpt", info.step, info.preempted)), every=5, on_preemption=True)
    calls = iter([False, False, False, True])
    assert loop.run(0, 0, lambda: next(calls)) == 4
    assert events == [("metrics", 1, False), ("metrics", 2, False), ("metrics", 3, False),
                      ("metrics", 4, True), ("ckpt", 4, True)]


def test_resume_starts_at_the_checkpoint_step_and_a_finished_run_does_nothing():
    loop, _ = _loop(total=5)
    seen = []
    loop.add_metrics_hook(lambda info: seen.append(info.step))
    assert loop.run(3, 3) == 5 and seen == [4, 5]
    seen.clear()
    assert loop.run(5, 5) == 5 and seen == []


def test_a_nonfinite_loss_stops_before_the_state_hooks_of_its_step():
    class NoCheckpoint:
        directory = "/nowhere"

        def wait(self):
            pass

        def latest_step(self):
            return None

    loop, _ = _loop(total=6, nan_at=4)
    saved = []
    loop.add_metrics_hook(NonFiniteGuard(NoCheckpoint()))
    loop.add_hook(lambda info: saved.append(info.step), every=2)
    with pytest.raises(NonFiniteLossError, match=r"step 4: loss is nan; stopping. No checkpoint has been written"):
        loop.run(0, 0)
    assert saved == [2]


def test_step_info_fetches_metrics_once():
    info = StepInfo(3, 3, None, {"loss": np.float32(0.5)}, np.zeros(2, np.int64))
    assert info.metrics == {"loss": 0.5} and info.metrics is info.metrics and info.is_last


def test_every_pipeline_is_a_batch_source(tmp_path):
    from mellama_jax.data.config import demo_data_config
    from mellama_jax.data.pipeline import build_train_pipeline

    synthetic = SyntheticPipeline(vocab_size=64, seq_len=8, global_batch_size=2)
    assert isinstance(synthetic, BatchSource)
    assert synthetic.state() is None and synthetic.fingerprint() == {"synthetic": True, "seed": 0, "seq_len": 8}
    stage, rows = synthetic.stage_row_counts(3)
    assert stage == 0 and rows[-1] == 6 and rows[:-1].sum() == 6
    with pytest.raises(ValueError, match="no epochs"):
        synthetic.steps_for_epochs(1.0)
    c = demo_data_config()
    c.data_dir, c.reader, c.seq_len = str(tmp_path / "d"), "direct", 32
    assert isinstance(build_train_pipeline(c, global_batch_size=4), BatchSource)


def _imported_modules(path: pathlib.Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            out |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
    return out


@pytest.mark.parametrize("package, above", [("train", ("sft", "eval", "plan", "sweep", "cli")),
                                            ("data", ("train", "sft", "eval", "plan", "sweep", "cli"))])
def test_no_upward_or_string_named_imports(package, above):
    """train/ sits below sft/eval/plan; the data pipeline below train (its SFT rows are passed in)."""
    files = sorted((ROOT / "mellama_jax" / package).rglob("*.py"))
    if package == "data":  # the data library; its command-line tools move above it separately
        files = [ROOT / "mellama_jax" / "data" / f for f in (
            "pipeline.py", "batch_source.py", "token_cache.py", "token_store.py", "rows.py", "mixture_order.py",
            "config.py")]
    assert files
    for path in files:
        bad = sorted(m for m in _imported_modules(path) if m.split(".")[:2] in [["mellama_jax", p] for p in above])
        assert not bad, f"{os.path.relpath(path, ROOT)} imports {bad}"
        text = path.read_text()
        assert "import_module" not in text and "__import__" not in text, os.path.relpath(path, ROOT)
