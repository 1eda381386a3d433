"""Instruction data: chat templates == transformers' apply_chat_template, readers of every format
(including files as `datasets`/pandas write them), masks, truncation counts, malformed records."""
from __future__ import annotations

import json
import os
import shutil
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from mellama_jax.data.sources.report import DataError  # noqa: E402
from mellama_jax.sft import data as sft_data  # noqa: E402
from mellama_jax.tokenizer import chat_templates as chat, load_tokenizer  # noqa: E402

SAMPLES = os.path.join(ROOT, "mellama_jax", "data", "samples")
CONVS = [
    [{"role": "user", "content": "Is aspirin good?"}, {"role": "assistant", "content": "yes"}],
    [{"role": "system", "content": "You are a doctor."}, {"role": "user", "content": " Is aspirin good? "},
     {"role": "assistant", "content": "maybe: café Ärzte 5 mg"}, {"role": "user", "content": "why\n"},
     {"role": "assistant", "content": "because\n it is."}],
]


@pytest.fixture(scope="module", params=[True, False], ids=["legacy", "non_legacy"])
def tok_dir(request, tmp_path_factory):
    d = tmp_path_factory.mktemp("tok")
    shutil.copy(os.path.join(SAMPLES, "tokenizer.model"), d)
    with open(os.path.join(SAMPLES, "tokenizer_config.json")) as f:
        cfg = json.load(f)
    cfg["legacy"] = request.param
    with open(d / "tokenizer_config.json", "w") as f:
        json.dump(cfg, f)
    return str(d)


@pytest.mark.parametrize("name", ["none", "mellama", "llama2"])
def test_templates_match_transformers_ids_and_assistant_masks(tok_dir, name):
    from transformers import AutoTokenizer

    tok = load_tokenizer(os.path.join(tok_dir, "tokenizer.model"))
    hf = AutoTokenizer.from_pretrained(tok_dir)
    hf.chat_template = chat.hf_chat_template(name)
    for conv in CONVS:
        ids, trained = chat.encode_chat(tok, name, conv)
        ref = hf.apply_chat_template(conv, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
        assert ids.tolist() == list(ref["input_ids"])
        assert trained.astype(int).tolist() == list(ref["assistant_masks"])
        assert hf.apply_chat_template(conv, tokenize=False) == chat.render_text(name, conv)
        # the prompt side for generation: the conversation minus its last answer
        gen_ids, _ = chat.encode_chat(tok, name, conv[:-1], add_generation_prompt=True, require_answer=False)
        ref_gen = hf.apply_chat_template(conv[:-1], tokenize=True, add_generation_prompt=True, return_dict=True)
        assert gen_ids.tolist() == list(ref_gen["input_ids"])


def test_mellama_and_llama2_text_as_released():
    msgs = [{"role": "user", "content": "Q?"}]
    # Me-LLaMA src/model_prompt.py: f'Human: \n{ctx}\n\nAssistant: \n'
    assert chat.apply_chat_template("mellama", msgs) == "Human: \nQ?\n\nAssistant: \n"
    assert chat.apply_chat_template("none", msgs) == "Q?"
    sys_msgs = [{"role": "system", "content": "Be brief."}] + msgs
    # Meta's chat_completion: B_INST + " " + (B_SYS + system + E_SYS + prompt).strip() + " " + E_INST
    assert chat.apply_chat_template("llama2", sys_msgs) == "[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nQ? [/INST]"
    with pytest.raises(ValueError, match="unknown chat template"):
        chat.apply_chat_template("alpaca", msgs)


def test_llama2_ids_match_meta_reference_encoding():
    """Meta's reference: each (prompt, answer) pair is sp.encode(f"[INST] {p} [/INST] {a} ") with BOS/EOS."""
    import sentencepiece as spm

    tok = load_tokenizer(os.path.join(SAMPLES, "tokenizer.model"))  # legacy: true, like LLaMA-2's reference
    sp = spm.SentencePieceProcessor(model_file=os.path.join(SAMPLES, "tokenizer.model"))
    conv = CONVS[1]
    first = "<<SYS>>\nYou are a doctor.\n<</SYS>>\n\n Is aspirin good? ".strip()
    ref = ([1] + sp.encode(f"[INST] {first} [/INST] maybe: café Ärzte 5 mg ") + [2]
           + [1] + sp.encode("[INST] why [/INST] because\n it is. ") + [2])
    assert chat.encode_chat(tok, "llama2", conv)[0].tolist() == ref


def test_readers_all_formats_and_bad_records(tmp_path):
    pd = pytest.importorskip("pandas")
    tok = load_tokenizer(os.path.join(SAMPLES, "tokenizer.model"))
    good = [
        {"instruction": "Is X a drug?", "input": "X is metformin.", "output": "yes"},
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
        {"conversations": [{"from": "human", "value": "Q1"}, {"from": "agent", "value": "A1"}]},
        {"conversations": [{"from": "system", "value": "S"}, {"from": "human", "value": "Q"},
                           {"from": "gpt", "value": "A"}]},
    ]
    expected = [
        [{"role": "user", "content": "Is X a drug?\n\nX is metformin."}, {"role": "assistant", "content": "yes"}],
        [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
        [{"role": "user", "content": "Q1"}, {"role": "assistant", "content": "A1"}],
        [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}],
    ]
    assert [sft_data.to_messages(r) for r in good] == expected
    # A datasets/pandas parquet export: nested lists come back as numpy arrays of dicts.
    pd.DataFrame({"conversations": [r["conversations"] for r in good[2:]]}).to_parquet(tmp_path / "sg.parquet")
    recs = [r for _, r in sft_data.iter_records(str(tmp_path / "sg.parquet"))]
    assert [sft_data.to_messages(r) for r in recs] == expected[2:]
    with open(tmp_path / "list.json", "w") as f:
        json.dump(good, f)
    assert [sft_data.to_messages(r) for _, r in sft_data.iter_records(str(tmp_path / "list.json"))] == expected

    lines = [json.dumps(good[0]), "{not json", json.dumps({"foo": 1}), json.dumps({"instruction": "x", "output": " "}),
             json.dumps({"conversations": [{"from": "human", "value": "a"}, {"from": "robot", "value": "b"}]}),
             json.dumps({"messages": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "b"}]}),
             json.dumps(good[1])]
    (tmp_path / "mixed.jsonl").write_text("\n".join(lines) + "\n")
    src = sft_data.sft_source_config([str(tmp_path / "mixed.jsonl")], eval_fraction=0.0)
    docs, report, counts = sft_data.read_source("mixed", src, tok, "mellama", 64)
    assert report.good == 2 and dict(report.bad) == {"invalid_json": 1, "unknown_format": 1, "empty_answer": 1,
                                                     "bad_role": 1, "bad_conversation": 1}
    assert any(f"mixed.jsonl:2: invalid_json" in e for e in report.examples)
    assert any(f"mixed.jsonl:5: bad_role" in e for e in report.examples)
    with pytest.raises(DataError, match="5 of 7 items were bad"):
        report.check(0.1)
    assert docs["train"].num_docs == 2 and counts["train/examples"] == 2


