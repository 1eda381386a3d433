"""The README's "Learning-rate schedules, re-warming and budget-faithful ablations" commands, run as
written (from a directory where launch.py and configs/ are the repository's), and what they claim:
the wsd curve in metrics.jsonl, the re-warm starting at the first run's last lr, and the repetition
per source of the budget-faithful demo run."""
import json
import math
import os

import pytest
from readme_commands import run_as_written, section_commands

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECTION = "### Learning-rate schedules, re-warming and budget-faithful ablations\n"




def _metrics(path):
    with open(path) as f:
        return {r["step"]: r for r in map(json.loads, f) if "loss" in r}


@pytest.mark.slow
def test_readme_schedule_and_budget_commands(tmp_path):
    for name in ("launch.py", "configs"):
        os.symlink(os.path.join(ROOT, name), tmp_path / name)
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu", TMPDIR=str(tmp_path),
               XLA_FLAGS="--xla_force_host_platform_device_count=2")
    commands = section_commands(SECTION.rstrip("\n"))
    assert len(commands) == 3
    run_as_written(commands, tmp_path, env)

    # tiny: 20 steps, peak 3e-3, warmup round(0.05 x 20) = 1, the last 6 steps decay as 1 - sqrt(p)
    wsd = _metrics(tmp_path / "runs" / "wsd" / "metrics.jsonl")
    peak, end = 3e-3, 3e-4

    def ref(t):
        p = min(max((t - 14) / 6, 0.0), 1.0)
        return t / 1 * peak if t < 1 else end + (peak - end) * (1 - math.sqrt(p))
    for s, row in wsd.items():
        assert row["learning_rate"] == pytest.approx(ref(s - 1), rel=2e-6), s
    last = wsd[20]["learning_rate"]

    assert sorted(wsd) == [5, 10, 15, 20] and last < wsd[10]["learning_rate"] == pytest.approx(peak)

    # re-warm from that last lr to 1e-3 over 4 steps, cosine to 1e-4; cycle 2 (counts 10-19) warms
    # up again from 1e-4
    rewarm = _metrics(tmp_path / "runs" / "rewarm" / "metrics.jsonl")
    lr = {s: rewarm[s]["learning_rate"] for s in rewarm}
    assert sorted(lr) == list(range(1, 21))
    assert lr[1] == pytest.approx(last, rel=2e-6)
    assert lr[3] == pytest.approx(last + (1e-3 - last) * 2 / 4, rel=2e-6)
    assert lr[5] == pytest.approx(1e-3, rel=2e-6)
    assert lr[11] == pytest.approx(1e-4, rel=2e-6) and lr[15] == pytest.approx(1e-3, rel=2e-6)

    budget = _metrics(tmp_path / "runs" / "budget" / "metrics.jsonl")
    row = budget[20]
    for n in ("biomedical", "clinical", "general"):
        assert row[f"data/{n}/repetition"] > 0
    # tokens trained on / kept tokens: the realised repetition, logged each log step
    assert budget[20]["data/biomedical/repetition"] > budget[10]["data/biomedical/repetition"]
