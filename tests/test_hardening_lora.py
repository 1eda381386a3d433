"""A LoRA workdir pins its base (step + weights fingerprint): merging, exporting, evaluating and resuming
refuse a base that changed, naming both; a LoRA run over a random base saves that base (W/base), so
configs/sft.py:tiny exports and evaluates with no flags."""
from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from configs.sft import get_config  # noqa: E402
from mellama_jax.checkpoint import lora_io  # noqa: E402
from mellama_jax.model.lora import LoraSpec  # noqa: E402
from mellama_jax.checkpoint.artifact import BASE_PIN, BasePinError, resolve_artifact  # noqa: E402
from mellama_jax.checkpoint.convert import orbax_to_hf  # noqa: E402
from mellama_jax.cli.convert import main as convert_main  # noqa: E402
from mellama_jax.sft.run import run  # noqa: E402


def _tiny(steps: int, **overrides):
    """configs/sft.py:tiny, smaller: seconds per run, one checkpoint at the end."""
    c = get_config("tiny")
    c.data.seq_len = 64
    c.train.steps = steps
    c.train.eval_every = 0
    c.train.log_every = 1
    c.train.checkpoint_every = 100
    for key, value in overrides.items():
        node = c
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return c


def _weights(hf_dir: str) -> dict:
    from safetensors.numpy import load_file

    out = {}
    for name in sorted(os.listdir(hf_dir)):
        if name.endswith(".safetensors"):
            out.update(load_file(os.path.join(hf_dir, name)))
    return out


@pytest.fixture(scope="module")
def base_and_lora(tmp_path_factory):
    """The issue's scenario: full-FT base B (2 steps), LoRA L over it, m1 = L merged."""
    root = tmp_path_factory.mktemp("pin")
    b, lora, m1 = str(root / "B"), str(root / "L"), str(root / "m1")
    run(_tiny(2, **{"lora.enabled": False}), b)
    run(_tiny(1, **{"model.init_from": b}), lora)
    orbax_to_hf(lora, m1, merge_lora=True)
    return root, b, lora, m1


@pytest.mark.slow
def test_lora_over_a_base_that_trained_on_merges_the_pinned_step_or_is_refused(base_and_lora, capsys):
    root, b, lora, m1 = base_and_lora
    body = json.load(open(os.path.join(lora, "checkpoints", lora_io.ADAPTER_CONFIG)))
    pin = body[BASE_PIN]
    assert pin["step"] == 2 and pin["how"] == "checkpoint integrity record" and len(pin["fingerprint"]) == 64
    # B trains on to step 4 (step 2 is still kept): the merge uses the step the adapters were trained
    # over, not B's newest, so the export is the very same model.
    run(_tiny(4, **{"lora.enabled": False}), b)
    assert resolve_artifact(b).step == 4
    m2 = str(root / "m2")
    assert convert_main(["orbax_to_hf", "--ckpt", lora, "--out", m2, "--merge_lora"]) == 0
    w1, w2 = _weights(m1), _weights(m2)
    assert w1.keys() == w2.keys() and all(np.array_equal(w1[k], w2[k]) for k in w1)

    # Resuming L now would train over B's step 4: refused, naming both.
    with pytest.raises(BasePinError) as err:
        run(_tiny(2, **{"model.init_from": b}), lora)
    assert "step 2" in str(err.value) and "step 4" in str(err.value) and b in str(err.value)
    # ... unless init_from names the recorded step itself.
    step2 = os.path.join(b, "checkpoints", "2")

    # Step 2 rotated away (keep_checkpoints): merge, adapter export, and evaluation's load refuse.
    moved = str(root / "step2-aside")
    shutil.move(step2, moved)
    capsys.readouterr()
    for flag in ("--merge_lora", "--adapter_only"):
        out = str(root / f"m3{flag}")
        assert convert_main(["orbax_to_hf", "--ckpt", lora, "--out", out, flag]) == 2
        msg = capsys.readouterr().err
        assert "step 2" in msg and "step 4" in msg and b in msg and "Traceback" not in msg, msg
        assert not os.path.exists(out)
    with pytest.raises(BasePinError):
        resolve_artifact(lora).load_params()

    # Step 2 rewritten with other weights (here: step 4's): the fingerprint differs, refused.
    shutil.copytree(os.path.join(b, "checkpoints", "4"), step2)
    with pytest.raises(BasePinError, match="fingerprint") as err:
        resolve_artifact(lora).load_params()
    assert "step 2" in str(err.value)
    shutil.rmtree(step2)
    shutil.move(moved, step2)

    # Resuming with init_from at the recorded step: the same weights, accepted.
    run(_tiny(2, **{"model.init_from": step2}), lora)
    assert resolve_artifact(lora).step == 2


