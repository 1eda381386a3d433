"""HF <-> Orbax conversion: bit-identical round trips, configs transformers accepts, clear errors."""
import json
import os

import numpy as np
import pytest

from hf_fixtures import make_hf_model, rewrite_config
from mellama_jax.checkpoint.hf import ConversionError
from mellama_jax.checkpoint.safetensors_io import SafetensorsFile
from mellama_jax.checkpoint.convert import hf_to_orbax, orbax_to_hf
from mellama_jax.cli.convert import main as convert_main


def all_tensors(directory: str) -> dict[str, np.ndarray]:
    out = {}
    for name in sorted(os.listdir(directory)):
        if name.endswith(".safetensors"):
            handle = SafetensorsFile(os.path.join(directory, name))
            out.update({key: np.array(handle.get(key)) for key in handle.keys()})
    return out


@pytest.mark.parametrize("dtype,variant", [("bfloat16", "gqa"), ("float16", "linear_scaling_tied"),
                                           ("float32", "llama3_scaling")])
def test_round_trip_is_bit_identical(tmp_path, dtype, variant):
    from transformers import AutoConfig, AutoModelForCausalLM

    hf_dir, ckpt, back = (str(tmp_path / name) for name in ("hf", "ckpt", "back"))
    make_hf_model(hf_dir, variant, dtype=dtype)
    assert convert_main(["hf_to_orbax", "--hf_dir", hf_dir, "--out", ckpt]) == 0
    assert convert_main(["orbax_to_hf", "--ckpt", ckpt, "--out", back, "--max_shard_size_mb", "1"]) == 0

    original, restored = all_tensors(hf_dir), all_tensors(back)
    assert sorted(original) == sorted(restored)
    for name, value in original.items():
        assert restored[name].dtype == value.dtype, name
        np.testing.assert_array_equal(restored[name].view(np.uint8), value.view(np.uint8), err_msg=name)

    # The written config travels every field that matters, and transformers loads the directory.
    a, b = AutoConfig.from_pretrained(hf_dir), AutoConfig.from_pretrained(back)
    for field in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                  "num_key_value_heads", "rms_norm_eps", "tie_word_embeddings", "max_position_embeddings"):
        assert getattr(a, field) == getattr(b, field), field
    assert a.rope_parameters == b.rope_parameters
    model = AutoModelForCausalLM.from_pretrained(back)
    assert str(model.dtype) == f"torch.{dtype}"
    index = json.load(open(os.path.join(back, "model.safetensors.index.json")))
    assert set(index["weight_map"]) == set(original)
    assert os.path.isfile(os.path.join(back, "generation_config.json"))


def test_orbax_to_hf_casts_dtype_and_copies_tokenizer(tmp_path, capsys):
    import sentencepiece as spm
    from transformers import AutoModelForCausalLM

    hf_dir, ckpt, back = (str(tmp_path / name) for name in ("hf", "ckpt", "back"))
    make_hf_model(hf_dir, "gqa")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(f"patient {i} received {i % 7} mg of drug{i % 5}" for i in range(300)))
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=os.path.join(hf_dir, "tokenizer"),
                                   vocab_size=60, model_type="bpe", byte_fallback=False)
    hf_to_orbax(hf_dir, ckpt)
    assert os.path.isfile(os.path.join(ckpt, "tokenizer.model"))
    orbax_to_hf(ckpt, back, dtype="bfloat16")
    # a 60-piece tokenizer on a 256-row model is exported, with a warning naming both files
    assert "does not match model" in capsys.readouterr().err
    assert os.path.isfile(os.path.join(back, "tokenizer.model"))
    assert all(v.dtype.name == "bfloat16" for v in all_tensors(back).values())
    assert json.load(open(os.path.join(back, "config.json")))["torch_dtype"] == "bfloat16"
    AutoModelForCausalLM.from_pretrained(back)


def test_converter_cli_reports_peak_rss(tmp_path, capsys):
    make_hf_model(str(tmp_path / "hf"), "gqa")
    assert convert_main(["hf_to_orbax", "--hf_dir", str(tmp_path / "hf"), "--out", str(tmp_path / "ck")]) == 0
    assert "peak RSS" in capsys.readouterr().out
    assert not [name for name in os.listdir(tmp_path / "ck") if name.startswith(".staging")]


# --- bad input: each error names the file and the tensor ------------------------------------------
def test_missing_config_json(tmp_path):
    (tmp_path / "hf").mkdir()
    with pytest.raises(ConversionError, match=r"config\.json"):
        hf_to_orbax(str(tmp_path / "hf"), str(tmp_path / "out"))


def test_shape_mismatch_names_file_and_tensor(tmp_path):
    hf_dir = str(tmp_path / "hf")
    make_hf_model(hf_dir, "gqa", max_shard_size=None)
    rewrite_config(hf_dir, intermediate_size=200)
    with pytest.raises(ConversionError, match=r"model\.safetensors.*'model\.layers\.0\.mlp\.\w+_proj\.weight'.*shape"):
        hf_to_orbax(hf_dir, str(tmp_path / "out"))


def rewrite_single_file_checkpoint(tmp_path, edit) -> str:
    """A single-file HF checkpoint whose tensor list [(name, array)] was passed through `edit`."""
    from mellama_jax.checkpoint.safetensors_io import write_file

    hf_dir = str(tmp_path / "hf")
    make_hf_model(hf_dir, "gqa", max_shard_size=None)
    path = os.path.join(hf_dir, "model.safetensors")
    handle = SafetensorsFile(path)
    tensors = [(k, np.array(handle.get(k))) for k in handle.keys()]
    del handle
    write_file(path, edit(tensors))
    return hf_dir