def test_masks_and_left_truncation_counted():
    tok = load_tokenizer(os.path.join(SAMPLES, "tokenizer.model"))
    msgs = [{"role": "user", "content": "word " * 80}, {"role": "assistant", "content": "yes"}]
    full, trained = chat.encode_chat(tok, "mellama", msgs)
    ids, tr, cut = sft_data.encode_example(tok, "mellama", msgs, 32)
    assert cut == "prompt_truncated" and len(ids) == 33 and ids[0] == tok.bos_id
    assert ids[1:].tolist() == full[-32:].tolist() and tr[1:].tolist() == trained[-32:].tolist()
    assert tok.decode(ids[tr]) == "yes" and ids[-1] == tok.eos_id and tr[-1]
    long_answer = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "word " * 80}]
    assert sft_data.encode_example(tok, "mellama", long_answer, 32)[2] == "answer_truncated"
    assert sft_data.encode_example(tok, "mellama", msgs, 512)[2] is None


def test_packed_rows_carry_masks_and_segments():
    tok = load_tokenizer(os.path.join(SAMPLES, "tokenizer.model"))
    exs = [chat.encode_chat(tok, "mellama", [{"role": "user", "content": f"question {i}"},
                                             {"role": "assistant", "content": "no" if i % 2 else "yes"}])
           for i in range(5)]
    docs = sft_data.MaskedDocs.from_examples(exs)
    rows = sft_data.masked_rows(docs, 64, pad=False)
    out = {k: np.zeros((rows.num_rows, 64), np.int32) for k in ("inputs", "targets", "positions", "segment_ids",
                                                               "source_ids")}
    out["loss_mask"] = np.zeros((rows.num_rows, 64), np.float32)
    for i in range(rows.num_rows):
        rows.write(i, out, i, 0)
    assert rows.num_rows < 5  # several examples share a row
    assert int(out["segment_ids"].max()) >= 2
    # every trained target is an answer token or EOS; the masked count equals the examples' trained tokens
    targets = out["targets"][out["loss_mask"] > 0]
    assert out["loss_mask"].sum() == sum(int(t[1:].sum()) for _, t in exs)
    assert set(tok.decode([t]) for t in targets if t != tok.eos_id) <= {"y", "es", "no", "yes", "n", "o"}
    padded = sft_data.masked_rows(docs, 64, pad=True)
    assert padded.num_rows == 5


def test_sft_pipeline_mixture_epochs_and_stats(tmp_path):
    import ml_collections
    sys.path.insert(0, ROOT)
    from configs.sft import sft_data_config

    d = sft_data_config()
    d.tokenizer_path = os.path.join(SAMPLES, "tokenizer.model")
    d.seq_len = 256
    pipe = sft_data.build_sft_pipeline(d, global_batch_size=8)
    assert set(pipe.source_names) == {"qa", "extraction", "classification", "summarization", "general"}
    b = pipe.batch(3)
    again = sft_data.build_sft_pipeline(d, global_batch_size=8).batch(3)
    for k in b:
        np.testing.assert_array_equal(b[k], again[k])
    assert 0 < b["loss_mask"].mean() < 0.5  # prompts masked
    stats = pipe.stats()
    assert stats["data/qa/train/examples"] > 100 and "data/qa/trained_token_fraction" in stats
    assert pipe.steps_for_epochs(1.0) == int(np.ceil(pipe.epoch_rows() / 8))
    assert pipe.eval_batches("qa", 1)[0]["loss_mask"].sum() > 0
    assert pipe.state()["chat_template"] == "mellama"
