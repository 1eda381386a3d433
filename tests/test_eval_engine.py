"""The evaluation engine's speed paths are exact: prefix-shared log-likelihood (one KV-cache prefill
per prompt, continuations scored from it) equals the plain computation, with and without a mesh;
bucketed, batched generation equals generating each prompt alone; one mesh-context helper; and
first-party DeprecationWarnings are errors under pytest."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

import eval_fixtures as F


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("engine")
    model = str(root / "hf")
    tok = F.write_tokenizer(model)
    import sentencepiece as spm

    F.write_tiny_hf_model(model, spm.SentencePieceProcessor(model_file=tok).GetPieceSize(), max_positions=256)
    return {"model": model}


def _engine(env, batch_size=4, mesh=False):
    from mellama_jax.eval.engine import load_engine

    mesh_cfg = None
    if mesh:
        import types

        mesh_cfg = types.SimpleNamespace(data=-1, fsdp=1, tensor=1)
    return load_engine(env["model"], batch_size=batch_size, mesh_config=mesh_cfg, show_progress=False)


def _hoc_like_requests(tok):
    """Per-label prompts of two abstracts (a long shared prefix, a label-specific tail) x yes/no, and
    a single-prompt choice group: the shapes HoC and the choice tasks produce."""
    reqs, groups = [], []
    for g, abstract in enumerate(["the patient had fever and cough with chest pain " * 3, "cancer cell death signaling"]):
        for label in ["growth", "cell death", "sepsis acute heart failure"]:
            ctx = tok.encode(f"Input: {abstract}\nHallmark: {label}\nOutput:\n")
            for ans in ("yes", "no"):
                reqs.append((ctx, tok.encode(ans, bos=False, eos=False)))
                groups.append(g)
    ctx = tok.encode("Question: does aspirin help? Answer:")
    for ans in ("yes", "no", "maybe"):
        reqs.append((ctx, tok.encode(ans, bos=False, eos=False)))
        groups.append("choice")
    return reqs, groups


@pytest.mark.parametrize("mesh", [False, True])
def test_prefix_shared_loglik_equals_plain(env, mesh):
    engine = _engine(env, batch_size=4, mesh=mesh)
    reqs, groups = _hoc_like_requests(engine.tokenizer)
    plain, cut0 = engine.loglik(reqs, share_prefix=False)
    engine.take_task_shapes()
    shared, cut1 = engine.loglik(reqs, groups=groups)
    shapes = engine.take_task_shapes()
    np.testing.assert_allclose(shared, plain, rtol=0, atol=1e-4)
    assert cut0 == cut1 == [False] * len(reqs)
    # 3 groups, 4 rows per call: one prefill of the prefixes, continuation batches from it; no plain forward
    kinds = sorted({s[0] for s in shapes})
    assert kinds == ["loglik_continuation", "loglik_prefix"], shapes
    # default grouping (identical contexts) is exact too
    by_ctx, _ = engine.loglik(reqs)
    np.testing.assert_allclose(by_ctx, plain, rtol=0, atol=1e-4)


def test_bucketed_generation_equals_one_prompt_at_a_time(env):
    import jax.numpy as jnp

    from mellama_jax.model.generate import generate

    engine = _engine(env, batch_size=4)
    tok = engine.tokenizer
    texts = ["fever", "the patient had chest pain and a cough with fever " * 2, "sepsis " * 9]
    prompts = [tok.encode(t) for t in texts]
    _, batched, n_trunc = engine.generate(prompts, 6)
    assert n_trunc == 0
    shapes = engine.take_task_shapes()
    assert {s[0] for s in shapes} == {"generate"} and all(s[2] in (32, 64) for s in shapes)
    for p, got in zip(prompts, batched):
        alone = np.asarray(generate(engine.model_config, engine.params, jnp.asarray([p]), 6, eos_id=tok.eos_id))[0, len(p):]
        alone = [int(t) for t in alone]
        if tok.eos_id in alone:
            alone = alone[:alone.index(tok.eos_id)]
        assert got == alone


def test_every_eos_id_ends_decoding_on_device(env, monkeypatch):
    """A tokenizer with several EOS ids (LLaMA-3 Instruct: <|end_of_text|>, <|eom_id|>, <|eot_id|>):
    a row that emits a secondary one stops the decode loop there, not at max_new_tokens."""
    from mellama_jax.eval.engine import with_single_token_stops

    engine = _engine(env, batch_size=1)
    prompt = engine.tokenizer.encode("the patient had fever")
    _, (free,), _ = engine.generate([prompt], 16)
    free_steps = engine.stats["decode_steps"]
    k = next((i for i in range(2, len(free)) if free[i] not in free[:i]), None)
    if k is None:
        pytest.skip("the random model repeated itself")
    stop = free[k]
    monkeypatch.setattr(type(engine.tokenizer), "eos_ids",
                        property(lambda self: [self.eos_id, stop]))
    _, (cut,), _ = engine.generate([prompt], 16)
    assert cut == free[:k]
    assert engine.stats["decode_steps"] - free_steps == k + 1 < free_steps
    # merged with the caller's multi-token stop sequences, left-padded with -1
    merged = with_single_token_stops(np.asarray([[5, 6]], np.int32), [9, 11])
    assert merged.tolist() == [[5, 6], [-1, 9], [-1, 11]]
    assert with_single_token_stops(None, []) is None


def test_left_truncation_is_counted(env):
    engine = _engine(env, batch_size=2)
    long = engine.tokenizer.encode("fever cough " * 200)
    assert len(long) > 256
    _, out, n_trunc = engine.generate([long, engine.tokenizer.encode("fever")], 4)
    assert n_trunc == 1 and len(out) == 2


def test_mesh_context_is_the_one_helper():
    import jax

    from mellama_jax.sharding import make_mesh, mesh_context
    import types

    mesh = make_mesh(types.SimpleNamespace(data=-1, fsdp=1, tensor=1))
    with mesh_context(mesh, (("activation_batch", "data"),)):
        import flax.linen as nn

        assert jax.sharding.get_abstract_mesh() == mesh.abstract_mesh
        assert nn.get_logical_axis_rules() == (("activation_batch", "data"),)
    # nothing first-party spells the mesh context itself (one helper, one place to follow JAX's API)
    import pathlib
    import re

    root = pathlib.Path(__file__).resolve().parent.parent / "mellama_jax"
    offenders = [str(p) for p in root.rglob("*.py") if p.name != "sharding.py"
                 and re.search(r"jax\.set_mesh\(|use_mesh\(|with\s+(self\.)?mesh\s*[:,]", p.read_text())]
    assert offenders == []


def test_first_party_deprecation_warnings_are_errors():
    """pytest.ini: error::DeprecationWarning:mellama_jax (third-party ones stay ignored)."""
    with pytest.raises(DeprecationWarning):
        warnings.warn_explicit("old API", DeprecationWarning, "engine.py", 1, module="mellama_jax.eval.engine")
    warnings.warn_explicit("old API", DeprecationWarning, "x.py", 1, module="somelib.x")  # ignored: no error
