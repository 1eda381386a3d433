"""lm-eval through the `mellama_jax` adapter == lm-eval's Hugging Face backend on a tiny random
LLaMA-3-shaped model with a trained byte-level BPE tokenizer.json (per-request log-likelihoods 1e-4,
is_greedy flags, rolling windows, greedy generate_until outputs, aggregate metrics)."""
from __future__ import annotations

import os
import sys

import pytest

pytest.importorskip("lm_eval")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bpe_fixtures import make_llama3_model_dir  # noqa: E402
from lm_eval_fixtures import write_tasks  # noqa: E402
from test_lm_eval_parity import TASKS, _assert_same, _evaluate  # noqa: E402


@pytest.mark.slow  # two full lm-eval runs (6 min on 2 heavily loaded cores)
def test_adapter_matches_hf_backend_on_a_llama3_shaped_model(tmp_path):
    from lm_eval.models.huggingface import HFLM

    from mellama_jax.eval.lm_eval_adapter import MellamaJaxLM
    from mellama_jax.tokenizer import BPETokenizer

    model_dir = str(tmp_path / "model")
    make_llama3_model_dir(model_dir, max_position_embeddings=64)
    env = {"model": model_dir, "tasks": write_tasks(str(tmp_path / "tasks"), n=4, long_doc_words=120)}
    jax_lm = MellamaJaxLM(checkpoint=model_dir, use_mesh=False, batch_size=4)
    assert isinstance(jax_lm.tok, BPETokenizer)
    hf_lm = HFLM(pretrained=model_dir, device="cpu", dtype="float32", batch_size=4)
    ref = _evaluate(hf_lm, env)
    _assert_same(ref, _evaluate(jax_lm, env))
    assert set(TASKS) <= set(ref["results"])
    text = "Fever 38.5 °C 🤒 <|eot_id|> après"
    assert jax_lm.tok_encode(text) == hf_lm.tok_encode(text)
    ids = hf_lm.tok_encode(text)
    assert jax_lm.tok_decode(ids) == hf_lm.tok_decode(ids)
