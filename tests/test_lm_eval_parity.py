"""lm-eval through the `mellama_jax` adapter == lm-eval's own Hugging Face backend on the same tiny
random LLaMA (float32): per-request log-likelihoods (1e-4), is_greedy flags, rolling
log-likelihoods (documents longer than the context: several windows), greedy generate_until outputs
with stop sequences, and the aggregate metrics; on one device and sharded over 8 fake CPU devices
(data=2 x tensor=4)."""
from __future__ import annotations

import math

import pytest

pytest.importorskip("lm_eval")

import lm_eval  # noqa: E402
from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402

from lm_eval_fixtures import write_hf_llama_with_tokenizer, write_tasks  # noqa: E402

TASKS = ["tiny_mc", "tiny_ppl", "tiny_gen"]
MAX_POSITIONS = 64


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("lm_eval_parity")
    model_dir = write_hf_llama_with_tokenizer(str(root / "model"), max_positions=MAX_POSITIONS)
    tasks_dir = write_tasks(str(root / "tasks"), n=4, long_doc_words=120)  # > 64 tokens: 3+ windows
    return {"model": model_dir, "tasks": tasks_dir}


@pytest.fixture(scope="module")
def hf_lm(env):
    from lm_eval.models.huggingface import HFLM

    return HFLM(pretrained=env["model"], device="cpu", dtype="float32", batch_size=4)


@pytest.fixture(scope="module")
def jax_lm(env):
    from mellama_jax.eval.lm_eval_adapter import MellamaJaxLM

    return MellamaJaxLM(checkpoint=env["model"], use_mesh=False, batch_size=4)


@pytest.fixture(scope="module")
def sharded_lm(env):
    from mellama_jax.eval.lm_eval_adapter import MellamaJaxLM

    lm = MellamaJaxLM(checkpoint=env["model"], mesh_data=2, mesh_tensor=4, batch_size=4)
    assert dict(lm.engine.mesh.shape) == {"data": 2, "fsdp": 1, "tensor": 4}
    return lm


def _evaluate(lm, env):
    return lm_eval.simple_evaluate(model=lm, tasks=TASKS, task_manager=TaskManager(include_path=env["tasks"]),
                                   log_samples=True, bootstrap_iters=0)


@pytest.fixture(scope="module")
def hf_out(hf_lm, env):
    return _evaluate(hf_lm, env)


def _assert_same(ref, out):
    for task in TASKS:
        a, b = ref["samples"][task], out["samples"][task]
        assert [s["doc_id"] for s in a] == [s["doc_id"] for s in b]
        for sa, sb in zip(a, b):
            assert sa["arguments"] == sb["arguments"]  # the same prompts reached both models
            for ra, rb in zip(sa["resps"], sb["resps"]):
                ra, rb = ra[0], rb[0]
                if task == "tiny_mc":
                    assert abs(ra[0] - rb[0]) <= 1e-4, (task, sa["doc_id"], ra, rb)
                    assert ra[1] == rb[1]
                elif task == "tiny_ppl":
                    assert abs(ra - rb) <= 1e-4 * max(1.0, abs(ra) / 100), (task, sa["doc_id"], ra, rb)
                else:
                    assert ra == rb, (task, sa["doc_id"], ra, rb)
        for metric, value in ref["results"][task].items():
            if isinstance(value, float):
                assert math.isclose(value, out["results"][task][metric], rel_tol=1e-5), (task, metric)
            else:
                assert value == out["results"][task][metric], (task, metric)


def test_adapter_matches_hf_backend_on_one_device(jax_lm, hf_out, env):
    out = _evaluate(jax_lm, env)
    _assert_same(hf_out, out)
    # the long document really was split into several rolling windows
    long_doc = max(hf_out["samples"]["tiny_ppl"], key=lambda s: len(s["arguments"][0][0]))
    assert len(jax_lm.tok_encode(long_doc["arguments"][0][0])) > 2 * MAX_POSITIONS


def test_adapter_matches_hf_backend_sharded_data_and_tensor(sharded_lm, hf_out, env):
    _assert_same(hf_out, _evaluate(sharded_lm, env))


def _requests(kind, args):
    return [Instance(request_type=kind, doc={}, arguments=a, idx=0) for a in args]


def test_is_greedy_flags_agree_including_true_ones(hf_lm, jax_lm):
    """Continuations that ARE the greedy output (taken from the HF backend's own generation) and
    ones that are not: both backends flag them the same way, and some flags are True."""
    contexts = ["Note: patient fever cough", "Question: chest pain?\nAnswer:", "aspirin warfarin drug",
                "the patient was given", "cancer cell", "heart failure and", "Summary:", "test test"]
    gens = hf_lm.generate_until(_requests("generate_until", [(c, {"until": [], "max_gen_toks": 1})
                                                             for c in contexts]))
    args = []
    for ctx, gen in zip(contexts, gens):
        # " A" / " B" / the greedy token: one-token answers with the same input, scored from one shared row
        args += ([(ctx, gen)] if gen else []) + [(ctx, " A"), (ctx, " B"), (ctx, " heart failure"), ("", ctx)]
    ref = hf_lm.loglikelihood(_requests("loglikelihood", args))
    got = jax_lm.loglikelihood(_requests("loglikelihood", args))
    assert [g for _, g in got] == [g for _, g in ref]
    assert any(g for _, g in ref) and not all(g for _, g in ref)
    for (a, _), (b, _) in zip(ref, got):
        assert abs(a - b) <= 1e-4
    one_by_one = [jax_lm.loglikelihood(_requests("loglikelihood", [a]))[0] for a in args[:4]]
    assert [g for _, g in one_by_one] == [g for _, g in got[:4]]
    assert all(abs(a - b) <= 1e-5 for (a, _), (b, _) in zip(one_by_one, got[:4]))


