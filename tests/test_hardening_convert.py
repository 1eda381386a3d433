"""Robustness items 5-7: interrupted conversions leave the old output or nothing and can be rerun;
--overwrite replaces only what the tool created; safetensors headers are validated (errors name
file and tensor); index weight_map and PREPARED.json names cannot leave their directory."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import struct
import subprocess
import sys
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from hf_fixtures import make_hf_model
from mellama_jax.checkpoint.hf import ConversionError
from mellama_jax.checkpoint.hf_dir import HFWeights, load_hf_params
from mellama_jax.checkpoint.safetensors_io import SafetensorsError, SafetensorsFile, write_file
from mellama_jax.checkpoint.convert import hf_to_orbax, orbax_to_hf
from mellama_jax.cli.convert import main as convert_main
from mellama_jax.output_dir import OWNER_FILE

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def digests(directory) -> dict[str, str]:
    out = {}
    for root, _, files in os.walk(directory):
        for f in files:
            p = os.path.join(root, f)
            out[os.path.relpath(p, directory)] = hashlib.sha256(open(p, "rb").read()).hexdigest()
    return out


# Runs a conversion in a child that sleeps after each safetensors file / params leaf it writes,
# so the parent can kill -9 it mid-way.
SLOW_CHILD = """
import sys, time
sys.path.insert(0, {root!r}); sys.path.insert(0, {tests!r})
import mellama_jax.checkpoint.convert as c
from mellama_jax.cli.convert import main
real_write = c.write_file
def slow_write(*a, **k):
    real_write(*a, **k); print("wrote", flush=True); time.sleep(30)
c.write_file = slow_write
real_add = c.StreamingParamsWriter.add
def slow_add(self, *a, **k):
    real_add(self, *a, **k); print("wrote", flush=True); time.sleep(30)
