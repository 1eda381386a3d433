"""End to end: `python launch.py --config configs/eval.py ...` on a tiny random HF model and tiny
fixtures writes results.json / results.md / predictions, the metrics recomputed from the
predictions equal results.json, a rerun is byte-identical, and the log-likelihood protocol agrees
with a direct transformers computation and follows a model made to prefer one answer."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import eval_fixtures as F
from test_eval_metrics import _official_squad, _sk_choice

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ALL = ("pubmedqa,medqa,medmcqa,emrqa,i2b2,ddi,hoc,mtsamples,pubmedsum,mimiccxr,bionli,mednli,diagnosis,"
       "bc5cdr_chem,bc5cdr_disease,ncbi_disease")
RELEASE_COVERS = {"pubmedqa", "medqa", "medmcqa", "emrqa", "ddi", "hoc", "mtsamples", "pubmedsum", "mimiccxr",
                  "mednli"}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return F.write_eval_env(tmp_path_factory.mktemp("evalenv"))


def _config(**kw):
    from configs.eval import get_config

    c = get_config()
    c.show_progress = False
    for k, v in kw.items():
        setattr(c, k, v)
    return c


def _launch(env, workdir):
    cmd = [sys.executable, "launch.py", "--config", "configs/eval.py", "--workdir", str(workdir),
           f"--config.checkpoint={env['model']}", f"--config.data_dir={env['data']}", f"--config.tasks={ALL}",
           "--config.max_new_tokens=8", "--config.batch_size=4", "--config.max_examples=3"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _read(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def _recompute(task, family, records, choices):
    """Metrics from predictions/<task>.jsonl with the reference libraries."""
    preds = [r["prediction"] for r in records]
    refs = [r["reference"] for r in records]
    if family == "choice":
        return _sk_choice(preds, refs)
    if family == "multilabel":
        from sklearn.metrics import f1_score

        hot = lambda xs: np.array([[int(c in x) for c in choices] for x in xs])
        return {"macro_f1": f1_score(hot(refs), hot(preds), average="macro", zero_division=0)}
    if family == "extractive_qa":
        return {"exact_match": np.mean([max(_official_squad(p, g)[0] for g in gs) for p, gs in zip(preds, refs)]),
                "f1": np.mean([max(_official_squad(p, g)[1] for g in gs) for p, gs in zip(preds, refs)])}
    if family == "ner":
        from seqeval.metrics import f1_score, precision_score, recall_score

        return {"f1": f1_score(refs, preds, zero_division=0), "precision": precision_score(refs, preds, zero_division=0),
                "recall": recall_score(refs, preds, zero_division=0)}
    if family == "summarization":
        from rouge_score import rouge_scorer

        sc = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"])
        return {k: np.mean([sc.score(g, p)[k].fmeasure for p, g in zip(preds, refs)]) for k in ("rouge1", "rouge2", "rougeL")}
    if family == "diagnosis":
        from mellama_jax.eval.metrics import diagnosis_metrics

        return diagnosis_metrics(preds, refs)
    raise AssertionError(family)


def test_launch_writes_outputs_metrics_recompute_and_rerun_is_byte_identical(env, tmp_path):
    w1, w2 = tmp_path / "run1", tmp_path / "run2"
    _launch(env, w1)
    _launch(env, w2)
    results = json.load(open(w1 / "results.json"))
    md = open(w1 / "results.md").read()
    assert set(results["tasks"]) == set(ALL.split(","))
    for key in ("checkpoint", "code", "packages", "seed", "tokenizer", "model_config"):
        assert key in results
    assert results["packages"]["jax"] and results["checkpoint"]["sha256"]
    assert results["bertscore"].startswith("not computed")
    for task, r in results["tasks"].items():
        assert f"| {r['display_name']} |" in md
        pred_file = w1 / "predictions" / f"{task}.jsonl"
        records = _read(pred_file)
        assert len(records) == r["num_examples"] == min(3, r["num_examples_in_file"])
        assert set(records[0]) >= {"id", "prompt", "generation", "prediction", "reference"}
        # generate protocol: Me-LLaMA's released prompt where the release has one, else the fallback set
        expected_set = "mellama-release" if task in RELEASE_COVERS else "mellama-v1"
        assert r["prompt_set"] == expected_set and r["prompt_set_requested"] == "mellama-release", task
        assert r["prompt_template_id"] == f"{expected_set}/{task}"
        from mellama_jax.eval import prompts

        assert r["prompt_template"] == prompts.load_prompt_set(expected_set).tasks[task].template
        head = r["prompt_template"].split("{")[0]
        assert all(rec["prompt"].startswith(head) for rec in records), task
        assert r["data"]["read"]["bad"] == 0 and r["compiled_shapes"], task
        assert r["decoding"]["max_new_tokens"] == 8 and r["decoding"]["strategy"] == "greedy"
        assert list(r["data"]["sha256"].values())[0] == F_sha(env["paths"][task])
        ref = _recompute(task, r["family"], records, r["choices"])
        for k, v in ref.items():
            assert r["metrics"][k] == pytest.approx(float(v), abs=1e-9), (task, k)
        # byte-identical predictions on rerun
        assert pred_file.read_bytes() == (w2 / "predictions" / f"{task}.jsonl").read_bytes(), task
    assert results["tasks"]["pubmedsum"]["metrics"]["bertscore_f1"] is None
    # the release scores MedQA/MedMCQA as option letters
    for task in ("medqa", "medmcqa"):
        r = results["tasks"][task]
        assert r["answer_format"] == "letter" and set(r["choices"]) <= set("ABCDE")
        recs = _read(w1 / "predictions" / f"{task}.jsonl")
        assert all(rec["reference"] in "ABCDE" and len(rec["option_texts"]) >= 4 for rec in recs)
    # NER tasks of their own, each with its own label set, scored by seqeval
    for task, etype in (("bc5cdr_chem", "chemical"), ("bc5cdr_disease", "disease"), ("ncbi_disease", "disease")):
        recs = _read(w1 / "predictions" / f"{task}.jsonl")
        assert {t[2:] for rec in recs for t in rec["reference"] if t != "O"} == {etype}
        assert etype in recs[0]["prompt"]


def F_sha(path):
    import hashlib

    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def _hf_sequence_logprob(model, ctx, cont):
    import torch

    ids = torch.tensor([ctx + cont])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits.double(), -1)[0]
    return float(sum(logp[len(ctx) + j - 1, t] for j, t in enumerate(cont)))


def test_loglik_agrees_with_transformers(env, tmp_path):
    from mellama_jax.tokenizer import load_tokenizer
    from mellama_jax.eval.runner import run

    c = _config(checkpoint=env["model"], data_dir=env["data"], tasks="pubmedqa,medqa,mednli", protocol="loglik",
                loglik_normalize="none", batch_size=4)
    results = run(c, str(tmp_path))
    tok = load_tokenizer(env["tok"])
    for task in ("pubmedqa", "medqa", "mednli"):
        assert results["tasks"][task]["protocol"] == "loglik"
        records = _read(tmp_path / "predictions" / f"{task}.jsonl")
        for rec in records[:2]:
            choices = rec.get("choices") or results["tasks"][task]["choices"]
            ctx = tok.encode(rec["prompt"])
            direct = [_hf_sequence_logprob(env["hf"], ctx, tok.encode(ch, bos=False, eos=False)) for ch in choices]
            np.testing.assert_allclose(rec["choice_logprobs"], direct, rtol=1e-4, atol=1e-3)
            assert rec["prediction"] == choices[int(np.argmax(direct))]
        assert results["tasks"][task]["metrics"]["missing_rate"] == 0.0


def _biased_checkpoint(directory, env, prefer_ids):
    """An Orbax checkpoint whose next-token distribution is a fixed bias toward `prefer_ids`.

    Residual dimension 0 is a constant 100 (embedding column 0, no layer writes to it); the final norm
    keeps only that dimension, so the logits are a positive multiple of lm_head row 0, set to the bias.
    """
    import jax
    from mellama_jax.checkpoint.load import load_pretrained
    from mellama_jax.checkpoint.orbax_io import save_params

    config, params = load_pretrained(env["model"])
    p = jax.tree.map(np.array, params)
    p["embed_tokens"]["embedding"][:, 0] = 100.0
    kernel = lambda x: x["kernel"] if isinstance(x, dict) else x  # tolerate both tree spellings
    kernel(p["layers"]["attention"]["o_proj"])[..., 0] = 0.0
    kernel(p["layers"]["mlp"]["down_proj"])[..., 0] = 0.0
    p["final_norm"]["scale"][:] = 0.0
    p["final_norm"]["scale"][0] = 1.0
    bias = np.zeros(config.vocab_size, np.float32)
    bias[list(prefer_ids)] = 3.0
    p["lm_head"]["kernel"][:] = 0.0
    p["lm_head"]["kernel"][0] = bias
    save_params(directory, config, p, tokenizer_files=(env["tok"],))
    return directory


@pytest.mark.parametrize("prefer", ["maybe", "no"])
def test_loglik_follows_a_model_made_to_prefer_an_answer(env, tmp_path, prefer):
    from mellama_jax.tokenizer import load_tokenizer
    from mellama_jax.eval.runner import run

    tok = load_tokenizer(env["tok"])
    ckpt = _biased_checkpoint(str(tmp_path / "ckpt"), env, tok.encode(prefer, bos=False, eos=False))
    c = _config(checkpoint=ckpt, data_dir=env["data"], tasks="pubmedqa", protocol="loglik", batch_size=4)
    res = run(c, str(tmp_path / "w"))["tasks"]["pubmedqa"]
    preds = [r["prediction"] for r in _read(tmp_path / "w" / "predictions" / "pubmedqa.jsonl")]
    assert preds == [prefer] * 3
    assert res["metrics"]["accuracy"] == pytest.approx(1 / 3)  # golds are yes, no, maybe


def test_few_shot_truncation_and_max_examples(env, tmp_path):
    from mellama_jax.eval.runner import run

    small = str(tmp_path / "small")
    F.write_tiny_hf_model(small, env["vocab"], max_positions=128)
    F.write_pubmedqa_tsv(tmp_path / "train.tsv", n=5)
    c = _config(checkpoint=small, tokenizer_path=env["tok"], data_dir=env["data"], tasks="pubmedqa,hoc",
                max_examples=2, few_shot=2, max_new_tokens=4, batch_size=2)
    c.train_paths.pubmedqa = str(tmp_path / "train.tsv")
    c.train_paths.hoc = env["paths"]["hoc"]
    r = run(c, str(tmp_path / "w"))["tasks"]
    assert r["pubmedqa"]["num_examples"] == 2 and r["pubmedqa"]["num_examples_in_file"] == 3
    fs = r["pubmedqa"]["few_shot"]
    assert fs["k"] == 2 and len(fs["demo_ids"]) == 2 and set(fs["demo_ids"]) <= {str(1000 + i) for i in range(5)}
    recs = _read(tmp_path / "w" / "predictions" / "pubmedqa.jsonl")
    # mellama-release's PubMedQA prompt has no examples slot: demonstrations come first, each the filled
    # prompt and its answer
    assert recs[0]["prompt"].count("The answer is:\n") == 3
    assert recs[0]["prompt"].split("The answer is:\n")[1].startswith(("yes\n\n", "no\n\n", "maybe\n\n"))
    assert r["pubmedqa"]["truncated_prompts"] == 2  # 128-token window: every prompt was cut from the left


def test_bucketing_and_truncation_helpers():
    from mellama_jax.eval.engine import bucket_length, truncate_left

    assert [bucket_length(n, 1000) for n in (1, 32, 33, 300, 999)] == [32, 32, 64, 512, 1000]
    assert truncate_left([1, 5, 6, 7, 8], 3, bos_id=1) == ([1, 7, 8], True)
    assert truncate_left([5, 6, 7], 3, bos_id=1) == ([5, 6, 7], False)
