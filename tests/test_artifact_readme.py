"""Every command of the README's "Python API" and "Converting weights" sections, run as written on tiny
stand-ins placed at the paths the README uses (a tiny HF LLaMA as Llama-2-7b-hf, a short training run
as runs/demo, the bundled PubMed samples as pubmed/)."""
import json
import os
import re
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))

from hf_fixtures import make_hf_model  # noqa: E402


def _section(title: str) -> str:
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    start = text.index(f"## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end > 0 else None]


def _blocks(section: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", section, flags=re.S)


def _commands(block: str) -> list[str]:
    return [line for line in block.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def _env():
    return dict(os.environ, PYTHONPATH=ROOT, XLA_FLAGS="--xla_force_host_platform_device_count=2",
                JAX_PLATFORMS="cpu")


def _run(cmd: str, cwd: str) -> subprocess.CompletedProcess:
    if cmd.startswith("python "):
        cmd = f"{sys.executable} {cmd[len('python '):]}"
    r = subprocess.run(cmd, shell=True, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"{cmd}\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    return r


def _stand_ins(cwd: str) -> None:
    from mellama_jax.data.config import SAMPLES_DIR
    from mellama_jax.data.train_tokenizer import train_tokenizer

    texts = [json.loads(line)["text"] for line in open(os.path.join(SAMPLES_DIR, "general", "general_sample.jsonl"))]
    for hf in ("Llama-2-7b-hf", os.path.join("path", "to", "Llama-2-7b-hf")):
        train_tokenizer(texts, os.path.join(cwd, hf), vocab_size=512)
        make_hf_model(os.path.join(cwd, hf), "gqa", vocab_size=512)
    shutil.copytree(os.path.join(SAMPLES_DIR, "pubmed"), os.path.join(cwd, "pubmed"))
    r = subprocess.run([sys.executable, os.path.join(ROOT, "launch.py"), "--config",
                        os.path.join(ROOT, "configs", "pretrain.py") + ":tiny", "--workdir", "runs/demo",
                        "--config.model.init_from=Llama-2-7b-hf", "--config.train.steps=100",
                        "--config.train.checkpoint_every=50", "--config.train.eval_every=0",
                        "--config.train.log_every=50", "--config.data.seq_len=16",
                        "--config.train.global_batch_size=2"],
                       cwd=cwd, env=_env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]


@pytest.mark.slow  # ~3 min: a 100-step run and eight CLI processes (jax import each)
def test_readme_python_api_and_converting_commands_run_as_written(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mellama_jax.tokenizer import load_tokenizer

    cwd = str(tmp_path)
    _stand_ins(cwd)
    (code,) = _blocks(_section("Python API"), "python")
    script = tmp_path / "readme_api.py"
    script.write_text(code + "\nprint('API OK', np.asarray(tokens).shape)\n")
    assert "API OK (2, 14)" in _run(f"python {script.name}", cwd).stdout

    commands = [c for block in _blocks(_section("Converting weights"), "bash") for c in _commands(block)]
    assert len(commands) == 6
    outputs = [_run(c, cwd) for c in commands]
    assert "runs/demo/checkpoints step 100" in outputs[-1].stdout
    assert outputs[-1].stdout.strip().endswith("runs/demo/checkpoints/tokenizer.model")

    # what the commands claim: HF exports load with a tokenizer that gives the project's ids, and the
    # extended + resized model is an artifact carrying the extended tokenizer
    for out, step in (("hf/demo", 100), ("hf/demo-step50", 50)):
        AutoModelForCausalLM.from_pretrained(os.path.join(cwd, out))
        hf_tok = AutoTokenizer.from_pretrained(os.path.join(cwd, out))
        ours = load_tokenizer(os.path.join(cwd, out, "tokenizer.model"))
        for text in ("Metformin 500 mg twice daily.", " leading space"):
            assert hf_tok(text)["input_ids"] == ours.encode(text)
    from mellama_jax.checkpoint.artifact import resolve_artifact
    bio = resolve_artifact(os.path.join(cwd, "ckpt/llama2-7b-bio"))
    ext = load_tokenizer(os.path.join(cwd, "tok/llama2-bio/tokenizer.model"))
    assert bio.tokenizer_file and load_tokenizer(bio.tokenizer_file).sha256() == ext.sha256()
    assert ext.vocab_size > 512 and bio.model_config.vocab_size % 64 == 0
    assert os.path.isfile(os.path.join(cwd, "tok/llama2-bio/fertility.json"))