def test_an_adapter_config_without_a_pin_warns_once_and_proceeds(fabricated, caplog, tmp_path):
    b, lora = fabricated
    old = tmp_path / "old"
    shutil.copytree(lora, old)
    path = old / "checkpoints" / lora_io.ADAPTER_CONFIG
    body = json.load(open(path))
    del body[BASE_PIN]
    path.write_text(json.dumps(body))
    with caplog.at_level(logging.WARNING):
        art = resolve_artifact(str(old))
        art.base_artifact()
        art.base_artifact()
    warnings = [r for r in caplog.records if "records no pin" in r.getMessage()]
    assert len(warnings) == 1 and b in warnings[0].getMessage()


# ------------------------------------------------------------------ fast: fabricated checkpoints, no training
def _save_step(checkpoints: str, step: int, params, model_config) -> None:
    """A training step as the Checkpointer writes it: params item + meta with the integrity record."""
    import orbax.checkpoint as ocp

    from mellama_jax.checkpoint.orbax_io import write_model_config
    from mellama_jax.train.checkpointing import fingerprint

    write_model_config(checkpoints, model_config)
    step_dir = os.path.join(checkpoints, str(step))
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(os.path.join(step_dir, "params"), params)
    os.makedirs(os.path.join(step_dir, "meta"))
    with open(os.path.join(step_dir, "meta", "metadata"), "w") as f:
        json.dump({"step": step, "integrity": {"version": 1, "params": fingerprint(params)[0]}}, f)


@pytest.fixture
def fabricated(tmp_path):
    """B: a training workdir at step 2; L: a LoRA workdir whose adapter_config pins B's step 2."""
    import jax

    from mellama_jax.checkpoint.artifact import base_pin
    from mellama_jax.model.llama import init_params
    from mellama_jax.model.presets import get_preset

    mc = get_preset("tiny").replace(vocab_size=256)
    b, lora = str(tmp_path / "B"), str(tmp_path / "L")
    _save_step(os.path.join(b, "checkpoints"), 2, init_params(mc, jax.random.key(0)), mc)
    ck = os.path.join(lora, "checkpoints")
    from mellama_jax.checkpoint.orbax_io import write_model_config

    write_model_config(ck, mc)
    os.makedirs(os.path.join(ck, "1", lora_io.ADAPTERS_ITEM))
    lora_io.write_adapter_config(ck, LoraSpec(4, 8.0, 0.0, ("q", "v")), b, None, base_pin(resolve_artifact(b)))
    return b, lora


