"""Behaviour, not just numbers: the `demo` SFT teaches the model to answer held-out, instruction-formatted
yes/no/maybe questions. Under the evaluation's generate protocol (Me-LLaMA's released PubMedQA prompt,
the mellama chat template, first choice string found else "missing"), the missing-answer rate falls
from ~100% before SFT to < 20% after."""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "mellama_jax", "data", "samples", "instructions"))


def _launch(*args):
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1")
    out = subprocess.run([sys.executable, os.path.join(ROOT, "launch.py"), *args], env=env, cwd=ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=1500)
    assert out.returncode == 0, out.stdout[-3000:]
    return out.stdout


def _missing_rate(checkpoint, data, workdir):
    _launch("--config", os.path.join(ROOT, "configs", "eval.py"), "--workdir", workdir,
            f"--config.checkpoint={checkpoint}", "--config.tasks=pubmedqa", f"--config.task_paths.pubmedqa={data}",
            "--config.chat_template=mellama", "--config.max_new_tokens=8", "--config.show_progress=false",
            "--config.use_mesh=false")
    with open(os.path.join(workdir, "results.json")) as f:
        results = json.load(f)
    return results["tasks"]["pubmedqa"]["metrics"]["missing_rate"]


@pytest.mark.slow
def test_demo_sft_teaches_the_answer_format(tmp_path):
    from make_instructions import pubmedqa_example

    train_text = open(os.path.join(ROOT, "mellama_jax", "data", "samples", "instructions",
                                   "qa_pubmedqa.jsonl")).read()
    rng = random.Random(777)  # not the samples' seed: questions the demo never saw
    held_out = {}
    while len(held_out) < 30:
        question, sentences, label = pubmedqa_example(rng)
        if json.dumps(sentences[1])[1:-1] in train_text:
            continue
        held_out[f"9{len(held_out):04d}"] = {"QUESTION": question, "CONTEXTS": sentences, "final_decision": label}
    data = tmp_path / "ori_pqal.json"
    data.write_text(json.dumps(held_out))

    sft = ["--config", os.path.join(ROOT, "configs", "sft.py") + ":demo"]
    # "Before": the same run for one step; its learning rate is 0 (warmup starts at 0), so the
    # checkpoint is exactly the model the demo starts from.
    _launch(*sft, "--workdir", str(tmp_path / "before"), "--config.train.epochs=0", "--config.train.steps=1",
            "--config.optim.warmup_steps=1")
    out = _launch(*sft, "--workdir", str(tmp_path / "after"))
    assert "epochs of" in out
    before = _missing_rate(str(tmp_path / "before"), str(data), str(tmp_path / "eval_before"))
    after = _missing_rate(str(tmp_path / "after"), str(data), str(tmp_path / "eval_after"))
    print(f"missing rate before {before:.2f}, after {after:.2f}")
    assert before >= 0.8
    assert after < 0.2