def test_unknown_tensor_names_file(tmp_path):
    extra = ("model.layers.0.self_attn.q_proj.bias", np.zeros(64, np.float32))
    hf_dir = rewrite_single_file_checkpoint(tmp_path, lambda tensors: tensors + [extra])
    with pytest.raises(ConversionError, match=r"model\.safetensors: unknown tensor 'model\.layers\.0\.self_attn\.q_proj\.bias'"):
        hf_to_orbax(hf_dir, str(tmp_path / "out"))


def test_index_naming_missing_shard(tmp_path):
    hf_dir = str(tmp_path / "hf")
    make_hf_model(hf_dir, "gqa")
    index = json.load(open(os.path.join(hf_dir, "model.safetensors.index.json")))
    missing = sorted(set(index["weight_map"].values()))[-1]
    os.remove(os.path.join(hf_dir, missing))
    with pytest.raises(ConversionError, match=rf"index\.json: names shard '{missing}', which does not exist"):
        hf_to_orbax(hf_dir, str(tmp_path / "out"))


def test_missing_tensor_is_reported(tmp_path):
    hf_dir = rewrite_single_file_checkpoint(
        tmp_path, lambda tensors: [(k, v) for k, v in tensors if k != "model.norm.weight"])
    with pytest.raises(ConversionError, match=r"missing tensor\(s\) \['model\.norm\.weight'\]"):
        hf_to_orbax(hf_dir, str(tmp_path / "out"))


def test_truncated_safetensors_names_file(tmp_path):
    hf_dir = str(tmp_path / "hf")
    make_hf_model(hf_dir, "gqa", max_shard_size=None)
    path = os.path.join(hf_dir, "model.safetensors")
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
    with pytest.raises(ValueError, match=r"model\.safetensors.*truncated"):
        hf_to_orbax(hf_dir, str(tmp_path / "out"))


def test_cli_exits_2_with_message(tmp_path, capsys):
    assert convert_main(["hf_to_orbax", "--hf_dir", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert "config.json" in capsys.readouterr().err


def test_meta_layout_permutation_round_trips_and_matches_rotary():
    """Meta's interleaved RoPE on Meta-layout weights == rotate-half RoPE on the permuted weights."""
    from mellama_jax.checkpoint.hf import hf_to_meta_qk, meta_to_hf_qk

    rng = np.random.RandomState(0)
    heads, d, hidden = 2, 8, 16
    w_meta = rng.randn(heads * d, hidden).astype(np.float32)
    w_hf = meta_to_hf_qk(w_meta, heads)
    np.testing.assert_array_equal(hf_to_meta_qk(w_hf, heads), w_meta)
    x = rng.randn(hidden).astype(np.float32)
    theta = 1.7 * (10000 ** (-np.arange(0, d, 2) / d))
    # Meta: consecutive pairs (2j, 2j+1) rotate by theta_j.
    q = (w_meta @ x).reshape(heads, d // 2, 2)
    meta = np.stack([q[..., 0] * np.cos(theta) - q[..., 1] * np.sin(theta),
                     q[..., 0] * np.sin(theta) + q[..., 1] * np.cos(theta)], -1).reshape(heads, d)
    # HF: halves (j, j + d/2) rotate by theta_j.
    qh = (w_hf @ x).reshape(heads, d)
    cos, sin = np.cos(np.concatenate([theta, theta])), np.sin(np.concatenate([theta, theta]))
    hf = qh * cos + np.concatenate([-qh[:, d // 2:], qh[:, :d // 2]], -1) * sin
    np.testing.assert_allclose(hf_to_meta_qk(hf.reshape(heads * d, 1), heads).reshape(heads, d), meta, atol=1e-5)


def test_hf_to_orbax_streams_without_holding_the_model(tmp_path):
    """Peak RSS of a conversion stays far below floor + model size (the model is never resident)."""
    import subprocess
    import sys

    hf_dir = str(tmp_path / "hf")
    make_hf_model(hf_dir, "gqa", vocab_size=32000, hidden_size=512, intermediate_size=1376,
                  num_hidden_layers=6, num_attention_heads=4, num_key_value_heads=4, max_shard_size="60MB")
    model_mib = sum(os.path.getsize(os.path.join(hf_dir, f)) for f in os.listdir(hf_dir)) / 2**20
    largest_stacked_mib = 32000 * 512 * 4 / 2**20
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    floor = subprocess.run(
        [sys.executable, "-c", "import resource, jax, orbax.checkpoint.experimental.v1, mellama_jax.cli.convert;"
         "from mellama_jax.model.presets import get_preset; from mellama_jax.model.llama import param_shapes;"
         "param_shapes(get_preset('tiny'));print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss/1024)"],
        capture_output=True, text=True, cwd=root, check=True)
    result = subprocess.run([sys.executable, "-m", "mellama_jax.cli.convert", "hf_to_orbax", "--hf_dir", hf_dir,
                             "--out", str(tmp_path / "ckpt")], capture_output=True, text=True, cwd=root, check=True)
    peak = float(result.stdout.split("peak RSS ")[1].split()[0])
    floor_mib = float(floor.stdout.split()[-1])
    assert model_mib > 150
    assert peak - floor_mib < 2 * largest_stacked_mib + 0.25 * model_mib, (peak, floor_mib, model_mib)