def test_pinned_base_step_is_used_and_a_changed_base_is_refused_naming_both(fabricated, tmp_path, capsys):
    import jax

    from mellama_jax.model.llama import init_params

    b, lora = fabricated
    mc = resolve_artifact(b).model_config
    _save_step(os.path.join(b, "checkpoints"), 4, init_params(mc, jax.random.key(1)), mc)  # B trained on
    assert resolve_artifact(b).step == 4 and resolve_artifact(lora).base_artifact().step == 2
    step2 = os.path.join(b, "checkpoints", "2")
    moved = str(tmp_path / "aside")
    shutil.move(step2, moved)  # rotated away by keep_checkpoints
    with pytest.raises(BasePinError) as err:
        resolve_artifact(lora).load_params()
    assert "step 2" in str(err.value) and "step 4" in str(err.value) and b in str(err.value)
    capsys.readouterr()
    for flag in ("--merge_lora", "--adapter_only"):
        out = str(tmp_path / f"out{flag}")
        assert convert_main(["orbax_to_hf", "--ckpt", lora, "--out", out, flag]) == 2
        msg = capsys.readouterr().err
        assert "step 2" in msg and "step 4" in msg and b in msg and "Traceback" not in msg, msg
    shutil.copytree(os.path.join(b, "checkpoints", "4"), step2)  # step 2 now holds other weights
    with pytest.raises(BasePinError, match="fingerprint") as err:
        resolve_artifact(lora).base_artifact()
    assert "step 2" in str(err.value)
    # Resuming the LoRA run over the changed base: refused before any training, naming both.
    from mellama_jax.sft.run import _write_adapter_config

    c = _tiny(2, **{"model.init_from": b, "lora.rank": 4, "lora.alpha": 8.0, "lora.dropout": 0.0,
                    "lora.targets": "q,v"})
    with pytest.raises(BasePinError) as err:
        _write_adapter_config(c, lora, LoraSpec(4, 8.0, 0.0, ("q", "v")))
    assert "step 2" in str(err.value) and "step 4" in str(err.value)
    shutil.rmtree(step2)
    shutil.move(moved, step2)
    c.model.init_from = step2  # the recorded step itself: the same weights, accepted
    _write_adapter_config(c, lora, LoraSpec(4, 8.0, 0.0, ("q", "v")))


def test_lora_over_a_random_base_saves_it_and_exports_with_no_flags(tmp_path):
    """configs/sft.py:tiny (LoRA over a random base) used to leave a workdir that no export or eval
    could load ("names no 'base' model ... holds adapters only")."""
    torch = pytest.importorskip("torch")
    from transformers import AutoModelForCausalLM

    w, out = str(tmp_path / "w"), str(tmp_path / "hf")
    run(_tiny(1), w)
    base = os.path.join(w, "base")
    assert resolve_artifact(base).kind == "orbax"
    body = json.load(open(os.path.join(w, "checkpoints", lora_io.ADAPTER_CONFIG)))
    assert body["base"] == base and body[BASE_PIN]["how"] == "files"
    assert convert_main(["orbax_to_hf", "--ckpt", w, "--merge_lora", "--out", out]) == 0
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    with torch.no_grad():
        logits = model(torch.tensor([[1, 5, 9]])).logits
    assert torch.isfinite(logits).all()
    # A base rewritten with other weights is refused.
    import jax

    from mellama_jax.checkpoint.orbax_io import save_params
    from mellama_jax.model.llama import init_params

    mc = resolve_artifact(base).model_config
    save_params(str(tmp_path / "other"), mc, init_params(mc, jax.random.key(7)))
    shutil.rmtree(os.path.join(base, "params"))
    shutil.move(str(tmp_path / "other" / "params"), os.path.join(base, "params"))
    with pytest.raises(BasePinError):
        resolve_artifact(w).load_params()


@pytest.mark.slow
def test_shipped_tiny_sft_config_exports_and_loads_in_transformers(tmp_path):
    """The README's commands as written: launch.py --config configs/sft.py:tiny, then orbax_to_hf."""
    pytest.importorskip("torch")
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    w, out = str(tmp_path / "w"), str(tmp_path / "x")
    r = subprocess.run([sys.executable, "launch.py", "--config", "configs/sft.py:tiny", "--workdir", w],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    r = subprocess.run([sys.executable, "-m", "mellama_jax.cli.convert", "orbax_to_hf", "--ckpt", w,
                        "--merge_lora", "--out", out], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    from transformers import AutoModelForCausalLM, AutoTokenizer

    AutoModelForCausalLM.from_pretrained(out)
    assert AutoTokenizer.from_pretrained(out)("aspirin")["input_ids"]
