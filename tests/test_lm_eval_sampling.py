"""The lm-eval adapter's sampled generate_until (do_sample / temperature / top_p, seeded, independent of
batching) and `until` stop sequences that end decoding early, on device, per row."""
from __future__ import annotations

import pytest

pytest.importorskip("lm_eval")

from lm_eval.api.instance import Instance  # noqa: E402

from lm_eval_fixtures import write_hf_llama_with_tokenizer  # noqa: E402

CONTEXTS = ["Note: patient fever cough\nSummary:", "Question: drug effect?\nAnswer:", "the patient was",
            "aspirin and warfarin"]


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    from mellama_jax.eval.lm_eval_adapter import MellamaJaxLM

    model = write_hf_llama_with_tokenizer(str(tmp_path_factory.mktemp("lm_sampling") / "model"), max_positions=64)
    return MellamaJaxLM(checkpoint=model, use_mesh=False, batch_size=4)


def _gen(lm, kwargs, contexts=CONTEXTS):
    return lm.generate_until([Instance(request_type="generate_until", doc={}, arguments=(c, dict(kwargs)), idx=0)
                              for c in contexts])


def _steps(lm, kwargs, contexts):
    before = lm.engine.stats.get("decode_steps", 0)
    out = _gen(lm, kwargs, contexts)
    return out, lm.engine.stats["decode_steps"] - before


def test_temperature_zero_and_greedy_kwargs_are_the_greedy_path(lm):
    greedy = _gen(lm, {"until": [], "max_gen_toks": 8})
    assert _gen(lm, {"until": [], "max_gen_toks": 8, "do_sample": False, "temperature": 0.9}) == greedy
    assert _gen(lm, {"until": [], "max_gen_toks": 8, "do_sample": True, "temperature": 0.0}) == greedy
    ids = [lm.tok_encode(c) for c in CONTEXTS]
    _, new, _ = lm.engine.generate(ids, 8)
    assert greedy == [lm.tok_decode(t) for t in new]


@pytest.mark.slow  # ~25 s on the shared 2-core CPU (four sampled compiles)
def test_do_sample_is_seeded_and_independent_of_batching(lm):
    from mellama_jax.eval.lm_eval_adapter import MellamaJaxLM

    kw = {"until": [], "max_gen_toks": 8, "do_sample": True, "temperature": 1.0, "top_p": 0.95}
    first = _gen(lm, kw)
    assert _gen(lm, kw) == first
    one_row = MellamaJaxLM(engine=lm.engine.__class__(lm.engine.model_config, lm.engine.params, lm.engine.tokenizer,
                                                      batch_size=1, show_progress=False), checkpoint=None)
    assert _gen(one_row, kw) == first  # batch of 1: the same samples
    assert _gen(lm, kw, CONTEXTS[::-1]) == first[::-1]  # another order, other batch neighbours
    assert _gen(MellamaJaxLM(engine=lm.engine, seed=1), kw) != first
    assert first != _gen(lm, {"until": [], "max_gen_toks": 8})  # not greedy
    # lm-eval's `repeats` send identical requests: each gets its own sample
    rep = _gen(lm, kw, [CONTEXTS[0]] * 4)
    assert rep[0] == first[0] and len(set(rep)) > 1


def _planted_stop(lm, context, max_gen):
    """A stop string that first appears at the 3rd or later generated token of the greedy run."""
    _, (ids,), _ = lm.engine.generate([lm.tok_encode(context)], max_gen)
    for k in range(2, len(ids)):
        piece = lm.tok_decode([ids[k]], skip_special_tokens=False)
        if piece.strip() and piece not in lm.tok_decode(ids[:k]):
            return piece, k
    pytest.skip("the random model generated no usable stop piece")


@pytest.mark.parametrize("do_sample", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_until_stops_decoding_early_and_cuts_as_before(lm, do_sample):
    max_gen = 24
    context = CONTEXTS[0]
    kw = {"max_gen_toks": max_gen, "do_sample": do_sample, "temperature": 1.0 if do_sample else 0.0}
    free, free_steps = _steps(lm, {**kw, "until": []}, [context])
    if do_sample:  # plant a stop string from the sampled run itself
        stop = next((w for w in free[0].split() if len(w) > 2 and free[0].index(w) > 3), None)
        if stop is None:
            pytest.skip("no usable word in the sampled text")
        k = None
    else:
        stop, k = _planted_stop(lm, context, max_gen)
    assert free_steps == max_gen  # nothing stops a row without `until` (the random model emits no EOS)
    cut, steps = _steps(lm, {**kw, "until": [stop]}, [context])
    assert cut[0] == free[0].split(stop)[0]  # the same text as cutting after max_gen_toks
    assert steps < max_gen  # but decoding stopped at the stop string
    if k is not None:
        assert steps == k + 1  # exactly at the token where the text first contains it


def test_stop_sequences_end_rows_independently(lm):
    """Two rows, a stop string only the first produces early: the first row ends, the batch runs on
    until the second ends, and each text is cut as lm-eval's post-processing cuts it."""
    stop, k = _planted_stop(lm, CONTEXTS[0], 24)
    kw = {"max_gen_toks": 24, "until": []}
    free = _gen(lm, kw, CONTEXTS[:2])
    cut = _gen(lm, {**kw, "until": [stop]}, CONTEXTS[:2])
    assert cut == [f.split(stop)[0] for f in free]


def test_stop_token_table(lm):
    table = lm.stop_token_ids(["\n\n", "Question:"])
    assert table.ndim == 2 and (table[:, -1] >= 0).all()
    for row in table:
        text = lm.tok_decode([int(t) for t in row if t >= 0], skip_special_tokens=False)
        assert "\n\n" in text or "Question:" in text
    assert lm.stop_token_ids([]) is None
