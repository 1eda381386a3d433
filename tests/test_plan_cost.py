"""The planner's run-cost projection (plan/cost.py, `cli.plan --cost`): hand-computed hours and dollars,
the SFT step count from epochs x examples, dated prices from a file, and errors naming the key."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import types

import pytest

from mellama_jax.plan import cost

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRICE = cost.Price(4.0, "test offer", "https://example.invalid", "2030-01", "USD")


def _config(**train):
    t = {"epochs": 0.0, "steps": 100, "global_batch_size": 256, **train}
    return types.SimpleNamespace(train=types.SimpleNamespace(get=t.get, **t),
                                 data=types.SimpleNamespace(seq_len=4096))


def test_hours_and_cost_by_hand():
    c = cost.run_cost(steps=123_000, step_s=13.5, chips=16, price=PRICE)
    assert c.wall_hours == pytest.approx(123_000 * 13.5 / 3600)  # 461.25 h
    assert c.chip_hours == pytest.approx(461.25 * 16)  # 7,380
    assert c.cost == pytest.approx(7_380 * 4.0)  # 29,520 USD
    # 50% MFU: model FLOPs / (chips x peak x 0.5); 6N x tokens for a 13B model and 1M tokens
    flops = 6 * 13e9 * 256 * 4096
    assert cost.step_seconds_at_mfu(flops, 16, 459e12, 0.5) == pytest.approx(flops / (16 * 459e12 * 0.5))
    with pytest.raises(ValueError, match="MFU"):
        cost.step_seconds_at_mfu(flops, 16, 459e12, 0.0)
    with pytest.raises(ValueError, match="positive"):
        cost.run_cost(0, 1.0, 1, PRICE)


def test_steps_pretrain_from_config_and_sft_from_epochs():
    steps, how = cost.run_steps(_config(steps=123_000))
    assert steps == 123_000 and "129.0B tokens" in how
    steps, how = cost.run_steps(_config(epochs=3.0, global_batch_size=128), examples=214_000)
    assert steps == 5_016 and "3 epochs x 214,000 examples / 128 rows" in how  # ceil(642,000 / 128)


def test_shipped_prices_file_is_dated_and_names_each_source():
    table = json.load(open(cost.PRICES_FILE))
    assert table["as_of"] and table["currency"] == "USD"
    for key in ("v5p", "h100", "a100"):
        row = table["chips"][key]
        assert row["per_chip_hour"] > 0 and row["source"].startswith("https://")


def _plan(*args):
    return subprocess.run([sys.executable, "-m", "mellama_jax.cli.plan", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env=dict(os.environ, JAX_PLATFORMS="cpu"))


def test_cli_cost_on_a_gpu_estimate_and_a_missing_price(tmp_path):
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps({"as_of": "2030-01", "currency": "USD",
                                  "chips": {"h100": {"per_chip_hour": 2.5, "offer": "x", "source": "https://x"}}}))
    out = tmp_path / "plan.json"
    r = _plan("--config", "configs/sft.py:llama2_70b", "--gpus", "64xH100", "--cost", f"--prices={prices}",
              f"--json={out}")
    assert r.returncode == 0, r.stderr[-2000:]
    est = json.load(open(out))["estimates"][0]
    c = est["cost"]
    assert c["steps"] == 5_016  # 3 epochs of 214k instructions, 128 rows a step
    assert c["bound"]["chip_hours"] == pytest.approx(5_016 * est["step_s"] * 64 / 3600)
    assert c["bound"]["cost"] == pytest.approx(c["bound"]["chip_hours"] * 2.5)
    assert c["at_mfu"]["mfu"] == 0.5 and c["at_mfu"]["step_s"] > 0  # --cost_mfu's default
    assert "2030-01" in r.stdout and "chip-hours" in r.stdout
    r = _plan("--config", "configs/sft.py:llama2_70b", "--gpus", "8xH200", "--cost", f"--prices={prices}")
    assert r.returncode != 0 and "no price for chip 'h200'" in r.stderr and str(prices) in r.stderr
    prices.write_text('{"chips": {"h100": ')
    with pytest.raises(ValueError, match=r"prices.json: not a prices file \(JSON\): line 1"):
        cost.load_price("h100", str(prices))
