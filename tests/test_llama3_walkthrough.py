"""The README's LLaMA-3 walkthrough, run as written on a tiny random LLaMA-3-shaped model saved by
transformers with a trained byte-level BPE tokenizer.json (pretrain, SFT with llama3, evaluate, export)."""
import json
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))

import eval_fixtures as F  # noqa: E402
from bpe_fixtures import CLINICAL_TEXTS, make_llama3_model_dir  # noqa: E402


def _commands() -> list[str]:
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    start = text.index("## LLaMA-3 and other BPE tokenizers\n")
    section = text[start:text.index("\n## ", start + 1)]
    (block,) = re.findall(r"```bash\n(.*?)```", section, flags=re.S)
    return [line for line in block.splitlines() if line.strip() and not line.startswith("#")]


@pytest.mark.slow  # four processes (jax import each) and short runs: 12 min on 2 heavily loaded cores
def test_readme_llama3_walkthrough_runs_as_written(tmp_path):
    from transformers import AutoTokenizer

    from mellama_jax.checkpoint.artifact import resolve_artifact
    from mellama_jax.tokenizer import chat_templates as chat
    from mellama_jax.tokenizer import load_tokenizer

    cwd = str(tmp_path)
    make_llama3_model_dir(os.path.join(cwd, "Llama-3-tiny"))
    os.makedirs(os.path.join(cwd, "benchmarks"))
    F.write_pubmedqa_tsv(os.path.join(cwd, "benchmarks", "pubmedqa.tsv"))
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=2")
    commands = _commands()
    assert len(commands) == 4
    for cmd in commands:
        argv = cmd.split()
        argv[0] = sys.executable
        if argv[1] == "launch.py":
            argv[1] = os.path.join(ROOT, "launch.py")
        argv = [a.replace("configs/", os.path.join(ROOT, "configs") + "/", 1) if a.startswith("configs/") else a
                for a in argv]
        r = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
        assert r.returncode == 0, f"{cmd}\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}"

    source = load_tokenizer(os.path.join(cwd, "Llama-3-tiny"))
    for stage in ("runs/llama3_cpt", "runs/llama3_sft"):
        art = resolve_artifact(os.path.join(cwd, stage))
        assert art.tokenizer_file.endswith("tokenizer.json")
        assert art.load_tokenizer().fingerprint() == source.fingerprint()
    assert chat.template_name_for_jinja(resolve_artifact(os.path.join(cwd, "runs/llama3_sft")).chat_template) == "llama3"
    results = json.load(open(os.path.join(cwd, "runs/llama3_eval", "results.json")))
    assert "pubmedqa" in json.dumps(results) and "llama3" in json.dumps(results)
    out = os.path.join(cwd, "hf", "llama3_sft")
    hf = AutoTokenizer.from_pretrained(out)
    for text in CLINICAL_TEXTS:
        assert hf(text)["input_ids"] == source.encode(text)
    conv = [{"role": "user", "content": "Fever 38.5 °C?"}, {"role": "assistant", "content": "Yes."}]
    got = hf.apply_chat_template(conv, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    ids, trained = chat.encode_chat(source, "llama3", conv)
    assert list(got["input_ids"]) == ids.tolist() and list(got["assistant_masks"]) == trained.astype(int).tolist()
