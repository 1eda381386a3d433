"""HoC under the log-likelihood protocol: one yes/no decision per (abstract, hallmark).

The predictions file must let the metrics be recomputed (checked against scikit-learn), every
decision must equal a direct transformers computation of log p(" yes") vs log p(" no") after the
per-label prompt, and a model biased toward " yes" (" no") must predict every (no) label."""
from __future__ import annotations

import json

import numpy as np
import pytest

import eval_fixtures as F
from test_eval_e2e import _biased_checkpoint, _config, _read


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return F.write_eval_env(tmp_path_factory.mktemp("hocenv"))


def _hf_yes_no(model, ctxs, yes, no):
    """Direct transformers reference, one batched forward over right-padded ctx + yes sequences (causal
    attention: padding after a sequence changes nothing before it): log p(yes | ctx), log p(no | ctx)
    and the final hidden state at the last context token, each per context."""
    import torch

    seqs = [c + yes for c in ctxs]
    ids = torch.zeros((len(seqs), max(map(len, seqs))), dtype=torch.long)
    for i, q in enumerate(seqs):
        ids[i, :len(q)] = torch.tensor(q)
    with torch.no_grad():
        out = model(ids, output_hidden_states=True)
    logp = torch.log_softmax(out.logits.double(), -1)
    lp_yes = [float(sum(logp[i, len(c) + j - 1, t] for j, t in enumerate(yes))) for i, c in enumerate(ctxs)]
    assert len(no) == 1  # the tiny tokenizer's "no" is one piece, "yes" several
    lp_no = [float(logp[i, len(c) - 1, no[0]]) for i, c in enumerate(ctxs)]
    hidden = np.array([out.hidden_states[-1][i, len(c) - 1].double().numpy() for i, c in enumerate(ctxs)])
    return np.array(lp_yes), np.array(lp_no), hidden


@pytest.fixture(scope="module")
def balanced(env):
    """The random model with lm_head["no"] moved so that some hallmarks get yes and some no (the plain
    random model says no to all of them, which would make the checks one-sided): along the direction
    in which the fixture's per-label prompts' final hidden states vary most (spreading the yes/no
    margins) and along their mean (centring the margins on zero)."""
    import copy
    import shutil

    import torch
    from mellama_jax.tokenizer import load_tokenizer
    from mellama_jax.eval import prompts
    from mellama_jax.eval.tasks.classification import load_hoc

    tok = load_tokenizer(env["tok"])
    yes, no = tok.encode("yes", bos=False, eos=False), tok.encode("no", bos=False, eos=False)
    model = copy.deepcopy(env["hf"])
    ctxs = [tok.encode(prompts.render_yesno(prompts.get_template("hoc-yesno"), ex, lab))
            for ex in load_hoc(env["paths"]["hoc"]) for lab in ex.choices]
    lp_yes, lp_no, h = _hf_yes_no(model, ctxs, yes, no)
    margin = lp_yes - lp_no
    mean = h.mean(0) / np.linalg.norm(h.mean(0))
    direction = np.linalg.svd(h - h.mean(0), full_matrices=False)[2][0]
    direction -= (direction @ mean) * mean
    a = 4.0 / np.std(h @ direction)  # margins spread by about +-4 nats
    b = np.median(margin - a * (h @ direction)) / np.mean(h @ mean)  # ... around zero
    with torch.no_grad():
        model.lm_head.weight[no[-1]] += torch.tensor(a * direction + b * mean, dtype=model.lm_head.weight.dtype)
    path = str(env["root"] / "balanced")
    model.save_pretrained(path)
    shutil.copy(env["tok"], path)
    return {"path": path, "hf": model}


def _run(env, workdir, checkpoint=None, **kw):
    from mellama_jax.eval.runner import run

    c = _config(checkpoint=checkpoint or env["model"], data_dir=env["data"], tasks="hoc", protocol="loglik",
                batch_size=4, **kw)
    res = run(c, str(workdir))["tasks"]["hoc"]
    return res, _read(workdir / "predictions" / "hoc.jsonl")