c.StreamingParamsWriter.add = slow_add
sys.exit(main({argv!r}))
"""


def kill_after_first_write(argv: list[str]) -> None:
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    child = subprocess.Popen([sys.executable, "-c", SLOW_CHILD.format(root=ROOT, tests=os.path.join(ROOT, "tests"),
                                                                      argv=argv)],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    deadline = time.time() + 240
    for line in child.stdout:
        if line.startswith("wrote") or time.time() > deadline:
            break
    child.send_signal(signal.SIGKILL)
    child.wait()


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    base = tmp_path_factory.mktemp("conv")
    hf = str(base / "hf")
    make_hf_model(hf, "gqa")
    ckpt = str(base / "ckpt")
    hf_to_orbax(hf, ckpt)
    return base, hf, ckpt


# ------------------------------------------------------------------ 5. interrupted conversions
def test_5_killed_orbax_to_hf_reexport_leaves_the_old_export_and_reruns(converted, tmp_path):
    from transformers import AutoModelForCausalLM

    _, _, ckpt = converted
    out = str(tmp_path / "hf_out")
    orbax_to_hf(ckpt, out, dtype="float32", max_shard_bytes=20_000)
    before = digests(out)
    assert len([f for f in before if f.endswith(".safetensors")]) > 2
    # A re-export in bfloat16 killed after its first shard: used to leave float32 and bfloat16
    # shards mixed in `out`, which transformers loaded without a word.
    kill_after_first_write(["orbax_to_hf", "--ckpt", ckpt, "--out", out, "--dtype", "bfloat16",
                            "--max_shard_size_mb", "0", "--overwrite"])
    assert digests(out) == before
    assert [p for p in os.listdir(tmp_path) if p.startswith("hf_out.partial-")]
    assert convert_main(["orbax_to_hf", "--ckpt", ckpt, "--out", out, "--dtype", "bfloat16", "--overwrite"]) == 0
    assert os.listdir(tmp_path) == ["hf_out"]  # the dead run's partial output is gone too
    model = AutoModelForCausalLM.from_pretrained(out)
    assert all(str(p.dtype) == "torch.bfloat16" for p in model.parameters())


def test_5_killed_hf_to_orbax_can_be_rerun(converted, tmp_path):
    _, hf, ckpt = converted
    out = str(tmp_path / "ck")
    kill_after_first_write(["hf_to_orbax", "--hf_dir", hf, "--out", out])
    assert not os.path.exists(out)
    assert convert_main(["hf_to_orbax", "--hf_dir", hf, "--out", out]) == 0
    from mellama_jax.checkpoint.orbax_io import restore_params

    import jax
    jax.tree.map(np.testing.assert_array_equal, restore_params(os.path.join(out, "params")),
                 restore_params(os.path.join(ckpt, "params")))


def test_5_outputs_not_created_by_the_tool_are_never_touched(converted, tmp_path, capsys):
    _, _, ckpt = converted
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep")
    assert convert_main(["orbax_to_hf", "--ckpt", ckpt, "--out", str(out), "--overwrite"]) == 2
    assert "was not created by this tool" in capsys.readouterr().err
    assert os.listdir(out) == ["notes.txt"]
    # its own output: refused without --overwrite; with it, refused if something else was added
    own = tmp_path / "own"
    assert convert_main(["orbax_to_hf", "--ckpt", ckpt, "--out", str(own)]) == 0
    assert json.load(open(own / OWNER_FILE))["tool"] == "mellama_jax.cli.convert orbax_to_hf"
    assert convert_main(["orbax_to_hf", "--ckpt", ckpt, "--out", str(own)]) == 2
    (own / "README.md").write_text("my model card")
    assert convert_main(["orbax_to_hf", "--ckpt", ckpt, "--out", str(own), "--overwrite"]) == 2
    assert "did not write" in capsys.readouterr().err and (own / "README.md").exists()


# ------------------------------------------------------------------ 6. safetensors headers
def _file_with_header(tmp_path, mutate, name="t.safetensors"):
    path = str(tmp_path / name)
    write_file(path, [("a", np.arange(6, dtype=np.float32).reshape(2, 3)), ("b", np.ones(4, np.float32))])
    raw = open(path, "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    mutate(header)
    enc = json.dumps(header).encode()
    enc += b" " * (-len(enc) % 8)
    open(path, "wb").write(struct.pack("<Q", len(enc)) + enc + raw[8 + n:])
    return path


@pytest.mark.parametrize("mutate,expect", [
    (lambda h: h["b"].update(data_offsets=[-8, 8]), r"tensor 'b': data_offsets \[-8, 8\] outside the data region"),
    (lambda h: h["b"].update(data_offsets=[0, 16]), r"tensors '.' \[0, \d+\] and '.' \[0, \d+\] overlap"),
    (lambda h: h["b"].update(data_offsets=[24, 48]), r"tensor 'b': data_offsets \[24, 48\] outside"),
    (lambda h: h["b"].update(dtype="F8_X"), r"tensor 'b': unknown dtype 'F8_X'"),
    (lambda h: h["b"].update(dtype="F64"), r"tensor 'b': 16 bytes for shape \[4\] F64, which needs 32"),
    (lambda h: h["b"].pop("shape"), r"tensor 'b': header entry needs dtype, shape and data_offsets"),
    (lambda h: h["a"].update(shape="2x3"), r"tensor 'a': shape '2x3' is not a list"),
])
def test_6_bad_headers_name_file_and_tensor(tmp_path, mutate, expect):
    path = _file_with_header(tmp_path, mutate)
    with pytest.raises(SafetensorsError, match=expect) as err:
        SafetensorsFile(path)
    assert str(err.value).startswith(path)


def test_6_the_package_parser_runs_too(tmp_path):
    """A gap between tensors passes our per-tensor checks; the safetensors parser refuses it."""
    path = _file_with_header(tmp_path, lambda h: (h["a"].update(data_offsets=[0, 24]),
                                                  h["b"].update(data_offsets=[32, 48])))
    with open(path, "ab") as f:
        f.write(b"\0" * 8)
    with pytest.raises(SafetensorsError, match="invalid safetensors file"):
        SafetensorsFile(path)


def test_6_why_our_own_reader_the_package_copies_every_tensor(tmp_path):
    from safetensors import safe_open

    path = str(tmp_path / "x.safetensors")
    write_file(path, [("w", np.arange(1 << 16, dtype=np.float32))])
    ours = SafetensorsFile(path).get("w")
    assert isinstance(ours.base, np.memmap) or isinstance(getattr(ours.base, "base", None), np.memmap)
    assert not ours.flags.writeable  # a read-only view of the mapped file: no copy
    with safe_open(path, framework="numpy") as f:
        theirs = f.get_tensor("w")
    assert not isinstance(theirs.base, np.memmap) and theirs.flags.writeable  # a fresh copy
    np.testing.assert_array_equal(ours, theirs)


def test_6_wrong_dtype_label_and_wrong_shape_name_the_tensor(tmp_path):
    hf = tmp_path / "hf"
    make_hf_model(str(hf), "gqa", max_shard_size=None)
    st_file = str(hf / "model.safetensors")
    raw = open(st_file, "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    name = "model.layers.0.self_attn.q_proj.weight"

    def rewrite(h):
        enc = json.dumps(h).encode()
        enc += b" " * (-len(enc) % 8)
        open(st_file, "wb").write(struct.pack("<Q", len(enc)) + enc + raw[8 + n:])

    rewrite({**header, name: {**header[name], "dtype": "I32"}})  # same size: only the label lies
    with pytest.raises(ConversionError, match=rf"model.safetensors: tensor '{name}' has dtype int32"):
        load_hf_params(str(hf))
    shape = header[name]["shape"]
    rewrite({**header, name: {**header[name], "shape": [shape[0] * shape[1] // 4, 4]}})
    with pytest.raises(ConversionError, match=rf"tensor '{name}' has shape"):
        load_hf_params(str(hf))


@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_6_fuzzed_headers_never_escape_as_other_errors(tmp_path_factory, data):
    tmp = tmp_path_factory.mktemp("fuzz")
    values = st.one_of(st.integers(-100, 100), st.text(max_size=5), st.none(), st.lists(st.integers(-50, 50), max_size=3))

    def mutate(h):
        for _ in range(data.draw(st.integers(1, 3))):
            tensor = data.draw(st.sampled_from(["a", "b"]))
            key = data.draw(st.sampled_from(["dtype", "shape", "data_offsets", "extra"]))
            h[tensor][key] = data.draw(values)

    path = _file_with_header(tmp, mutate)
    try:
        f = SafetensorsFile(path)
        for k in f.keys():
            f.get(k)
    except SafetensorsError as err:
        assert path in str(err)


# ------------------------------------------------------------------ 7. path traversal
@pytest.mark.parametrize("shard", ["../../etc/hostname", "/etc/hostname", "sub/../../x.safetensors"])
def test_7_index_weight_map_cannot_leave_the_model_directory(tmp_path, shard):
    hf = tmp_path / "hf"
    make_hf_model(str(hf), "gqa")
    index = hf / "model.safetensors.index.json"
    idx = json.load(open(index))
    first = next(iter(idx["weight_map"]))
    idx["weight_map"][first] = shard
    index.write_text(json.dumps(idx))
    with pytest.raises(ConversionError, match="points outside"):
        HFWeights(str(hf))


@pytest.mark.parametrize("shard", ["/etc/hostname", "../notes-00000-of-00001.jsonl.gz", "sub/x.jsonl.gz"])
def test_7_prepared_marker_shards_cannot_leave_the_directory(tmp_path, shard):
    from mellama_jax.data.clinical.io import read_marker
    from mellama_jax.data.sources.readers import expand_paths
    from mellama_jax.data.sources.report import DataError

    from mellama_jax.cli import prepare_clinical
    from mellama_jax.data.clinical.synthetic import generate_notes, write_mimic3_csv

    src = tmp_path / "n.csv"
    write_mimic3_csv(str(src), generate_notes(5, seed=1))
    out = tmp_path / "prep"
    assert prepare_clinical.main(["--in", str(src), "--out", str(out)]) == 0
    marker = json.load(open(out / "PREPARED.json"))
    marker["shards"] = [shard]
    (out / "PREPARED.json").write_text(json.dumps(marker))
    with pytest.raises(ValueError, match="is not a file of"):
        read_marker(str(out))
    with pytest.raises(DataError, match="is not a file of"):
        expand_paths("clinical", [str(out)], "prepared_clinical")
