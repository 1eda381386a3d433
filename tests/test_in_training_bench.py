"""Benchmarks inside training (eval/in_training.py): the scores logged every train.bench_every steps
from the live parameters equal the standalone evaluation of that step's checkpoint (pretraining on a
data x fsdp x tensor mesh, LoRA SFT, one device and a 2x2 mesh through launch.py), appear in
metrics.jsonl at the right steps, and bad input fails before the first step."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import eval_fixtures as F

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from configs.eval import get_config as eval_config  # noqa: E402
from configs.pretrain import get_config as pretrain_config  # noqa: E402
from configs.sft import get_config as sft_config  # noqa: E402
from mellama_jax.config_validation import ConfigRangeError, validate_config  # noqa: E402
from mellama_jax.eval import in_training  # noqa: E402
from mellama_jax.eval import runner  # noqa: E402
from mellama_jax.train import loop  # noqa: E402

TASKS = "pubmedqa,medqa"


def write_base(directory: str, tok: str, vocab: int, seed: int = 0) -> str:
    """A tiny random model artifact (the `tiny` preset at the tokenizer's vocab) carrying `tok`."""
    import jax
    from mellama_jax.checkpoint.orbax_io import save_params
    from mellama_jax.model.llama import init_params
    from mellama_jax.model.presets import get_preset

    config = get_preset("tiny", vocab_size=vocab)
    params = jax.tree.map(np.asarray, init_params(config, jax.random.key(seed)))
    save_params(directory, config, params, tokenizer_files=(tok,))
    return directory


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    import sentencepiece as spm

    root = tmp_path_factory.mktemp("inbench")
    tok = F.write_tokenizer(str(root / "tok"))
    vocab = spm.SentencePieceProcessor(model_file=tok).GetPieceSize()
    base = write_base(str(root / "base"), tok, vocab)
    data = str(root / "benchmarks")
    F.write_all(data)
    F.write_pubmedqa_tsv(os.path.join(data, "pubmedqa.tsv"), n=9)  # more than one batch of rows
    F.write_medqa(os.path.join(data, "medqa.jsonl"), n=7)
    return {"root": root, "tok": tok, "vocab": vocab, "base": base, "data": data}


def _pretrain(env, mesh=(2, 2, 2), steps=6, every=3, **bench):
    c = pretrain_config("tiny")
    c.model.init_from = env["base"]
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = mesh
    c.train.steps, c.train.bench_every, c.train.checkpoint_every = steps, every, every
    c.train.eval_every, c.train.log_every = 0, 2
    c.train.async_checkpointing = False
    c.bench.tasks, c.bench.data_dir, c.bench.protocol, c.bench.batch_size = TASKS, env["data"], "loglik", 4
    for k, v in bench.items():
        c.bench[k] = v
    return c


def _standalone(env, checkpoint, workdir, mesh=None, **kw):
    """runner.run, what launch.py runs for configs/eval.py; on eval's own mesh unless `mesh` is given
    (the training mesh: the same compiled programs, which keeps the fast tests fast)."""
    c = eval_config()
    c.checkpoint, c.tasks, c.data_dir, c.protocol, c.show_progress = checkpoint, TASKS, env["data"], "loglik", False
    c.bootstrap.iterations, c.batch_size = 0, 4
    if mesh is not None:
        c.mesh.data, c.mesh.fsdp, c.mesh.tensor = mesh
    for k, v in kw.items():
        c[k] = v
    validate_config(c)
    return runner.run(c, str(workdir))


def _rows(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def _bench_rows(workdir):
    return {r["step"]: r for r in _rows(workdir) if any(k.startswith("bench/") for k in r)}


def _train(config, workdir):
    validate_config(config)
    hooks = in_training.prepare(config, str(workdir))
    loop.run(config, str(workdir), make_hooks=hooks)
    return hooks


def _assert_same(hooks, results, rows, step):
    """Every metric equal (choice tasks: discrete, so ==); per-example choice log-probs within 1e-5."""
    hook = hooks.hooks[0]
    for task, r in results["tasks"].items():
        for k, v in r["metrics"].items():
            assert rows[step][f"bench/{task}/{k}"] == v, (task, k)
        live_records = hook.last[task][1]
        saved = [json.loads(line) for line in open(os.path.join(results["_workdir"], "predictions", f"{task}.jsonl"))]
        assert [x["prediction"] for x in live_records] == [x["prediction"] for x in saved]
        np.testing.assert_allclose([x["choice_logprobs"] for x in live_records],
                                   [x["choice_logprobs"] for x in saved], rtol=0, atol=1e-5)


def test_pretrain_bench_equals_standalone_eval_on_a_mesh_at_the_right_steps(env, tmp_path):
    work = tmp_path / "run"
    mesh = (2, 2, 2)
    config = _pretrain(env, mesh=mesh, steps=4, every=2, tasks="medqa", max_examples=4)
    hooks = _train(config, work)
    rows = _bench_rows(work)
    assert sorted(rows) == [2, 4]  # every 2 steps; the last step is a multiple
    for step in rows:
        assert {"bench/medqa/accuracy", "bench/medqa/macro_f1"} <= set(rows[step]) and rows[step]["bench/seconds"] > 0
    # the hook saw the last step: compare with the standalone evaluation of checkpoint 4
    results = _standalone(env, str(work / "checkpoints" / "4"), tmp_path / "eval4", mesh=mesh, tasks="medqa",
                          max_examples=4)
    results["_workdir"] = str(tmp_path / "eval4")
    _assert_same(hooks, results, rows, 4)
    # the live state, not a stale copy: checkpoint 2 scores differently from 4 per example
    _standalone(env, str(work / "checkpoints" / "2"), tmp_path / "eval3", mesh=mesh, tasks="medqa", max_examples=4)
    at3 = [json.loads(line)["choice_logprobs"] for line in open(tmp_path / "eval3" / "predictions" / "medqa.jsonl")]
    assert not np.allclose(at3, [x["choice_logprobs"] for x in hooks.hooks[0].last["medqa"][1]], atol=1e-4)


@pytest.mark.slow  # two tasks, two checkpoints, another mesh
def test_bench_at_step_3_is_that_checkpoints_score_and_the_last_step_always_runs(env, tmp_path):
    work = tmp_path / "run"
    config = _pretrain(env, mesh=(1, 4, 2), steps=5, every=3, max_examples=5)
    hooks = _train(config, work)
    rows = _bench_rows(work)
    assert sorted(rows) == [3, 5]  # every 3 steps, and the last one
    for step in (3, 5):
        results = _standalone(env, str(work / "checkpoints" / str(step)), tmp_path / f"eval{step}", max_examples=5)
        for task, r in results["tasks"].items():
            assert r["num_examples"] == 5
            for k, v in r["metrics"].items():
                assert rows[step][f"bench/{task}/{k}"] == v, (step, task, k)
    assert hooks.hooks[0].last["pubmedqa"][0]["num_examples"] == 5


@pytest.mark.slow  # SFT data pipeline + LoRA compiles
def test_lora_sft_bench_scores_the_merged_model_as_its_checkpoint_evaluates(env, tmp_path):
    work = tmp_path / "sft"
    c = sft_config("tiny")
    c.model.init_from = env["base"]
    c.data.tokenizer_path = ""  # the base's tokenizer
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 2, 2, 2
    c.train.steps, c.train.bench_every, c.train.checkpoint_every, c.train.eval_every = 4, 4, 4, 0
    c.train.async_checkpointing = False
    c.optim.learning_rate = 5e-2  # adapters that change the scores
    c.bench.tasks, c.bench.data_dir, c.bench.protocol = TASKS, env["data"], "loglik"
    assert c.bench.chat_template == "auto"
    validate_config(c)
    hooks = in_training.prepare(c, str(work))
    assert hooks.view.chat_template == "mellama"  # the SFT run's template, as its checkpoints carry
    from mellama_jax.sft import run as sft_run

    sft_run.run(c, str(work), make_hooks=hooks)
    rows = _bench_rows(work)
    assert sorted(rows) == [4]
    results = _standalone(env, str(work), tmp_path / "eval")  # chat_template=auto: the workdir's
    results["_workdir"] = str(tmp_path / "eval")
    assert all(r["chat_template"] == "mellama" for r in results["tasks"].values())
    _assert_same(hooks, results, rows, 4)
    # and the adapters matter: the base alone scores differently
    base = _standalone(env, env["base"], tmp_path / "eval_base", chat_template="mellama")
    live = [x["choice_logprobs"] for x in hooks.hooks[0].last["medqa"][1]]
    saved_base = [json.loads(line)["choice_logprobs"] for line in open(tmp_path / "eval_base" / "predictions" / "medqa.jsonl")]
    assert base["tasks"]["medqa"] and not np.allclose(live, saved_base, atol=1e-3)


# ------------------------------------------------------------------------------------- bad input
def _refused(env, tmp_path, match, exc=in_training.BenchConfigError, **changes):
    """The run stops before its first step: nothing compiled, no checkpoint, no metrics."""
    import launch

    c = _pretrain(env)
    for key, value in changes.items():
        node = c
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    work = tmp_path / "refused"
    with pytest.raises(exc, match=match):
        launch.validate(c)
        launch.run_pretrain(c, str(work))
    assert not (work / "checkpoints").exists() and not (work / "metrics.jsonl").exists()


def test_unknown_task_is_refused_before_the_first_step(env, tmp_path):
    _refused(env, tmp_path, r"config\.bench\.tasks: unknown task 'pubmedqq'", **{"bench.tasks": "pubmedqa,pubmedqq"})


def test_missing_task_file_is_refused_naming_task_and_path(env, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    _refused(env, tmp_path, rf"medqa: no test data under '{re.escape(str(empty))}'.*config\.bench\.task_paths\.medqa",
             **{"bench.data_dir": str(empty), "bench.task_paths.pubmedqa": os.path.join(env["data"], "pubmedqa.tsv")})
    missing = str(tmp_path / "nowhere" / "medqa.jsonl")
    _refused(env, tmp_path, rf"medqa: data path '{re.escape(missing)}' does not exist",
             **{"bench.task_paths.medqa": missing})


def test_bad_bench_keys_are_refused_before_the_workdir(env, tmp_path):
    _refused(env, tmp_path, r"config\.train\.bench_every=3 but config\.bench\.tasks is empty", ConfigRangeError,
             **{"bench.tasks": ""})
    _refused(env, tmp_path, r"config\.train\.bench_every=-1: must be >= 0", ConfigRangeError,
             **{"train.bench_every": -1})
    _refused(env, tmp_path, r"config\.bench\.max_examples=-2", ConfigRangeError, **{"bench.max_examples": -2})
    _refused(env, tmp_path, r"config\.bench\.protocol='rank'", **{"bench.protocol": "rank"})
    _refused(env, tmp_path, r"config\.bench\.chat_template='chatml'", **{"bench.chat_template": "chatml"})
    _refused(env, tmp_path, r"needs a tokenizer", **{"model.init_from": ""})


def test_off_by_default_and_every_shipped_config_has_the_keys():
    for get, variant in ((pretrain_config, "tiny"), (pretrain_config, "llama2_7b"), (sft_config, "tiny")):
        c = get(variant)
        assert c.train.bench_every == 0 and c.bench.tasks == ""
        assert in_training.prepare(c, "/nonexistent") is None
        ref = eval_config()
        for key in c.bench:  # configs/eval.py's defaults, not copies of them
            if key != "tasks":
                assert (c.bench[key].to_dict() if hasattr(c.bench[key], "to_dict") else c.bench[key]) == \
                    (ref[key].to_dict() if hasattr(ref[key], "to_dict") else ref[key]), key


# ----------------------------------------------------------------------------- launch.py, as run
def _launch(args, cwd, devices):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO,
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    r = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, f"{args}\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    return r


def test_launch_refuses_a_missing_task_file_before_compiling(env, tmp_path):
    env_vars = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1")
    r = subprocess.run([sys.executable, "launch.py", "--config", "configs/pretrain.py:tiny", "--workdir", str(tmp_path / "w"),
                        f"--config.model.init_from={env['base']}", "--config.train.bench_every=5",
                        "--config.bench.tasks=pubmedqa,mednli", f"--config.bench.task_paths.mednli={tmp_path}/no.jsonl",
                        f"--config.bench.data_dir={env['data']}"], cwd=REPO, env=env_vars, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode != 0
    assert f"mednli: data path '{tmp_path}/no.jsonl' does not exist" in r.stderr
    assert "mesh {" not in r.stdout + r.stderr  # before the mesh, the model, any compile
    assert not (tmp_path / "w" / "checkpoints").exists()


@pytest.mark.slow
@pytest.mark.parametrize("devices,mesh", [(4, ("--config.mesh.fsdp=2", "--config.mesh.tensor=2"))])
def test_launch_bench_equals_launch_eval_on_a_2x2_mesh(env, tmp_path, devices, mesh):
    work = tmp_path / "run"
    _launch(["launch.py", "--config", "configs/pretrain.py:tiny", "--workdir", str(work),
             f"--config.model.init_from={env['base']}", "--config.train.bench_every=10", *mesh,
             f"--config.bench.tasks={TASKS}", "--config.bench.protocol=loglik", f"--config.bench.data_dir={env['data']}"],
            REPO, devices)
    rows = _bench_rows(work)
    assert sorted(rows) == [10, 20]
    _launch(["launch.py", "--config", "configs/eval.py", "--workdir", str(tmp_path / "eval"),
             f"--config.checkpoint={work}/checkpoints/20", f"--config.tasks={TASKS}", "--config.protocol=loglik",
             f"--config.data_dir={env['data']}"], REPO, devices)
    results = json.load(open(tmp_path / "eval" / "results.json"))
    assert results["mesh"] == {"data": devices, "fsdp": 1, "tensor": 1}  # eval's own default mesh
    for task, r in results["tasks"].items():
        for k, v in r["metrics"].items():
            assert rows[20][f"bench/{task}/{k}"] == v, (task, k)


README_TITLE = "### Benchmarks during training"


def _readme_commands() -> list[str]:
    text = open(os.path.join(REPO, "README.md"), encoding="utf-8").read()
    start = text.index(README_TITLE + "\n")
    end = min(i for i in (text.find("\n## ", start + 1), text.find("\n### ", start + 1)) if i > 0)
    blocks = re.findall(r"```bash\n(.*?)```", text[start:end], flags=re.S)
    joined = "\n".join(blocks).replace("\\\n", " ")
    return [" ".join(line.split()) for line in joined.splitlines() if line.strip() and not line.startswith("#")]


@pytest.mark.slow
def test_readme_commands_run_as_written_on_one_device(env, tmp_path):
    """The README's two commands, in a directory holding `base` (a tiny model artifact) and
    `benchmarks` (the fixtures); the logged step-20 scores equal the evaluation of checkpoint 20."""
    import shutil

    cwd = tmp_path
    shutil.copytree(env["base"], cwd / "base")
    shutil.copytree(env["data"], cwd / "benchmarks")
    for name in ("launch.py", "configs"):
        os.symlink(os.path.join(REPO, name), cwd / name)
    commands = _readme_commands()
    assert len(commands) == 2 and all(c.startswith("python launch.py ") for c in commands), commands
    for cmd in commands:
        _launch(cmd.split()[1:], str(cwd), 1)
    rows = _bench_rows(cwd / "runs" / "bench")
    assert sorted(rows) == [10, 20]
    results = json.load(open(cwd / "runs" / "bench_eval20" / "results.json"))
    assert results["mesh"] == {"data": 1, "fsdp": 1, "tensor": 1}
    for task, r in results["tasks"].items():
        for k, v in r["metrics"].items():
            assert rows[20][f"bench/{task}/{k}"] == v, (task, k)
