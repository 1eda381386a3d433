"""The tokenizer layer: sentencepiece ids equal transformers' LlamaTokenizer on the same
tokenizer.model; BOS/EOS conventions (LLaMA-2 defaults, tokenizer_config.json honoured); the
LLaMA-style trainer settings; the Tokenizer interface and factory; the layer imports nothing above it."""
import ast
import glob
import json
import os
import random
import shutil

import pytest
import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2 as sp_pb2

from mellama_jax.cli.train_tokenizer import main as train_main
from mellama_jax.data.train_tokenizer import train_tokenizer
from mellama_jax.tokenizer import (SentencePieceTokenizer, Tokenizer, copy_tokenizer_files, load_tokenizer,
                                   tokenizer_file_in)

CASES = [
    "", " ", "Hello world", " Hello world", "  two leading spaces", "trailing space ", "x",
    "Patient is 67 y/o, BP 142/91, HbA1c 7.8% on 2150-03-02.", "1234567890", "3.14159 and -42",
    "line one\nline two\n\n  indented line\n", "\ttab\tseparated\t", "café naïve Größe résumé",
    "東京都 and 北京", "μ-opioid ±5% 37°C → ≥ 2", "emoji 🙂 ok 🧬", "mixed Ω  spaces   here",
    "<s> literal tokens </s> in text", "unseen chars: ʘ ⱷ ꙮ",
]


