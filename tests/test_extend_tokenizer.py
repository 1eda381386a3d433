"""Vocabulary extension and resize_vocab: base ids kept, transformers agrees with our ids, fertility
falls on biomedical text and not on general text, and a resized model is the base model on old pieces."""
import json
import os

import numpy as np
import pytest

from mellama_jax.data.config import SAMPLES_DIR
from mellama_jax.tokenizer import load_tokenizer

S = SAMPLES_DIR
BIOMEDICAL = ",".join([f"{S}/pubmed/*.xml*", f"{S}/pmc/*.jsonl", f"{S}/pmc/*.txt"])


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    """A general-text base tokenizer (like LLaMA-2's, it never saw biomedical text) and its extension."""
    from mellama_jax.cli.extend_tokenizer import main as extend_main
    from mellama_jax.data.train_tokenizer import train_tokenizer

    root = tmp_path_factory.mktemp("extend")
    texts = [json.loads(line)["text"] for line in open(os.path.join(S, "general", "general_sample.jsonl"))]
    base = train_tokenizer(texts, str(root / "base"), vocab_size=1000)
    out = str(root / "ext")
    assert extend_main(["--base", str(root / "base"), "--corpus", BIOMEDICAL, "--add", "200", "--out", out]) == 0
    assert extend_main(["--base", str(root / "base"), "--corpus", BIOMEDICAL, "--add", "5", "--out", out]) == 2
    return {"root": root, "base": base, "ext": os.path.join(out, "tokenizer.model"), "out": out}


def _heldout_biomedical():
    from mellama_jax.data.extend_tokenizer import read_texts

    return list(read_texts("corpus", BIOMEDICAL.split(","), heldout_fraction=0.1, split="heldout"))


def _general():
    return [json.loads(line)["text"] for line in open(os.path.join(S, "general", "general_sample.jsonl"))]


def test_extension_keeps_ids_and_transformers_agrees(tokenizers):
    from transformers import AutoTokenizer

    from mellama_jax.tokenizer import read_model_proto

    base, ext = read_model_proto(tokenizers["base"]), read_model_proto(tokenizers["ext"])
    assert len(ext.pieces) == len(base.pieces) + 200
    for i, piece in enumerate(base.pieces):
        assert (ext.pieces[i].piece, ext.pieces[i].type, ext.pieces[i].score) == (piece.piece, piece.type, piece.score)
    ours, b = load_tokenizer(tokenizers["ext"]), load_tokenizer(tokenizers["base"])
    hf = AutoTokenizer.from_pretrained(tokenizers["out"])
    texts = _heldout_biomedical() + _general()[:20] + [" leading space", "tocilizumab 8 mg/kg IV q4w", ""]
    for text in texts:
        assert hf(text)["input_ids"] == ours.encode(text)
    # text whose extended encoding uses no new piece encodes to exactly the base ids
    unchanged = 0
    for text in _general():
        ids = ours.encode(text)
        if max(ids) < b.vocab_size:
            assert ids == b.encode(text)
            unchanged += 1
    assert unchanged > 0
    assert any(max(ours.encode(t)) >= b.vocab_size for t in _heldout_biomedical())


def test_fertility_report(tokenizers):
    report = json.load(open(os.path.join(tokenizers["out"], "fertility.json")))
    sets = report["sets"]
    assert set(sets) == {"biomedical", "clinical", "general"}
    assert sets["biomedical"]["base"]["documents"] > 0
    assert sets["biomedical"]["tokens_per_word_change"] < -0.05  # biomedical text needs fewer tokens
    assert sets["general"]["tokens_per_word_change"] <= 0.02
    # the numbers are what the tokenizers give
    from mellama_jax.data.extend_tokenizer import fertility
    import sentencepiece as spm

    docs = _heldout_biomedical()
    f = fertility(spm.SentencePieceProcessor(model_file=tokenizers["ext"]), docs)
    assert f["tokens"] == sum(len(load_tokenizer(tokenizers["ext"]).encode(d, bos=False)) for d in docs)
    assert f == sets["biomedical"]["extended"]


@pytest.fixture(scope="module")
def resized(tokenizers):
    import jax

    from mellama_jax.checkpoint.artifact import write_artifact_files
    from mellama_jax.checkpoint.orbax_io import save_params
    from mellama_jax.cli.convert import main as convert_main
    from mellama_jax.model.llama import init_params
    from mellama_jax.model.presets import get_preset

    root = tokenizers["root"]
    config = get_preset("tiny", vocab_size=1000)
    params = jax.tree.map(np.asarray, init_params(config, jax.random.key(0)))
    base_ckpt = str(root / "base_model")
    save_params(base_ckpt, config, params)
    write_artifact_files(base_ckpt, config, tokenizer_file=tokenizers["base"], provenance={"created_by": "test"})
    out = str(root / "resized")
    assert convert_main(["resize_vocab", "--ckpt", base_ckpt, "--tokenizer", tokenizers["out"], "--out", out]) == 0
    return {"base": base_ckpt, "out": out, "config": config, "params": params}


