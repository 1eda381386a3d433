"""lm-eval entry points as the README documents them: `launch.py --config.harness=lm_eval` (results.json /
results.md / predictions layout with lm-eval provenance) and `python -m mellama_jax.cli.lm_eval`;
and PubMedQA: the built-in log-likelihood protocol and lm-eval through the adapter (shipped task
pubmedqa_mellama over the same local file and prompt) predict the same answers."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("lm_eval")

from eval_fixtures import write_pubmedqa_tsv  # noqa: E402
from lm_eval_fixtures import write_hf_llama_with_tokenizer, write_tasks  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("lm_eval_harness")
    model = write_hf_llama_with_tokenizer(str(root / "model"), max_positions=512, seed=1)  # no prompt is cut
    data = root / "data"
    data.mkdir()
    write_pubmedqa_tsv(str(data / "pubmedqa.tsv"), n=6)
    tasks = write_tasks(str(root / "tasks"), n=3)
    return {"model": model, "data": str(data), "tasks": tasks, "root": root}


def _run(cmd, **kw):
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", JAX_PLATFORMS="cpu",
               XLA_FLAGS="--xla_force_host_platform_device_count=8")
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, **kw)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


@pytest.fixture(scope="module")
def launched(env):
    """The README's launch.py command for lm-eval tasks (PubMedQA from data_dir + a user task YAML)."""
    workdir = env["root"] / "lm_eval_run"
    _run([sys.executable, "launch.py", "--config", "configs/eval.py", "--workdir", str(workdir),
          f"--config.checkpoint={env['model']}", "--config.harness=lm_eval",
          "--config.lm_eval_tasks=pubmedqa_mellama,tiny_mc", f"--config.lm_eval_include_path={env['tasks']}",
          f"--config.data_dir={env['data']}", "--config.prompt_set=mellama-v1", "--config.batch_size=4",
          "--config.lm_eval_bootstrap_iters=0", "--config.mesh.tensor=2"])
    with open(workdir / "results.json") as f:
        return workdir, json.load(f)


@pytest.mark.slow  # subprocesses that load JAX and compile (~2-3 min on 2 shared cores)
def test_launch_writes_builtin_layout_with_lm_eval_provenance(launched, env):
    workdir, results = launched
    assert results["harness"] == "lm_eval" and results["protocol"] == "lm_eval"
    assert results["lm_eval"]["version"] == results["packages"]["lm-eval"] == "0.4.13"
    assert results["mesh"] == {"data": 4, "fsdp": 1, "tensor": 2}
    assert set(results["tasks"]) == {"pubmedqa_mellama", "tiny_mc"}
    for name, task in results["tasks"].items():
        assert len(results["lm_eval"]["task_hashes"][name]) == 64 == len(task["task_hash"])
        assert 0.0 <= task["metrics"]["acc"] <= 1.0 and task["headline_metric"] == "acc"
        with open(workdir / "predictions" / f"{name}.jsonl") as f:
            records = [json.loads(line) for line in f]
        assert len(records) == task["num_examples"]
        assert task["metrics"]["acc"] == pytest.approx(sum(r["metrics"]["acc"] for r in records) / len(records))
    assert results["tasks"]["pubmedqa_mellama"]["num_examples"] == 6
    assert results["lm_eval"]["metadata"]["pubmedqa_file"] == os.path.join(env["data"], "pubmedqa.tsv")
    assert results["checkpoint"]["path"] == env["model"] and results["code"]["commit"]
    pq_file, mc_file = os.path.join(env["data"], "pubmedqa.tsv"), os.path.join(env["tasks"], "tiny_mc.jsonl")
    assert list(results["tasks"]["pubmedqa_mellama"]["data"]["sha256"]) == [pq_file]
    assert list(results["tasks"]["tiny_mc"]["data"]["sha256"]) == [mc_file]
    md = (workdir / "results.md").read_text()
    assert "| Task | Protocol | N | Metric | Score | Other metrics |" in md
    assert "| pubmedqa_mellama | multiple_choice | 6 | acc |" in md