def test_hoc_loglik_predictions_recompute_metrics_and_rerun_is_byte_identical(env, balanced, tmp_path):
    from sklearn.metrics import f1_score

    res, recs = _run(env, tmp_path / "a", balanced["path"])
    assert res["protocol"] == "loglik" and res["protocol_note"] == ""
    assert res["prompt_template_id"] == "mellama-v1/hoc-yesno" and "Hallmark: {label}" in res["prompt_template"]
    assert res["decoding"]["decision"].startswith("label present iff log p(yes")
    assert res["truncated_prompts"] == 0 and res["num_examples"] == len(recs) == 3
    json.dumps(res)  # results.json-serialisable
    labels = res["choices"]
    assert len(labels) == 10
    for rec in recs:
        assert rec["generation"] is None and rec["prompt"].endswith("\nHallmark: {label}\nOutput:\n")
        assert list(rec["label_logprobs"]) == labels
        # the predicted set is a pure function of the recorded scores
        assert rec["prediction"] == [lab for lab in labels
                                     if rec["label_logprobs"][lab]["yes"] > rec["label_logprobs"][lab]["no"]]
    hot = lambda xs: np.array([[int(c in x) for c in labels] for x in xs])
    gold, pred = hot([r["reference"] for r in recs]), hot([r["prediction"] for r in recs])
    per_label = f1_score(gold, pred, average=None, zero_division=0)
    for lab, f in zip(labels, per_label):
        assert res["metrics"][f"f1/{lab}"] == pytest.approx(float(f), abs=1e-12), lab
    assert res["metrics"]["macro_f1"] == pytest.approx(float(f1_score(gold, pred, average="macro", zero_division=0)))
    assert 0 < pred.sum() < pred.size  # a mix of yes and no decisions
    assert 0 < res["metrics"]["macro_f1"] < 1
    # rerun (and max_examples): byte-identical records for the examples both runs cover
    _run(env, tmp_path / "b", balanced["path"])
    assert (tmp_path / "a" / "predictions" / "hoc.jsonl").read_bytes() == \
        (tmp_path / "b" / "predictions" / "hoc.jsonl").read_bytes()
    res3, recs3 = _run(env, tmp_path / "c", balanced["path"], max_examples=2)
    assert res3["num_examples"] == 2 and recs3 == recs[:2]


def test_hoc_loglik_decisions_agree_with_transformers(env, balanced, tmp_path):
    from mellama_jax.tokenizer import load_tokenizer
    from mellama_jax.eval import prompts
    from mellama_jax.eval.tasks.classification import load_hoc

    res, recs = _run(env, tmp_path, balanced["path"], loglik_normalize="chars")  # normalisation must not change the decision
    tok = load_tokenizer(env["tok"])
    yes, no = tok.encode("yes", bos=False, eos=False), tok.encode("no", bos=False, eos=False)
    examples = load_hoc(env["paths"]["hoc"])
    pairs = [(rec, ex, lab) for rec, ex in zip(recs, examples) for lab in res["choices"]]
    ctxs = []
    for rec, ex, lab in pairs:
        assert rec["id"] == ex.id
        prompt = rec["prompt"].replace("{label}", lab)
        assert prompt == prompts.render_yesno(prompts.get_template("hoc-yesno"), ex, lab)
        ctxs.append(tok.encode(prompt))
    lp_yes, lp_no, _ = _hf_yes_no(balanced["hf"], ctxs, yes, no)
    got = np.array([[rec["label_logprobs"][lab]["yes"], rec["label_logprobs"][lab]["no"]] for rec, _, lab in pairs])
    np.testing.assert_allclose(got, np.stack([lp_yes, lp_no], 1), rtol=1e-4, atol=1e-3)
    assert np.min(np.abs(lp_yes - lp_no)) > 1e-2  # far from ties, so the comparisons are meaningful
    assert [lab in rec["prediction"] for rec, _, lab in pairs] == list(lp_yes > lp_no)
    assert 0 < np.sum(lp_yes > lp_no) < len(pairs)
    assert res["decoding"]["normalize"] == "none"
    # these scores came through the shared-prefix path (one prefill per abstract)
    assert res["decoding"]["prefix_sharing"].startswith("on")
    assert any(s[0] == "loglik_prefix" for s in res["compiled_shapes"])


@pytest.mark.parametrize("prefer", ["yes", "no"])
def test_hoc_loglik_follows_a_model_biased_toward_an_answer(env, tmp_path, prefer):
    from mellama_jax.tokenizer import load_tokenizer

    tok = load_tokenizer(env["tok"])
    ckpt = _biased_checkpoint(str(tmp_path / "ckpt"), env, tok.encode(prefer, bos=False, eos=False))
    res, recs = _run(env, tmp_path / "w", checkpoint=ckpt)
    labels = res["choices"]
    want = list(labels) if prefer == "yes" else []
    assert [r["prediction"] for r in recs] == [want] * 3
    # golds: {proliferative signaling, cell death}, {}, {angiogenesis}
    if prefer == "yes":  # those three labels: F1 = 2*1/(2*1+2) = 0.5; the other seven: 0
        assert res["metrics"]["macro_f1"] == pytest.approx(3 * 0.5 / 10)
        assert res["metrics"]["exact_set_accuracy"] == 0.0
    else:
        assert res["metrics"]["macro_f1"] == 0.0
        assert res["metrics"]["exact_set_accuracy"] == pytest.approx(1 / 3)
