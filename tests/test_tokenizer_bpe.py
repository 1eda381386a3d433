"""The Hugging Face BPE backend (LLaMA-3's tokenizer.json) against transformers' AutoTokenizer: ids,
decode, specials, EOS lists, export, fingerprints, extension, and the errors that name the file."""
import json
import os
import shutil
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bpe_fixtures import CLINICAL_TEXTS, META_LLAMA3_TEMPLATE, train_llama3_tokenizer  # noqa: E402

from mellama_jax.tokenizer import (BPETokenizer, SentencePieceTokenizer, TokenizerMismatchError,  # noqa: E402
                                   check_tokenizer, load_tokenizer, tokenizer_file_in)


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("llama3tok"))
    train_llama3_tokenizer(d)
    return d


@pytest.fixture(scope="module")
def meta_dir(tok_dir, tmp_path_factory):
    """The same tokenizer in the layout Meta ships: tokenizer_class PreTrainedTokenizerFast, the
    template inside tokenizer_config.json, added_tokens_decoder, special_tokens_map.json."""
    d = str(tmp_path_factory.mktemp("meta"))
    shutil.copy(os.path.join(tok_dir, "tokenizer.json"), d)
    shutil.copy(os.path.join(tok_dir, "generation_config.json"), d)
    spec = json.load(open(os.path.join(d, "tokenizer.json")))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|begin_of_text|>",
              "eos_token": "<|eot_id|>", "clean_up_tokenization_spaces": True, "model_max_length": 131072,
              "chat_template": META_LLAMA3_TEMPLATE,
              "model_input_names": ["input_ids", "attention_mask"],
              "added_tokens_decoder": {str(t["id"]): {k: t[k] for k in ("content", "lstrip", "normalized", "rstrip",
                                                                           "single_word", "special")}
                                       for t in spec["added_tokens"]}}
    json.dump(config, open(os.path.join(d, "tokenizer_config.json"), "w"))
    json.dump({"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"},
              open(os.path.join(d, "special_tokens_map.json"), "w"))
    return d


def _hf(d):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(d)


@pytest.mark.parametrize("layout", ["save_pretrained", "meta"])
def test_ids_and_decode_equal_autotokenizer(layout, tok_dir, meta_dir):
    d = tok_dir if layout == "save_pretrained" else meta_dir
    hf, tok = _hf(d), load_tokenizer(d)
    assert isinstance(tok, BPETokenizer) and tok.model_path == os.path.join(d, "tokenizer.json")
    assert tok.vocab_size == len(hf) and tok.bos_id == hf.bos_token_id and tok.eos_id == hf.eos_token_id
    assert tok.add_bos and not tok.add_eos
    for text in CLINICAL_TEXTS:
        ids = hf(text)["input_ids"]
        assert tok.encode(text) == ids, text
        assert tok.encode(text, bos=False) == hf(text, add_special_tokens=False)["input_ids"]
        assert tok.encode(text, eos=True) == ids + [tok.eos_id]
        for skip in (True, False):
            assert tok.decode(ids, skip_special_tokens=skip) == hf.decode(ids, skip_special_tokens=skip)
    assert tok.encode_batch(CLINICAL_TEXTS) == [hf(t)["input_ids"] for t in CLINICAL_TEXTS]
    assert tok.encode_batch(CLINICAL_TEXTS, bos=False) == [hf(t, add_special_tokens=False)["input_ids"]
                                                          for t in CLINICAL_TEXTS]
    # The special tokens are matched whole inside text, as transformers does.
    assert tok.encode("<|eot_id|>", bos=False) == [tok.special_tokens["<|eot_id|>"]]
    assert set(tok.special_tokens) == set(hf.all_special_tokens) | {t for t in tok.special_tokens
                                                                   if t not in hf.all_special_tokens}
    ends = [tok.special_tokens[t] for t in ("<|eot_id|>", "<|end_of_text|>", "<|eom_id|>")]
    assert tok.eos_ids == ends and tok.chat_template == META_LLAMA3_TEMPLATE


def test_encode_chunk_byte_offsets(tok_dir):
    tok = load_tokenizer(tok_dir)
    text = "Café 🧠 12345\n\n  x"
    pieces = tok.encode_chunk(text, at_start=False)
    assert [i for i, _, _ in pieces] == tok.encode(text, bos=False)
    raw = text.encode("utf-8")
    assert pieces[0][1] == 0 and pieces[-1][2] == len(raw)
    assert all(0 <= b <= e <= len(raw) for _, b, e in pieces)