@pytest.mark.slow  # subprocesses that load JAX and compile (~2-3 min on 2 shared cores)
def test_pubmedqa_builtin_loglik_and_lm_eval_predict_the_same(launched, env, tmp_path):
    """Same file, same prompt text: lm-eval scores " yes"/" no"/" maybe" after the prompt (its
    context/continuation split moves the prompt's final newline into every continuation, a term common
    to all three choices), the built-in protocol scores the same choice tokens; argmax agrees and the
    per-choice differences are one constant per example."""
    from configs.eval import get_config
    from mellama_jax.eval.runner import run

    cfg = get_config("loglik")
    cfg.checkpoint, cfg.tasks, cfg.data_dir = env["model"], "pubmedqa", env["data"]
    cfg.loglik_normalize, cfg.prompt_set, cfg.use_mesh, cfg.show_progress = "none", "mellama-v1", False, False
    run(cfg, str(tmp_path))
    with open(tmp_path / "predictions" / "pubmedqa.jsonl") as f:
        builtin = [json.loads(line) for line in f]
    workdir, _ = launched
    with open(workdir / "predictions" / "pubmedqa_mellama.jsonl") as f:
        ours = [json.loads(line) for line in f]
    assert [r["prompt"] for r in builtin] == [r["prompt"].rstrip("\n") + "\n" for r in ours]
    choices = ["yes", "no", "maybe"]
    for b, o in zip(builtin, ours):
        lm_scores = [resp[0][0] for resp in o["responses"]]
        assert choices[max(range(3), key=lambda i: lm_scores[i])] == b["prediction"]
        diffs = [x - y for x, y in zip(lm_scores, b["choice_logprobs"])]
        assert max(diffs) - min(diffs) < 1e-4, diffs


@pytest.mark.slow  # subprocesses that load JAX and compile (~2-3 min on 2 shared cores)
def test_cli_lm_eval_runs_lm_eval_with_the_adapter(env, tmp_path, launched):
    """The README's CLI line: lm-eval's own flags, the model found because our module registered it."""
    out = tmp_path / "out"
    _run([sys.executable, "-m", "mellama_jax.cli.lm_eval", "--model", "mellama_jax",
          "--model_args", f"checkpoint={env['model']},mesh_tensor=2", "--tasks", "pubmedqa_mellama",
          "--metadata", json.dumps({"pubmedqa_file": os.path.join(env["data"], "pubmedqa.tsv"),
                                    "prompt_set": "mellama-v1"}),
          "--batch_size", "4", "--output_path", str(out), "--log_samples"])
    found = [os.path.join(d, f) for d, _, files in os.walk(out) for f in files if f.startswith("results_")]
    assert len(found) == 1
    with open(found[0]) as f:
        cli = json.load(f)
    _, results = launched
    assert cli["results"]["pubmedqa_mellama"]["acc,none"] == results["tasks"]["pubmedqa_mellama"]["metrics"]["acc"]
    assert cli["task_hashes"]["pubmedqa_mellama"] == results["lm_eval"]["task_hashes"]["pubmedqa_mellama"]


def test_plain_lm_eval_command_cannot_find_the_adapter():
    """Why the README uses our module: lm-eval 0.4.x does not discover models from installed packages."""
    from lm_eval.api.registry import get_model

    code = "import lm_eval.api.registry as r; r.get_model('mellama_jax')"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode != 0 and "mellama_jax" in proc.stderr
    import mellama_jax.eval.lm_eval_adapter  # noqa: F401

    assert get_model("mellama_jax").__name__ == "MellamaJaxLM"


def test_parquet_and_json_task_yamls_read_the_same_docs(env, tmp_path):
    """Local data in the form `datasets` exports it (parquet) reads as the JSON-lines original."""
    import datasets
    from lm_eval.tasks import TaskManager

    src = os.path.join(env["tasks"], "tiny_mc.jsonl")
    pq = str(tmp_path / "tiny_mc.parquet")
    datasets.load_dataset("json", data_files=src, split="train").to_parquet(pq)
    with open(os.path.join(env["tasks"], "tiny_mc.yaml")) as f:
        yaml = f.read().replace("task: tiny_mc", "task: tiny_mc_parquet").replace("dataset_path: json",
                                                                                 "dataset_path: parquet")
    (tmp_path / "tiny_mc_parquet.yaml").write_text(yaml.replace(src, pq))
    from lm_eval.tasks import get_task_dict

    tasks = get_task_dict(["tiny_mc", "tiny_mc_parquet"], TaskManager(include_path=[env["tasks"], str(tmp_path)]))
    docs = {str(name): list(t.test_docs()) for name, t in tasks.items()}
    a, b = [docs[k] for k in sorted(docs)]
    assert len(a) == 3 and a == b