def _generated_text(n: int = 3000, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    words = ["patient", "the", "dose", "mg", "insulin", "trial", "heart", "renal", "failure", "acute",
             "of", "with", "and", "was", "café", "naïve", "東京", "μg", "blood", "pressure", "Dr.", "a",
             "clinical", "note", "x-ray", "COVID-19", "IL-6"]
    syll = ["ka", "ro", "mi", "ne", "tu", "sal", "pre", "dor", "lin", "vex", "qua", "zo", "ph", "thy"]
    words += ["".join(rng.choice(syll) for _ in range(rng.randint(1, 4))) for _ in range(300)]
    lines = []
    for _ in range(n):
        ws = [rng.choice(words) if rng.random() < 0.85 else str(rng.randint(0, 10**rng.randint(1, 6)))
              for _ in range(rng.randint(3, 20))]
        lines.append(" ".join(ws) + rng.choice([".", ",", "", "!", "?"]))
    return lines


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("tok")
    path = train_tokenizer(_generated_text(), str(out), vocab_size=600)
    return path


@pytest.fixture(scope="module")
def hf_llama(trained):
    transformers = pytest.importorskip("transformers")
    # transformers 5 converts a tokenizer.model when loading a directory (LlamaTokenizer is the
    # tokenizers-backed class there; LlamaTokenizerFast is an alias). The directory also holds the
    # tokenizer_config.json written by train_tokenizer (LLaMA-2's add_bos_token/add_eos_token/legacy).
    assert transformers.LlamaTokenizerFast is transformers.LlamaTokenizer or True
    return transformers.LlamaTokenizer.from_pretrained(os.path.dirname(trained))


@pytest.fixture(scope="module")
def hf_bare(trained, tmp_path_factory):
    """LlamaTokenizerFast built from the bare model file, without any tokenizer_config.json."""
    transformers = pytest.importorskip("transformers")
    d = tmp_path_factory.mktemp("bare")
    shutil.copy(trained, d / "tokenizer.model")
    return transformers.LlamaTokenizerFast.from_pretrained(str(d))


def test_trainer_spec_is_llama_like(trained):
    m = sp_pb2.ModelProto()
    with open(trained, "rb") as f:
        m.ParseFromString(f.read())
    ts, ns = m.trainer_spec, m.normalizer_spec
    assert ts.model_type == sp_pb2.TrainerSpec.BPE
    assert ts.byte_fallback and ts.split_digits
    assert (ts.unk_id, ts.bos_id, ts.eos_id, ts.pad_id) == (0, 1, 2, -1)
    assert ns.name == "identity" and ns.add_dummy_prefix and not ns.remove_extra_whitespaces
    assert [m.pieces[i].piece for i in range(3)] == ["<unk>", "<s>", "</s>"]
    assert m.pieces[3].piece == "<0x00>"  # the 256 byte-fallback pieces follow the specials
    assert len(m.pieces) == 600


def test_round_trip(trained):
    tok = SentencePieceTokenizer(trained)
    for text in CASES + _generated_text(50, seed=1):
        assert tok.decode(tok.encode(text)) == text, repr(text)
        assert tok.decode(tok.encode(text, bos=False, eos=True)) == text, repr(text)


def _hf_ids(hf, text, **kw):
    # split_special_tokens: a literal "<s>" in a document is text, not BOS (our encode never parses
    # control tokens out of text, so corpus text cannot inject BOS/EOS).
    return hf(text, split_special_tokens=True, **kw)["input_ids"]


def _leading_space_quirk(hf, text, ours):
    """transformers 5 converts the model with a Metaspace pre-tokenizer, which does not prepend the
    dummy "▁" to text that already starts with a space; sentencepiece (and the slow legacy
    LlamaTokenizer that LLaMA-2 was trained with, and LLaMA-2's own tokenizer.json, whose normalizer
    prepends unconditionally) does. So for such text the fast ids merge our first two pieces."""
    theirs = _hf_ids(hf, text, add_special_tokens=False)
    p_ours = "".join(hf.convert_ids_to_tokens(ours))
    p_theirs = "".join(hf.convert_ids_to_tokens(theirs))
    return p_ours == "▁" + p_theirs


@pytest.mark.parametrize("which", ["with_config", "bare"])
def test_ids_match_transformers_llama_tokenizer(trained, hf_llama, hf_bare, which):
    tok = SentencePieceTokenizer(trained)
    hf = hf_llama if which == "with_config" else hf_bare
    assert hf.bos_token_id == tok.bos_id == 1 and hf.eos_token_id == tok.eos_id == 2
    assert len(hf) == tok.vocab_size
    quirks = 0
    for text in CASES + _generated_text(30, seed=2):
        ours = tok.encode(text)
        if text.startswith(" "):
            assert _leading_space_quirk(hf, text, ours[1:]), repr(text)
            quirks += 1
            continue
        if which == "with_config":
            assert ours == _hf_ids(hf, text), repr(text)
        else:
            # A fast tokenizer built from a bare tokenizer.model adds no BOS in transformers 5; ours keeps
            # LLaMA-2's convention (BOS) when no tokenizer_config.json says otherwise.
            assert _hf_ids(hf, text) == _hf_ids(hf, text, add_special_tokens=False)
            assert ours == [1] + _hf_ids(hf, text, add_special_tokens=False), repr(text)
        assert tok.encode(text, bos=False) == _hf_ids(hf, text, add_special_tokens=False), repr(text)
        assert tok.encode(text, bos=True, eos=True) == [1] + _hf_ids(hf, text, add_special_tokens=False) + [2]
        assert tok.decode(ours) == hf.decode(ours, skip_special_tokens=True), repr(text)
    assert quirks == 3
    # Every case has BOS first and no EOS under the LLaMA-2 defaults.
    assert all(tok.encode(t)[0] == 1 and tok.encode(t)[-1] != 2 for t in CASES)
    assert tok.encode("") == [1] and tok.encode("", bos=False) == []


def test_ids_match_transformers_sentencepiece_backend(trained):
    """transformers' own sentencepiece-based (slow, legacy) path gives our ids for every case,
    leading spaces included."""
    pytest.importorskip("transformers")
    from transformers.tokenization_utils_sentencepiece import SentencePieceBackend

    slow = SentencePieceBackend(vocab_file=trained, legacy=True, unk_token="<unk>", bos_token="<s>",
                                eos_token="</s>")
    tok = SentencePieceTokenizer(trained)
    for text in CASES + _generated_text(30, seed=4):
        if "<s>" in text:  # the slow class splits control tokens out of text; we deliberately do not
            continue
        assert tok.encode(text, bos=False) == slow(text, add_special_tokens=False)["input_ids"], repr(text)


def test_ids_match_raw_sentencepiece(trained):
    # The slow (legacy) LlamaTokenizer of LLaMA-2 is sentencepiece's encode plus BOS.
    sp = spm.SentencePieceProcessor(model_file=trained)
    tok = SentencePieceTokenizer(trained)
    for text in CASES:
        assert tok.encode(text) == [1] + sp.encode(text)
    batch = tok.encode_batch(CASES, eos=True, num_threads=2)
    assert batch == [[1] + sp.encode(t) + [2] for t in CASES]


def test_tokenizer_config_json_is_honoured(trained, tmp_path):
    shutil.copy(trained, tmp_path / "tokenizer.model")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"add_bos_token": False, "add_eos_token": True}))
    tok = load_tokenizer(str(tmp_path))
    sp = spm.SentencePieceProcessor(model_file=trained)
    assert tok.encode("Hello") == sp.encode("Hello") + [2]
    assert tok.encode("Hello", bos=True, eos=False) == [1] + sp.encode("Hello")
    transformers = pytest.importorskip("transformers")
    hf = transformers.LlamaTokenizer.from_pretrained(str(tmp_path))
    assert tok.encode("Hello world 42") == hf("Hello world 42")["input_ids"]
    assert tok.encode("Hello world 42")[-1] == 2 and tok.encode("Hello world 42")[0] != 1


def test_trained_file_writes_llama2_defaults(trained):
    cfg = json.load(open(os.path.join(os.path.dirname(trained), "tokenizer_config.json")))
    assert cfg["add_bos_token"] is True and cfg["add_eos_token"] is False
    assert SentencePieceTokenizer(trained).add_bos and not SentencePieceTokenizer(trained).add_eos


def test_bad_model_path_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.model"):
        SentencePieceTokenizer(str(tmp_path / "nope.model"))
    bad = tmp_path / "bad.model"
    bad.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="bad.model"):
        SentencePieceTokenizer(str(bad))