def test_stop_sequences_cut_generations(jax_lm):
    """generate_until cuts at the first stop sequence, as lm-eval's HF backend post-processes."""
    ctx = ["Note: patient fever cough\nSummary:", "Question: drug effect?\nAnswer:"]
    free = jax_lm.generate_until(_requests("generate_until", [(c, {"until": [], "max_gen_toks": 10}) for c in ctx]))
    stop = free[0][2:4]
    assert stop
    cut = jax_lm.generate_until(_requests("generate_until", [(c, {"until": [stop], "max_gen_toks": 10}) for c in ctx]))
    assert cut[0] == free[0].split(stop)[0] and len(cut[0]) < len(free[0])
    assert cut[1] == free[1].split(stop)[0]


def test_special_token_text_and_decode_match_hf_tokenizer(hf_lm, jax_lm):
    """Chat templates write <s> / </s> as text: the adapter turns them into ids as the HF tokenizer does."""
    for text in ["<s>[INST] fever cough [/INST] aspirin </s><s>[INST] pain [/INST]", "plain text , no specials",
                 " leading space", "Note:\n\nline two"]:
        assert jax_lm.tok_encode(text) == hf_lm.tok_encode(text), text
        ids = hf_lm.tok_encode(text)
        assert jax_lm.tok_decode(ids) == hf_lm.tok_decode(ids)
    assert jax_lm.tok_decode([300, 7, 200, 11, 12]) == hf_lm.tok_decode([300, 7, 200, 11, 12])


def test_orbax_checkpoint_gives_the_same_scores(env, jax_lm, tmp_path):
    """Any checkpoint the project reads: the converter's Orbax artifact scores like the HF directory."""
    from mellama_jax.checkpoint.convert import hf_to_orbax
    from mellama_jax.eval.lm_eval_adapter import MellamaJaxLM

    orbax = hf_to_orbax(env["model"], str(tmp_path / "orbax"))
    lm = MellamaJaxLM(pretrained=orbax, use_mesh=False, batch_size=4)  # the hf backend's argument name works too
    reqs = _requests("loglikelihood", [("Note: patient fever", " cough"), ("", "aspirin warfarin")])
    assert lm.loglikelihood(reqs) == jax_lm.loglikelihood(reqs)


def test_chat_template_renders_and_encodes_like_hf(env, tmp_path):
    """--apply_chat_template: our template table vs the same template as Jinja in the HF tokenizer."""
    import json
    import shutil

    from lm_eval.models.huggingface import HFLM

    from mellama_jax.eval.lm_eval_adapter import MellamaJaxLM
    from mellama_jax.tokenizer.chat_templates import hf_chat_template

    hf_dir = str(tmp_path / "chat_model")
    shutil.copytree(env["model"], hf_dir)
    with open(f"{hf_dir}/tokenizer_config.json") as f:
        cfg = json.load(f)
    cfg["chat_template"] = hf_chat_template("llama2")
    with open(f"{hf_dir}/tokenizer_config.json", "w") as f:
        json.dump(cfg, f)
    hf = HFLM(pretrained=hf_dir, device="cpu", dtype="float32", batch_size=2)
    ours = MellamaJaxLM(checkpoint=env["model"], chat_template="llama2", use_mesh=False)
    shipped = MellamaJaxLM(checkpoint=hf_dir, use_mesh=False)  # the template the checkpoint ships (Jinja)
    history = [{"role": "system", "content": "You are a clinician."}, {"role": "user", "content": "fever?"},
               {"role": "assistant", "content": "aspirin"}, {"role": "user", "content": "chest pain?"}]
    jinja_file = tmp_path / "llama2.jinja"
    jinja_file.write_text(hf_chat_template("llama2"))
    from_file = MellamaJaxLM(engine=ours.engine, chat_template=str(jinja_file))
    for lm in (ours, shipped, from_file):
        text = lm.apply_chat_template(history, add_generation_prompt=True)
        assert text == hf.apply_chat_template(history, add_generation_prompt=True)
        assert text.startswith("<s>") and lm.tok_encode(text) == hf.tok_encode(text)


def test_bad_arguments_fail_clearly(jax_lm):
    from mellama_jax.eval.lm_eval_adapter import MellamaJaxLM

    with pytest.raises(ValueError, match="auto"):
        MellamaJaxLM(engine=jax_lm.engine, batch_size="auto")
    with pytest.raises(ValueError, match="unknown argument.*temperatur"):
        MellamaJaxLM(engine=jax_lm.engine, temperatur=0.5)
    with pytest.raises(ValueError, match="checkpoint=PATH"):
        MellamaJaxLM()
    with pytest.raises(ValueError, match="not a template name"):
        MellamaJaxLM(engine=jax_lm.engine, chat_template="chatml")
    req = Instance(request_type="generate_until", doc={}, arguments=("Note:", {"do_sample": True, "top_p": 1.5}),
                   idx=0, metadata=("my_task", 0, 1))
    with pytest.raises(ValueError, match="0 < top_p <= 1.*my_task"):
        jax_lm.generate_until([req])