def test_sentencepiece_stays_first(tok_dir, tmp_path):
    from mellama_jax.data.config import SAMPLES_DIR
    d = str(tmp_path)
    shutil.copy(os.path.join(SAMPLES_DIR, "tokenizer.model"), d)
    shutil.copy(os.path.join(tok_dir, "tokenizer.json"), d)
    assert isinstance(load_tokenizer(d), SentencePieceTokenizer)
    os.remove(os.path.join(d, "tokenizer.model"))
    assert tokenizer_file_in(d).endswith("tokenizer.json")
    with pytest.raises(FileNotFoundError, match=r"tokenizer.model or tokenizer.json"):
        load_tokenizer(str(tmp_path / "nothing_here") if os.makedirs(tmp_path / "nothing_here") is None else "")


def test_fingerprint_covers_ids_not_the_template(tok_dir, tmp_path):
    base = load_tokenizer(tok_dir)
    same = str(tmp_path / "same")
    shutil.copytree(tok_dir, same)
    cfg = json.load(open(os.path.join(same, "tokenizer_config.json")))
    cfg["model_max_length"] = 4096
    json.dump(cfg, open(os.path.join(same, "tokenizer_config.json"), "w"))
    with open(os.path.join(same, "chat_template.jinja"), "w") as f:
        f.write("{{ messages[0]['content'] }}")
    assert load_tokenizer(same).fingerprint() == base.fingerprint() == base.sha256()
    other = str(tmp_path / "other")
    train_llama3_tokenizer(other, vocab_size=580)
    assert load_tokenizer(other).fingerprint() != base.fingerprint()


def test_resumed_run_with_another_tokenizer_is_refused(tok_dir, tmp_path):
    """W/checkpoints keeps the tokenizer its checkpoints were trained with (either backend)."""
    from mellama_jax.checkpoint.artifact import write_artifact_files
    from mellama_jax.data.config import SAMPLES_DIR
    from mellama_jax.model.config import LlamaConfig

    tok = load_tokenizer(tok_dir)
    cfg = LlamaConfig(vocab_size=tok.vocab_size, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, bos_token_id=tok.bos_id, eos_token_id=tok.eos_id)
    ckpts = str(tmp_path / "W" / "checkpoints")
    write_artifact_files(ckpts, cfg, tokenizer_file=tok.model_path)
    write_artifact_files(ckpts, cfg, tokenizer_file=tok.model_path)  # the same tokenizer resumes
    assert load_tokenizer(ckpts).fingerprint() == tok.fingerprint()
    assert os.path.isfile(os.path.join(ckpts, "generation_config.json"))  # the EOS list travels
    other = str(tmp_path / "other")
    train_llama3_tokenizer(other, vocab_size=580)
    with pytest.raises(ValueError, match=r"checkpoints/tokenizer.json: this directory's checkpoints were made "
                                         r"with a different tokenizer"):
        write_artifact_files(ckpts, cfg, tokenizer_file=os.path.join(other, "tokenizer.json"))
    with pytest.raises(ValueError, match="different tokenizer"):
        write_artifact_files(ckpts, cfg, tokenizer_file=os.path.join(SAMPLES_DIR, "tokenizer.model"))


def test_token_store_key_follows_the_fingerprint(tok_dir, tmp_path):
    """The data pipeline's token-store key is built from Tokenizer.sha256() (the fingerprint)."""
    import inspect

    from mellama_jax.data import pipeline
    src = inspect.getsource(pipeline.load_source_tokens)
    assert "tokenizer.sha256()" in src or "tokenizer.fingerprint()" in src


