"""The SFT loss: equals transformers' with labels=-100 on prompt tokens; packed == unpacked; masked
positions get exactly zero gradient."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mellama_jax import sharding as shd
from mellama_jax.sft.data import MaskedDocs, masked_rows
from mellama_jax.train import loss as loss_lib
from mellama_jax.train import step as step_lib

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def hf_and_ours(tmp_path_factory):
    from hf_fixtures import make_hf_model
    from mellama_jax.checkpoint.load import load_pretrained

    d = tmp_path_factory.mktemp("hf")
    model = make_hf_model(str(d), "gqa")
    config, params = load_pretrained(str(d))
    return model, config.replace(dtype="float32", param_dtype="float32"), params


def _examples(vocab, lengths=(9, 13, 6), seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for n in lengths:
        ids = rng.integers(3, vocab, n).astype(np.int32)
        ids[0] = 1
        trained = np.zeros(n, bool)
        trained[n // 2:] = True  # the answer: the second half (and the last token, EOS-like)
        trained[n // 2 + 1] = False  # a masked token inside the answer span (multi-turn-like)
        out.append((ids, trained))
    return out


def _rows(examples, seq_len, pad):
    rows = masked_rows(MaskedDocs.from_examples(examples), seq_len, pad=pad)
    b = rows.num_rows
    out = {k: np.zeros((b, seq_len), np.int32) for k in ("inputs", "targets", "positions", "segment_ids", "source_ids")}
    out["loss_mask"] = np.zeros((b, seq_len), np.float32)
    for i in range(b):
        rows.write(i, out, i, 0)
    return {k: jnp.asarray(out[k]) for k in step_lib.BATCH_KEYS}


def _mesh():
    return shd.make_mesh(type("M", (), dict(data=1, fsdp=1, tensor=1))(), jax.devices()[:1])


@pytest.mark.parametrize("loss_impl", ["dense", pytest.param("vocab_parallel", marks=pytest.mark.slow)])
def test_masked_loss_equals_transformers_labels_minus_100(hf_and_ours, loss_impl):
    model, config, params = hf_and_ours
    mesh = _mesh()
    loss_fn = step_lib.make_loss_fn(config, mesh, loss_impl=loss_impl)
    for ids, trained in _examples(config.vocab_size):
        batch = _rows([(ids, trained)], 16, pad=True)
        with jax.set_mesh(mesh):
            _, sums = loss_fn(params, batch)
        ours = float(sums.nll / sums.weight)
        labels = np.where(trained, ids, -100)
        with torch.no_grad():
            ref = model(torch.tensor(ids[None].astype(np.int64)), labels=torch.tensor(labels[None].astype(np.int64))).loss
        assert abs(ours - float(ref)) < 1e-5, (ours, float(ref))
        assert float(sums.weight) == trained[1:].sum()


def test_packed_equals_unpacked_loss_and_gradients(hf_and_ours):
    _, config, params = hf_and_ours
    mesh = _mesh()
    loss_fn = step_lib.make_loss_fn(config, mesh, loss_impl="dense")
    exs = _examples(config.vocab_size)
    packed, unpacked = _rows(exs, 32, pad=False), _rows(exs, 32, pad=True)
    assert packed["inputs"].shape[0] == 1 and unpacked["inputs"].shape[0] == 3
    grad = jax.grad(lambda p, b: loss_fn(p, b)[0])
    with jax.set_mesh(mesh):
        (_, s_p), (_, s_u) = loss_fn(params, packed), loss_fn(params, unpacked)
        g_p, g_u = grad(params, packed), grad(params, unpacked)
    assert float(s_p.weight) == float(s_u.weight)
    np.testing.assert_allclose(float(s_p.nll), float(s_u.nll), rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-4, atol=1e-6), g_p, g_u)


def test_masked_positions_get_zero_gradient(hf_and_ours):
    _, config, params = hf_and_ours
    mesh = _mesh()
    exs = _examples(config.vocab_size)
    batch = _rows(exs, 32, pad=False)
    logits = jnp.asarray(np.random.default_rng(1).normal(size=batch["inputs"].shape + (config.vocab_size,)),
                         jnp.float32)

    def from_logits(lg):
        nll, log_z = loss_lib.token_losses(lg, batch["targets"])
        return loss_lib.loss_sums(nll, log_z, batch["loss_mask"]).nll

    g = np.asarray(jax.grad(from_logits)(logits))
    masked = np.asarray(batch["loss_mask"]) == 0
    assert np.all(g[masked] == 0.0) and np.abs(g[~masked]).sum() > 0
    # and through the whole model: other targets at masked positions change nothing, bit for bit
    loss_fn = step_lib.make_loss_fn(config, mesh, loss_impl="dense")
    other = dict(batch, targets=jnp.where(batch["loss_mask"] > 0, batch["targets"], (batch["targets"] + 7) % 200))
    grad = jax.grad(lambda p, b: loss_fn(p, b)[0])
    with jax.set_mesh(mesh):
        g1, g2 = grad(params, batch), grad(params, other)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), g1, g2)
