"""Evaluation with the model and batches sharded across 2 processes (2 x 1 CPU device, gloo,
localhost coordinator) writes the same predictions as 1 process with 2 devices: no host ever reads a
global array it does not hold (inputs built per shard, outputs all-gathered)."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

import eval_fixtures as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _launch(env, workdir, devices, extra_env=None):
    e = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
             **(extra_env or {}))
    cmd = [sys.executable, "launch.py", "--config", "configs/eval.py", "--workdir", str(workdir),
           f"--config.checkpoint={env['model']}", f"--config.data_dir={env['data']}",
           "--config.tasks=pubmedqa,hoc,mimiccxr", "--config.protocol=loglik", "--config.batch_size=2",
           "--config.max_new_tokens=4", "--config.show_progress=False"]
    return subprocess.Popen(cmd, cwd=ROOT, env=e, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(proc, timeout=400):
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-4000:]
    return out


def _records(workdir, task):
    with open(os.path.join(workdir, "predictions", f"{task}.jsonl")) as f:
        return [json.loads(line) for line in f]


@pytest.mark.slow  # three launches of the eval CLI (~1-4 min on 2 shared cores): python -m pytest -m slow tests/test_eval_multihost.py
def test_two_process_eval_matches_one_process(tmp_path):
    env = F.write_eval_env(tmp_path)
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    dist, single = tmp_path / "dist", tmp_path / "single"
    procs = [_launch(env, dist, 1, dict(JAX_COORDINATOR_ADDRESS=f"localhost:{port}", JAX_NUM_PROCESSES="2",
                                        JAX_PROCESS_ID=str(i))) for i in range(2)]
    [_finish(p) for p in procs]
    _finish(_launch(env, single, 2))
    r_d = json.load(open(dist / "results.json"))
    r_s = json.load(open(single / "results.json"))
    assert r_d["processes"] == 2 and r_s["processes"] == 1 and r_d["mesh"] == r_s["mesh"] == {"data": 2, "fsdp": 1, "tensor": 1}
    for task in ("pubmedqa", "hoc", "mimiccxr"):
        d, s = _records(dist, task), _records(single, task)
        assert [r["prediction"] for r in d] == [r["prediction"] for r in s], task
        assert [r["generation"] for r in d] == [r["generation"] for r in s], task
        for a, b in zip(d, s):
            if "choice_logprobs" in a:
                np.testing.assert_allclose(a["choice_logprobs"], b["choice_logprobs"], rtol=1e-5, atol=1e-5)
            if "label_logprobs" in a:
                flat = lambda r: [v for lab in r["label_logprobs"].values() for v in lab.values()]
                np.testing.assert_allclose(flat(a), flat(b), rtol=1e-5, atol=1e-5)
        assert r_d["tasks"][task]["metrics"] == pytest.approx(r_s["tasks"][task]["metrics"]), task
