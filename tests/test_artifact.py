"""The model artifact: a training workdir is a checkpoint everywhere (eval, init_from, orbax_to_hf)
with its tokenizer; the data pipeline takes the model's tokenizer; mismatches fail before data."""
import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

from hf_fixtures import make_hf_model  # noqa: E402
from mellama_jax.checkpoint.artifact import checkpoint_kind, resolve_artifact  # noqa: E402
from mellama_jax.data.config import SAMPLES_DIR  # noqa: E402
from mellama_jax.tokenizer import TokenizerMismatchError, check_tokenizer, load_tokenizer  # noqa: E402

BUNDLED = os.path.join(SAMPLES_DIR, "tokenizer.model")
TEXTS = ["Metformin 500 mg twice daily.", " leading space", "  two  spaces here", "BP 142/91, HbA1c 7.8%",
         "line one\nline two", "café 東京 🙂", "", "The patient was started on tocilizumab."]


def _env():
    env = dict(os.environ, PYTHONPATH=ROOT, XLA_FLAGS="--xla_force_host_platform_device_count=2",
               JAX_PLATFORMS="cpu")
    return env


@pytest.fixture(scope="module")
def hf_model(tmp_path_factory):
    """A tiny HF LLaMA whose own LLaMA-style tokenizer (trained on general text) is not the bundled one."""
    from mellama_jax.data.train_tokenizer import train_tokenizer

    root = tmp_path_factory.mktemp("artifact")
    hf_dir = str(root / "hf")
    texts = [line for line in open(os.path.join(SAMPLES_DIR, "general", "general_sample.jsonl"))]
    tok = train_tokenizer([json.loads(t)["text"] for t in texts], hf_dir, vocab_size=512)
    make_hf_model(hf_dir, "gqa", vocab_size=512)
    return {"root": root, "hf": hf_dir, "tok": tok}