def test_resized_model_matches_base_and_exports(tokenizers, resized, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    from mellama_jax.checkpoint.artifact import resolve_artifact
    from mellama_jax.checkpoint.convert import orbax_to_hf
    from mellama_jax.model.llama import Llama

    art = resolve_artifact(resized["out"])
    assert art.model_config.vocab_size == 1216  # 1200 pieces padded to a multiple of 64
    assert art.tokenizer_file == os.path.join(resized["out"], "tokenizer.model")
    assert art.provenance["vocab_multiple"] == 64 and art.provenance["base_vocab"] == 1000
    params = art.load_params()
    base_emb = resized["params"]["embed_tokens"]["embedding"]
    base_head = resized["params"]["lm_head"]["kernel"]
    emb, head = np.asarray(params["embed_tokens"]["embedding"]), np.asarray(params["lm_head"]["kernel"])
    np.testing.assert_array_equal(emb[:1000], base_emb)
    np.testing.assert_array_equal(head[:, :1000], base_head)
    # new rows: the mean of the base rows of the base tokenizer's pieces for the new piece's text
    base_tok, ext_tok = load_tokenizer(tokenizers["base"]), load_tokenizer(tokenizers["ext"])
    checked = 0
    for i in range(1000, 1200):
        piece = ext_tok.id_to_piece(i)
        if not piece.startswith("\u2581") or len(piece) < 2:
            continue
        parts = base_tok.encode(piece[1:], bos=False)
        np.testing.assert_allclose(emb[i], base_emb[parts].mean(0), rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(head[:, i], base_head[:, parts].mean(1), rtol=1e-6, atol=1e-7)
        checked += 1
    assert checked >= 20
    np.testing.assert_allclose(emb[1200:], np.broadcast_to(base_emb.mean(0), (16, emb.shape[1])), rtol=1e-6)

    # text that uses no new piece: the same logits as the base model over the base vocabulary
    text = next(t for t in _general() if max(ext_tok.encode(t)) < 1000)
    tokens = np.array([ext_tok.encode(text)[:64]], np.int32)
    ours = np.asarray(Llama(art.model_config).apply({"params": params}, tokens))
    base = np.asarray(Llama(resized["config"]).apply({"params": resized["params"]}, tokens))
    np.testing.assert_allclose(ours[..., :1000], base, atol=1e-5, rtol=0)

    # the export loads in transformers with the new vocab and gives the same logits on new pieces
    hf_dir = orbax_to_hf(resized["out"], str(tmp_path / "hf"))
    model = AutoModelForCausalLM.from_pretrained(hf_dir).eval()
    assert model.config.vocab_size == 1216
    bio = np.array([ext_tok.encode(_heldout_biomedical()[0])[:64]], np.int32)
    assert bio.max() >= 1000
    with torch.no_grad():
        ref = model(torch.tensor(bio, dtype=torch.long)).logits.numpy()
    np.testing.assert_allclose(np.asarray(Llama(art.model_config).apply({"params": params}, bio)), ref,
                               atol=1e-4, rtol=1e-4)


def test_resized_model_trains_and_rejects_non_extensions(tokenizers, resized, tmp_path):
    import sys

    from mellama_jax.checkpoint.model_spec import check_training_tokenizer, training_tokenizer_file
    from mellama_jax.cli.convert import main as convert_main

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from configs.pretrain import get_config
    from mellama_jax.train import loop

    config = get_config("demo")
    config.data.tokenizer_path = ""
    config.model.init_from = resized["out"]
    path = training_tokenizer_file(config)
    tok = load_tokenizer(path)
    assert tok.sha256() == load_tokenizer(tokenizers["ext"]).sha256()
    model_config = loop.resolve_model_config(config, tok.vocab_size)
    check_training_tokenizer(config, tok, path, model_config)  # 1200 pieces on a 1216-row model: fine
    # a tokenizer that is not an extension of the base is refused, naming both files
    r = convert_main(["resize_vocab", "--ckpt", resized["base"], "--tokenizer", os.path.join(S, "tokenizer.model"),
                      "--out", str(tmp_path / "bad")])
    assert r == 2 and not os.path.exists(tmp_path / "bad" / "params")
