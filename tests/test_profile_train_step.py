"""Smoke test of benchmarks/profile_train_step.py on the tiny preset: the documented tables come out and
the op classifier attributes real time to matmuls on both sides (prints numbers, asserts no timings)."""
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_profile_train_step_tiny():
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")
    out = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "profile_train_step.py"),
                          "--preset", "tiny", "--batch", "2", "--seq_len", "16", "--steps", "1"],
                         env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout
    for heading in ("### Phases", "### Ops by category", "### GEMMs of the step"):
        assert heading in text
    row = re.search(r"^\| matmul \| ([\d,.]+) \| \d+% \| ([\d,.]+) \|", text, re.M)
    assert row, text
    assert float(row.group(1).replace(",", "")) > 0 and float(row.group(2).replace(",", "")) > 0
    assert "| full step |" in text and "| sum over one step's projection + head GEMMs |" in text