def _launch(workdir, *overrides, variant="tiny"):
    return subprocess.run([sys.executable, "launch.py", "--config", f"configs/pretrain.py:{variant}",
                           "--workdir", str(workdir), *overrides], cwd=ROOT, env=_env(),
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def workdir(hf_model):
    """Four steps of training from the HF model; checkpoints at steps 2 and 4."""
    w = hf_model["root"] / "run"
    r = _launch(w, f"--config.model.init_from={hf_model['hf']}", "--config.train.steps=4",
                "--config.train.checkpoint_every=2", "--config.train.eval_every=0", "--config.train.log_every=2",
                "--config.data.seq_len=16", "--config.train.global_batch_size=4")
    assert r.returncode == 0, r.stderr[-3000:]
    return str(w)


def test_training_workdir_is_a_checkpoint_everywhere(hf_model, workdir, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mellama_jax.cli.convert import main as convert_main
    from mellama_jax.eval.engine import load_engine
    from mellama_jax.model.llama import Llama

    # the experiment config never takes the Hugging Face file name
    assert os.path.isfile(os.path.join(workdir, "experiment_config.json"))
    assert not os.path.exists(os.path.join(workdir, "config.json"))
    art = resolve_artifact(workdir)
    assert (art.kind, art.step) == ("training", 4) and resolve_artifact(workdir, step=2).step == 2
    assert art.tokenizer_file == os.path.join(workdir, "checkpoints", "tokenizer.model")
    assert load_tokenizer(art.tokenizer_file).sha256() == load_tokenizer(hf_model["tok"]).sha256()
    assert art.provenance["source"]["init_from"] == hf_model["hf"] and art.provenance["step"] == 4
    with pytest.raises(FileNotFoundError, match=r"step 3 \(have \[2, 4\]\)"):
        resolve_artifact(workdir, step=3)

    # evaluation: the workdir with no tokenizer flag
    engine = load_engine(workdir, show_progress=False)
    assert engine.tokenizer.sha256() == load_tokenizer(hf_model["tok"]).sha256()
    ids = engine.tokenizer.encode(TEXTS[0])
    (ours,), _ = engine.loglik([(ids[:3], ids[3:])])

    # orbax_to_hf on the workdir: newest step by default, --step for another, tokenizer included
    out, out2 = str(tmp_path / "hf4"), str(tmp_path / "hf2")
    assert convert_main(["orbax_to_hf", "--ckpt", workdir, "--out", out]) == 0
    assert convert_main(["orbax_to_hf", "--ckpt", workdir, "--step", "2", "--out", out2]) == 0
    hf_tok = AutoTokenizer.from_pretrained(out)
    project = load_tokenizer(os.path.join(out, "tokenizer.model"))
    for text in TEXTS:
        assert hf_tok(text)["input_ids"] == project.encode(text), repr(text)
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    tokens = np.array([project.encode(TEXTS[0])], np.int32)
    with torch.no_grad():
        ref = model(torch.tensor(tokens, dtype=torch.long)).logits.numpy()
    logits = Llama(art.model_config.replace(param_dtype="float32")).apply({"params": art.load_params()}, tokens)
    np.testing.assert_allclose(np.asarray(logits), ref, atol=1e-4, rtol=1e-4)
    logp = torch.log_softmax(torch.tensor(ref[0]), -1)
    theirs = sum(float(logp[t - 1, ids[t]]) for t in range(3, len(ids)))
    np.testing.assert_allclose(ours, theirs, rtol=1e-4)
    p2 = resolve_artifact(workdir, step=2).load_params()
    m2 = AutoModelForCausalLM.from_pretrained(out2)
    np.testing.assert_array_equal(m2.model.embed_tokens.weight.detach().numpy(),
                                  np.asarray(p2["embed_tokens"]["embedding"]))

    # a training workdir seeds another run (init_from), and an old workdir (config.json) still resolves
    legacy = str(tmp_path / "legacy")
    shutil.copytree(workdir, legacy)
    os.rename(os.path.join(legacy, "experiment_config.json"), os.path.join(legacy, "config.json"))
    assert checkpoint_kind(legacy) == "workdir"
    assert resolve_artifact(legacy).step == 4
    from configs.pretrain import get_config
    from mellama_jax.train import loop
    config = get_config("tiny")
    config.model.init_from = legacy
    assert loop.resolve_model_config(config) == art.model_config.replace(param_dtype="float32")


def test_init_from_only_uses_the_models_tokenizer(hf_model, tmp_path, monkeypatch):
    """configs/pretrain.py:llama2_7b with init_from set: batches are the model tokenizer's ids; a
    mismatched tokenizer fails before any data is read, naming both files."""
    from configs.pretrain import get_config
    from mellama_jax.checkpoint.model_spec import check_training_tokenizer, training_tokenizer_file
    from mellama_jax.train import loop

    config = get_config("llama2_7b")
    config.model.init_from = hf_model["hf"]
    general = os.path.join(SAMPLES_DIR, "general", "general_sample.jsonl")
    for name in list(config.data.sources.keys()):  # the placeholders ~/data/... do not exist here
        config.data.sources[name].paths = (general,)
        config.data.sources[name].format = "jsonl"
        config.data.sources[name].require_prepared = False
    config.data.seq_len, config.data.packing, config.data.reader = 32, "pack", "direct"
    config.data.data_dir = str(tmp_path / "data")
    config.train.global_batch_size, config.train.micro_batches = 8, 1  # the recipe's 8 need 64 rows
    assert config.data.tokenizer_path == ""

    path = training_tokenizer_file(config)
    assert path == os.path.join(hf_model["hf"], "tokenizer.model")
    tok = load_tokenizer(path)
    model_config = loop.resolve_model_config(config, tok.vocab_size)
    check_training_tokenizer(config, tok, path, model_config)
    pipe = loop.build_pipeline(config, None, tok)
    encoded = [tok.encode(json.loads(line)["text"], bos=True, eos=True) for line in open(general)]
    batch = pipe.batch(0)
    checked = 0
    for row in range(batch["inputs"].shape[0]):
        seg = batch["segment_ids"][row]
        full = np.concatenate([batch["inputs"][row], batch["targets"][row][-1:]])
        for s in set(seg[seg > 0].tolist()):
            piece = full[np.r_[seg == s, False]].tolist()
            assert any(_contains(doc, piece) for doc in encoded), "a segment is not the model tokenizer's ids"
            checked += 1
    assert checked >= 8
    bundled = load_tokenizer(BUNDLED)
    assert any(bundled.encode(json.loads(line)["text"], bos=True, eos=True) != encoded[i]
               for i, line in enumerate(open(general)))

    # a mismatched tokenizer (the bundled 2,000-piece one) is refused before any data is read
    config.data.tokenizer_path = BUNDLED
    config.data.data_dir = str(tmp_path / "data2")
    import mellama_jax.data.pipeline as pipeline_mod

    def no_data(*a, **k):
        raise AssertionError("data was read before the tokenizer check")
    monkeypatch.setattr(pipeline_mod, "build_train_pipeline", no_data)
    with pytest.raises(TokenizerMismatchError) as err:
        loop.run(config, str(tmp_path / "w"))
    assert BUNDLED in str(err.value) and os.path.join(hf_model["hf"], "config.json") in str(err.value)
    assert not os.path.exists(str(tmp_path / "data2"))


def _contains(doc: list[int], piece: list[int]) -> bool:
    n = len(piece)
    return any(doc[i:i + n] == piece for i in range(0, len(doc) - n + 1))


def test_launch_refuses_missing_tokenizer_before_any_work(tmp_path):
    """A real-data run with no tokenizer path and no init_from, or an eval of a path that is no model,
    fails in validation naming the key."""
    r = _launch(tmp_path / "w", "--config.data.synthetic=False", "--config.data.tokenizer_path=")
    assert r.returncode == 2 and "config.data.tokenizer_path" in r.stderr
    (tmp_path / "not_a_model").mkdir()
    r = subprocess.run([sys.executable, "launch.py", "--config", "configs/eval.py", "--workdir", str(tmp_path / "e"),
                        f"--config.checkpoint={tmp_path / 'not_a_model'}"], cwd=ROOT, env=_env(),
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 2 and "config.checkpoint=" in r.stderr and "neither a Hugging Face" in r.stderr


class _Tok:
    def __init__(self, vocab_size, bos=1, eos=2, pad=-1):
        self.vocab_size, self.bos_id, self.eos_id, self.declared_pad_id = vocab_size, bos, eos, pad


def test_check_tokenizer_names_both_files():
    from mellama_jax.model.presets import get_preset

    model = get_preset("tiny", vocab_size=512)
    check_tokenizer(_Tok(512), model, "t.model", "m.json")
    check_tokenizer(_Tok(500), model, "t.model", "m.json")  # 500 padded to a multiple of 256/512
    check_tokenizer(_Tok(300), model, "t.model", "m.json", allow_larger_model=True)
    for tok, what in ((_Tok(300), "300 pieces"), (_Tok(600), "600 pieces"), (_Tok(512, bos=0), "BOS id 0"),
                      (_Tok(512, eos=3), "EOS id 3")):
        with pytest.raises(TokenizerMismatchError, match=f"tokenizer t.model does not match model m.json: .*{what}"):
            check_tokenizer(tok, model, "t.model", "m.json")
    with pytest.raises(TokenizerMismatchError, match="pad id 5"):
        check_tokenizer(_Tok(512, pad=5), model.replace(pad_token_id=0), "t.model", "m.json")


def test_layouts_resolve(hf_model, tmp_path):
    from mellama_jax.checkpoint.load import load_pretrained
    from mellama_jax.checkpoint.convert import hf_to_orbax

    assert resolve_artifact(hf_model["hf"]).kind == "hf_dir"
    out = hf_to_orbax(hf_model["hf"], str(tmp_path / "ck"))
    art = resolve_artifact(out)
    assert art.kind == "orbax" and art.tokenizer_file == os.path.join(out, "tokenizer.model")
    assert art.provenance["source"] == hf_model["hf"]
    with pytest.raises(ValueError, match="step"):
        resolve_artifact(out, step=3)
    with pytest.raises(FileNotFoundError, match="neither a Hugging Face directory"):
        resolve_artifact(str(tmp_path))
    cfg, params = load_pretrained(out)
    ref = resolve_artifact(hf_model["hf"]).load_params()
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), params, ref)


def test_checkpoint_dir_carries_tokenizer_and_refuses_another_on_resume(hf_model, tmp_path):
    from configs.pretrain import get_config
    from mellama_jax.model.presets import get_preset
    from mellama_jax.train import loop
    from mellama_jax.train.synthetic import SyntheticPipeline

    config = get_config("tiny")
    model_config = get_preset("tiny", vocab_size=512)
    directory = str(tmp_path / "checkpoints")
    pipe = SyntheticPipeline(vocab_size=512, seq_len=int(config.data.seq_len), global_batch_size=8,
                             seed=int(config.data.seed))
    loop.write_artifact(directory, config, model_config, hf_model["tok"], pipeline=pipe)
    assert (load_tokenizer(os.path.join(directory, "tokenizer.model")).sha256()
            == load_tokenizer(hf_model["tok"]).sha256())
    assert os.path.isfile(os.path.join(directory, "tokenizer_config.json"))
    provenance = json.load(open(os.path.join(directory, "provenance.json")))
    assert provenance["tokenizer_sha256"] == load_tokenizer(hf_model["tok"]).sha256()
    loop.write_artifact(directory, config, model_config, hf_model["tok"], pipeline=pipe)  # same: fine
    with pytest.raises(ValueError, match="different tokenizer"):
        loop.write_artifact(directory, config, model_config, BUNDLED, pipeline=pipe)