def test_not_bpe_is_refused_naming_the_file(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    tok = Tokenizer(models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    path = str(tmp_path / "tokenizer.json")
    tok.save(path)
    with pytest.raises(ValueError, match=rf"{path}: the tokenizer model is 'WordLevel', not BPE"):
        load_tokenizer(str(tmp_path))
    with open(path, "w") as f:
        f.write("{not json")
    with pytest.raises(ValueError, match=rf"{path}: not a valid tokenizer.json"):
        load_tokenizer(path)


def test_model_specific_class_is_refused(tok_dir, tmp_path):
    """A class transformers rebuilds from the vocabulary would encode differently: say so."""
    d = str(tmp_path / "t")
    shutil.copytree(tok_dir, d)
    cfg = json.load(open(os.path.join(d, "tokenizer_config.json")))
    cfg["tokenizer_class"] = "Qwen2Tokenizer"
    json.dump(cfg, open(os.path.join(d, "tokenizer_config.json"), "w"))
    with pytest.raises(ValueError, match=r"tokenizer_config.json: tokenizer_class 'Qwen2Tokenizer'.*"
                                         r"PreTrainedTokenizerFast"):
        load_tokenizer(d)
    # ...and transformers really does encode it differently (so the refusal is not over-cautious).
    from transformers import AutoTokenizer, PreTrainedTokenizerFast
    as_written = PreTrainedTokenizerFast(tokenizer_file=os.path.join(d, "tokenizer.json"))
    rebuilt = AutoTokenizer.from_pretrained(d)
    assert any(rebuilt(t)["input_ids"] != as_written(t)["input_ids"] for t in CLINICAL_TEXTS)
    # LlamaTokenizer over a byte-level tokenizer.json: transformers uses the file as written, so do we.
    cfg["tokenizer_class"] = "LlamaTokenizerFast"
    json.dump(cfg, open(os.path.join(d, "tokenizer_config.json"), "w"))
    hf = AutoTokenizer.from_pretrained(d)
    assert [load_tokenizer(d).encode(t) for t in CLINICAL_TEXTS] == [hf(t)["input_ids"] for t in CLINICAL_TEXTS]


def test_generation_config_eos_outside_vocab(tok_dir, tmp_path):
    d = str(tmp_path / "t")
    shutil.copytree(tok_dir, d)
    json.dump({"eos_token_id": [606, 99999]}, open(os.path.join(d, "generation_config.json"), "w"))
    with pytest.raises(ValueError, match=r"generation_config.json: eos_token_id 99999 is not in the vocabulary"):
        load_tokenizer(d)
    json.dump({"eos_token": "<|no_such|>"}, open(os.path.join(d, "generation_config.json"), "w"))
    cfg = json.load(open(os.path.join(d, "tokenizer_config.json")))
    cfg["eos_token"] = "<|no_such|>"
    json.dump(cfg, open(os.path.join(d, "tokenizer_config.json"), "w"))
    with pytest.raises(ValueError, match=r"tokenizer_config.json: eos_token '<\|no_such\|>' is not in the vocabulary"):
        load_tokenizer(d)


def test_checks_added_tokens_beyond_model_and_eos_list(tok_dir):
    from types import SimpleNamespace
    tok = load_tokenizer(tok_dir)
    n_base = tok.vocab_size - len(tok.added_tokens)  # the model was sized for the base vocabulary only
    small = SimpleNamespace(vocab_size=n_base, bos_token_id=tok.bos_id, eos_token_id=tok.eos_id, pad_token_id=None)
    with pytest.raises(TokenizerMismatchError, match=r"added token\(s\) have ids beyond the model's vocab_size "
                                                    rf"{n_base}: '<\|begin_of_text\|>'={tok.bos_id}"):
        check_tokenizer(tok, small, tok.model_path, "config.json")
    # A model whose eos_token_id is <|end_of_text|> (LLaMA-3 base) fits: the tokenizer stops at it too.
    ok = SimpleNamespace(vocab_size=tok.vocab_size, bos_token_id=tok.bos_id,
                         eos_token_id=tok.special_tokens["<|end_of_text|>"], pad_token_id=None)
    check_tokenizer(tok, ok, tok.model_path, "config.json")
    bad = SimpleNamespace(**{**vars(ok), "eos_token_id": 5})
    with pytest.raises(TokenizerMismatchError, match="EOS id"):
        check_tokenizer(tok, bad, tok.model_path, "config.json")


def test_export_round_trip_loads_in_transformers(tmp_path):
    """HF dir -> Orbax -> HF: tokenizer.json byte for byte, same ids and template in transformers."""
    from bpe_fixtures import make_llama3_model_dir

    from mellama_jax.checkpoint.convert import hf_to_orbax, orbax_to_hf
    src, mid, out = str(tmp_path / "hf"), str(tmp_path / "orbax"), str(tmp_path / "out")
    make_llama3_model_dir(src)
    hf_to_orbax(src, mid)
    orbax_to_hf(mid, out)
    assert open(os.path.join(out, "tokenizer.json"), "rb").read() == open(os.path.join(src, "tokenizer.json"), "rb").read()
    a, b = _hf(src), _hf(out)
    for text in CLINICAL_TEXTS:
        assert b(text)["input_ids"] == a(text)["input_ids"]
    conv = [{"role": "user", "content": "BP 150/95?"}]
    assert (b.apply_chat_template(conv, add_generation_prompt=True, tokenize=False)
            == a.apply_chat_template(conv, add_generation_prompt=True, tokenize=False))
    gen = json.load(open(os.path.join(out, "generation_config.json")))
    assert sorted(gen["eos_token_id"]) == sorted(load_tokenizer(src).eos_ids)


def test_extend_bpe_keeps_ids_and_transformers_agrees(tok_dir, tmp_path):
    from transformers import PreTrainedTokenizerFast

    from mellama_jax.checkpoint.vocab import new_row_sources
    from mellama_jax.cli.extend_tokenizer import main as extend_main
    from mellama_jax.data.config import SAMPLES_DIR

    out = str(tmp_path / "ext")
    rc = extend_main(["--base", tok_dir, "--corpus", os.path.join(SAMPLES_DIR, "pubmed", "*.xml*"),
                      "--add", "40", "--out", out, "--heldout_fraction", "0.2"])
    assert rc == 0
    base, ext = load_tokenizer(tok_dir), load_tokenizer(out)
    added = open(os.path.join(out, "added_pieces.txt"), encoding="utf-8").read().split("\n")[:-1]
    assert 0 < len(added) <= 40 and ext.vocab_size == base.vocab_size + len(added)
    for token, i in base._tok.get_vocab(with_added_tokens=True).items():
        assert ext.token_to_id(token) == i
    assert ext.special_tokens == base.special_tokens and ext.eos_ids == base.eos_ids
    hf_ext = PreTrainedTokenizerFast(tokenizer_file=os.path.join(out, "tokenizer.json"))
    texts = CLINICAL_TEXTS + ["Metformin and cardiomyopathy in the randomized controlled trial."]
    for text in texts:
        e = ext.encode(text)
        assert hf_ext(text, add_special_tokens=False)["input_ids"] == ext.encode(text, bos=False)
        assert len(e) <= len(base.encode(text))
        if not any(i >= base.vocab_size for i in e):
            assert e == base.encode(text), text  # no new token: the ids of before
    report = json.load(open(os.path.join(out, "fertility.json")))
    assert report["base_vocab"] == base.vocab_size and report["extended_vocab"] == ext.vocab_size
    bio = report["sets"]["biomedical"]
    assert bio["extended"]["tokens"] <= bio["base"]["tokens"]
    sources = new_row_sources(base.model_path, ext.model_path)
    assert sorted(sources) == list(range(base.vocab_size, ext.vocab_size))
    for i, ids in sources.items():
        assert "".join(base.id_to_piece(j) for j in ids) == ext.id_to_piece(i)


def test_resize_vocab_with_bpe(tmp_path):
    from bpe_fixtures import make_llama3_model_dir

    from mellama_jax.checkpoint.artifact import resolve_artifact
    from mellama_jax.checkpoint.convert import resize_vocab
    from mellama_jax.cli.extend_tokenizer import main as extend_main
    from mellama_jax.data.config import SAMPLES_DIR

    src = str(tmp_path / "hf")
    make_llama3_model_dir(src)
    out = str(tmp_path / "ext")
    assert extend_main(["--base", src, "--corpus", os.path.join(SAMPLES_DIR, "pubmed", "*.xml*"),
                        "--add", "20", "--out", out]) == 0
    grown = str(tmp_path / "grown")
    resize_vocab(src, out, grown, pad_to_multiple=8)
    art = resolve_artifact(grown)
    tok = art.load_tokenizer()
    assert art.tokenizer_file.endswith("tokenizer.json") and art.model_config.vocab_size % 8 == 0
    assert art.model_config.vocab_size >= tok.vocab_size
    params = art.load_params()
    emb = np.asarray(params["embed"]["embedding"] if "embed" in params else
                     next(v for k, v in params.items() if "emb" in k)["embedding"])
    base = resolve_artifact(src).load_params()
    base_emb = np.asarray(base["embed"]["embedding"] if "embed" in base else
                          next(v for k, v in base.items() if "emb" in k)["embedding"])
    np.testing.assert_array_equal(emb[:base_emb.shape[0]], base_emb)
