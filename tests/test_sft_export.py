"""From an HF base to a LoRA SFT workdir to Hugging Face again: the merged export (transformers) and
the PEFT adapter export (peft.PeftModel) give the JAX model's logits; the exported tokenizer's
apply_chat_template gives the trained ids; evaluation loads the SFT workdir as it is."""
from __future__ import annotations

import os
import shutil
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from mellama_jax.checkpoint import lora_io  # noqa: E402
from mellama_jax.checkpoint.artifact import resolve_artifact  # noqa: E402
from mellama_jax.model import lora as lora_lib  # noqa: E402
from mellama_jax.model.llama import Llama  # noqa: E402

torch = pytest.importorskip("torch")
pytest.importorskip("peft")
SAMPLES = os.path.join(ROOT, "mellama_jax", "data", "samples")


@pytest.fixture(scope="module")
def sft_workdir(tmp_path_factory):
    from hf_fixtures import make_hf_model
    from configs.sft import get_config
    from mellama_jax.sft.run import run

    base = tmp_path_factory.mktemp("base")
    make_hf_model(str(base), "gqa", vocab_size=2000, max_shard_size=None)
    for name in ("tokenizer.model", "tokenizer_config.json"):
        shutil.copy(os.path.join(SAMPLES, name), base)
    c = get_config("tiny")
    c.model.init_from = str(base)
    c.data.tokenizer_path = ""  # the base's own tokenizer
    c.data.seq_len = 64
    c.train.steps = 3
    c.train.eval_every = 0
    c.train.checkpoint_every = 3
    c.lora.targets = "q,v,o,gate,down"
    workdir = tmp_path_factory.mktemp("sft")
    run(c, str(workdir))
    return str(base), str(workdir)


def _jax_logits(workdir, tokens):
    """Base + adapters through the model's LoRA path (not the merged weights)."""
    art = resolve_artifact(workdir)
    base = art.load_params(merge_adapters=False)
    spec, _ = lora_io.read_adapter_config(os.path.join(art.root, lora_io.ADAPTER_CONFIG))
    adapters = lora_io.restore_adapters(art.adapters["item_dir"], art.model_config, spec)
    assert np.abs(np.asarray(adapters["layers"]["attention"]["q_proj"]["b"])).max() > 0  # trained
    config = art.model_config.replace(dtype="float32")
    return np.asarray(Llama(config).apply({"params": base, "lora": lora_lib.scaled(adapters, spec)},
                                          jnp.asarray(tokens)))


def test_merged_and_adapter_exports_match_jax_in_transformers(sft_workdir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from mellama_jax.cli.convert import main as convert_main

    base, workdir = sft_workdir
    tokens = np.random.default_rng(0).integers(3, 2000, (2, 12))
    ours = _jax_logits(workdir, tokens)
    merged_dir, adapter_dir = str(tmp_path / "merged"), str(tmp_path / "adapter")
    assert convert_main(["orbax_to_hf", "--ckpt", workdir, "--out", merged_dir, "--merge_lora"]) == 0
    assert convert_main(["orbax_to_hf", "--ckpt", workdir, "--out", adapter_dir, "--adapter_only"]) == 0
    assert sorted(f for f in os.listdir(adapter_dir) if f.startswith("adapter")) == [
        "adapter_config.json", "adapter_model.safetensors"]
    with torch.no_grad():
        merged = AutoModelForCausalLM.from_pretrained(merged_dir).eval()(torch.tensor(tokens)).logits.numpy()
        peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter_dir).eval()
        via_peft = peft_model(torch.tensor(tokens)).logits.numpy()
        plain = AutoModelForCausalLM.from_pretrained(base).eval()(torch.tensor(tokens)).logits.numpy()
    assert np.abs(plain - ours).max() > 1e-4  # the adapters matter
    assert np.abs(merged - ours).max() <= 1e-4
    assert np.abs(via_peft - ours).max() <= 1e-4


def test_exported_chat_template_gives_trained_ids(sft_workdir, tmp_path):
    from transformers import AutoTokenizer

    from mellama_jax.checkpoint.convert import orbax_to_hf
    from mellama_jax.tokenizer import load_tokenizer
    from mellama_jax.tokenizer.chat_templates import encode_chat

    _, workdir = sft_workdir
    out = orbax_to_hf(workdir, str(tmp_path / "hf"))
    hf = AutoTokenizer.from_pretrained(out)
    conv = [{"role": "user", "content": "Is aspirin an NSAID?"}, {"role": "assistant", "content": "yes"}]
    ids, _ = encode_chat(load_tokenizer(os.path.join(workdir, "checkpoints", "tokenizer.model")), "mellama", conv)
    assert hf.apply_chat_template(conv, tokenize=True, return_dict=True)["input_ids"] == ids.tolist()


def test_eval_engine_loads_the_sft_workdir(sft_workdir):
    from mellama_jax.eval.engine import load_engine

    _, workdir = sft_workdir
    engine = load_engine(workdir, show_progress=False)
    tokens = np.random.default_rng(1).integers(3, 2000, (1, 9))
    got = np.asarray(Llama(engine.model_config.replace(dtype="float32")).apply({"params": engine.params},
                                                                                jnp.asarray(tokens)))
    assert np.abs(got - _jax_logits(workdir, tokens)).max() <= 1e-4
    assert engine.tokenizer.vocab_size == 2000


def test_merge_flags_need_a_lora_checkpoint(sft_workdir, tmp_path):
    from mellama_jax.cli.convert import main as convert_main

    base, _ = sft_workdir
    assert convert_main(["orbax_to_hf", "--ckpt", base, "--out", str(tmp_path / "x"), "--adapter_only"]) == 2


def test_eval_takes_the_chat_template_from_the_sft_workdir(sft_workdir, tmp_path):
    """The seam SFT -> eval needs no flag: chat_template=auto (the default) finds the trained template,
    in the workdir and in its HF export; a base without one is evaluated on raw prompts."""
    import ml_collections

    from configs.eval import get_config
    from mellama_jax.checkpoint.convert import orbax_to_hf
    from mellama_jax.eval.session import resolve_chat_template

    base, workdir = sft_workdir
    config = get_config()
    assert config.chat_template == "auto"

    def resolved(checkpoint, value="auto"):
        c = ml_collections.ConfigDict({"checkpoint": checkpoint, "chat_template": value})
        return resolve_chat_template(c)

    assert resolved(workdir) == "mellama"  # configs/sft.py trains with the Me-LLaMA wrapper
    assert resolved(orbax_to_hf(workdir, str(tmp_path / "hf"), merge_lora=True)) == "mellama"
    assert resolved(base) == "none"
    assert resolved(workdir, "llama2") == "llama2"  # an explicit choice wins
    foreign = tmp_path / "foreign"
    shutil.copytree(base, foreign)
    with open(foreign / "chat_template.jinja", "w") as f:
        f.write("{{ messages[0]['content'] }}")
    # A template that is none of ours is the model's own: rendered as Jinja (`model`), not an error.
    assert resolved(str(foreign)) == "model"