def test_bundled_tokenizer_and_cli(tmp_path):
    from mellama_jax.data.config import demo_data_config

    tok = SentencePieceTokenizer(demo_data_config().tokenizer_path)
    assert 2000 <= tok.vocab_size <= 4000
    text = "Patient with type 2 diabetes started on metformin 500 mg BID."
    assert tok.decode(tok.encode(text)) == text
    f = tmp_path / "corpus.jsonl"
    f.write_text("\n".join(json.dumps({"text": t}) for t in _generated_text(500, seed=3)))
    train_main(["--input", str(f), "--out", str(tmp_path / "out"), "--vocab_size", "400"])
    assert SentencePieceTokenizer(str(tmp_path / "out" / "tokenizer.model")).vocab_size == 400


def test_sentencepiece_backend_is_a_tokenizer(trained, tmp_path):
    tok = load_tokenizer(trained)
    assert isinstance(tok, SentencePieceTokenizer) and isinstance(tok, Tokenizer)
    assert tok.special_tokens == {"<unk>": 0, "<s>": 1, "</s>": 2}
    assert (tok.pad_id, tok.declared_pad_id, tok.unk_id) == (0, -1, 0)
    d = os.path.dirname(trained)
    assert tok.files == [os.path.abspath(trained), os.path.join(d, "tokenizer_config.json")]
    # A directory resolves to its tokenizer.model; one without is reported under that name.
    shutil.copy(trained, tmp_path / "tokenizer.model")
    assert tokenizer_file_in(str(tmp_path)) == str(tmp_path / "tokenizer.model")
    assert load_tokenizer(str(tmp_path)).encode("Hello world") == tok.encode("Hello world")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert tokenizer_file_in(str(empty)) is None
    with pytest.raises(FileNotFoundError, match="tokenizer.model"):
        load_tokenizer(str(empty))


def test_encode_chunk_offsets_and_dummy_prefix(trained, tmp_path):
    """Pieces of a chunk carry byte offsets; without `legacy`, only the chunk at the start gets "▁"."""
    sp = spm.SentencePieceProcessor(model_file=trained)
    tok = SentencePieceTokenizer(trained)  # train_tokenizer's config: legacy true
    text = "café dose 500 mg"
    pieces = tok.encode_chunk(text, at_start=False)
    assert [i for i, _, _ in pieces] == sp.encode(text)
    assert pieces[0][1] == 0 and pieces[-1][2] == len(text.encode("utf-8"))
    shutil.copy(trained, tmp_path / "tokenizer.model")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"legacy": False}))
    strict = SentencePieceTokenizer(str(tmp_path / "tokenizer.model"))
    assert [i for i, _, _ in strict.encode_chunk(text, at_start=True)] == sp.encode(text)
    no_prefix = [i for i, _, _ in strict.encode_chunk(text, at_start=False)]
    assert no_prefix != sp.encode(text) and sp.decode(no_prefix) == text


def test_one_llama_tokenizer_config(trained, tmp_path):
    """train_tokenizer and the artifact writer write the same LLaMA-2 tokenizer_config.json."""
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(trained, bare / "tokenizer.model")
    copy_tokenizer_files(str(bare / "tokenizer.model"), str(tmp_path / "out"))
    written = json.loads((tmp_path / "out" / "tokenizer_config.json").read_text())
    assert written == json.loads(open(os.path.join(os.path.dirname(trained), "tokenizer_config.json")).read())
    assert written["add_bos_token"] is True and written["legacy"] is True


def test_write_hf_files_loads_in_transformers(trained, tmp_path):
    transformers = pytest.importorskip("transformers")
    tok = SentencePieceTokenizer(trained)
    written = tok.write_hf_files(str(tmp_path))
    assert sorted(os.path.basename(p) for p in written) == ["special_tokens_map.json", "tokenizer.json",
                                                           "tokenizer.model", "tokenizer_config.json"]
    hf = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    for text in CASES:
        assert hf(text, split_special_tokens=True)["input_ids"] == tok.encode(text), repr(text)


def test_tokenizer_package_imports_nothing_else_of_mellama_jax():
    """The tokenizer layer is on the ground floor (above only fs): data, checkpoint, SFT and eval build on it."""
    package = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "mellama_jax", "tokenizer")
    files = sorted(glob.glob(os.path.join(package, "**", "*.py"), recursive=True))
    assert files
    outside = []
    for path in files:
        for node in ast.walk(ast.parse(open(path, encoding="utf-8").read(), path)):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [f"mellama_jax.{a.name}" for a in node.names] if isinstance(node, ast.ImportFrom)
                     and node.level == 0 and node.module == "mellama_jax"
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
            for name in names:
                # The filesystem layer (mellama_jax.fs) is below it: a tokenizer may live in a bucket.
                if name.split(".")[0] == "mellama_jax" and not name.startswith(("mellama_jax.tokenizer",
                                                                                "mellama_jax.fs")):
                    outside.append(f"{os.path.relpath(path, package)}:{node.lineno}: {name}")
            if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", "")) in (
                    "import_module", "__import__"):
                outside.append(f"{os.path.relpath(path, package)}:{node.lineno}: a string-named import")
    assert not outside, outside
