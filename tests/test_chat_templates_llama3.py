"""Chat templates `llama3` (Meta's header format) and `model` (the Jinja the artifact carries): token ids and
SFT loss masks equal transformers' apply_chat_template(..., return_assistant_tokens_mask=True)."""
import json
import os
import shutil
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bpe_fixtures import GENERATION_TEMPLATE, META_LLAMA3_TEMPLATE, train_llama3_tokenizer  # noqa: E402

from mellama_jax.tokenizer import chat_templates as chat  # noqa: E402
from mellama_jax.tokenizer import load_tokenizer  # noqa: E402

CONVERSATIONS = [
    [{"role": "user", "content": "What is the first-line drug for hypertension?"},
     {"role": "assistant", "content": "A thiazide diuretic, e.g. chlorthalidone 12.5 mg."}],
    [{"role": "system", "content": "  You are a careful clinician.  "},
     {"role": "user", "content": "BP 142/91 — next step? 🩺"},
     {"role": "assistant", "content": " Start a thiazide; recheck in 4 weeks.\n"}],
    [{"role": "user", "content": "Hola, ¿fiebre 38.5 °C?"}, {"role": "assistant", "content": "Paracetamol."},
     {"role": "user", "content": "Dose of   <|eot_id|> x?\n\n"}, {"role": "assistant", "content": "12.5 mg   daily"}],
]


@pytest.fixture(scope="module")
def gen_dir(tmp_path_factory):
    """A tokenizer whose carried template has {% generation %} blocks."""
    d = str(tmp_path_factory.mktemp("gen"))
    train_llama3_tokenizer(d, chat_template=GENERATION_TEMPLATE)
    return d


def _hf(d):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(d)


@pytest.mark.parametrize("name", ["llama3", "model"])
def test_ids_and_masks_equal_transformers(name, gen_dir):
    hf, tok = _hf(gen_dir), load_tokenizer(gen_dir)
    template = chat.hf_chat_template("llama3") if name == "llama3" else None  # None: the carried one
    for conv in CONVERSATIONS:
        out = hf.apply_chat_template(conv, chat_template=template, tokenize=True, return_dict=True,
                                     return_assistant_tokens_mask=True)
        ids, trained = chat.encode_chat(tok, name, conv)
        assert ids.tolist() == list(out["input_ids"])
        assert trained.astype(int).tolist() == list(out["assistant_masks"])
        assert trained.any() and not trained[:3].any()


def test_llama3_is_metas_chat_format(gen_dir):
    """Meta's released template gives the same ids, with and without the generation prompt; the
    structure is Meta's ChatFormat (one BOS, header / content / <|eot_id|> per message)."""
    hf, tok = _hf(gen_dir), load_tokenizer(gen_dir)
    sp = tok.special_tokens
    for conv in CONVERSATIONS:
        for prompt in (False, True):
            c = conv[:-1] if prompt else conv
            ref = hf.apply_chat_template(c, chat_template=META_LLAMA3_TEMPLATE, tokenize=True, return_dict=True,
                                         add_generation_prompt=prompt)["input_ids"]
            ids, _ = chat.encode_chat(tok, "llama3", c, add_generation_prompt=prompt, require_answer=not prompt)
            assert ids.tolist() == list(ref)
    ids, trained = chat.encode_chat(tok, "llama3", CONVERSATIONS[1])
    ids = ids.tolist()
    assert ids[0] == sp["<|begin_of_text|>"] and ids.count(sp["<|begin_of_text|>"]) == 1
    assert ids.count(sp["<|start_header_id|>"]) == 3 and ids.count(sp["<|eot_id|>"]) == 3
    assert ids[-1] == sp["<|eot_id|>"] and trained[-1]  # the answer's <|eot_id|> is trained
    header_end = len(ids) - 1 - ids[::-1].index(sp["<|end_header_id|>"])
    assert not trained[:header_end + 2].any()  # "\n\n" after the header is prompt
    assert tok.decode(ids[header_end + 1:-1]).strip() == "Start a thiazide; recheck in 4 weeks."


def test_eval_prompt_text_encodes_to_the_chat_ids(gen_dir):
    """apply_chat_template's text (specials written out) + encode's BOS = the generation-prompt ids."""
    tok = load_tokenizer(gen_dir)
    msgs = [{"role": "user", "content": "Is 38.5 °C a fever?"}]
    for name in ("llama3", "model"):
        text = chat.apply_chat_template(name, msgs, True, jinja=tok.chat_template,
                                        bos_token=tok.id_to_piece(tok.bos_id))
        ids, _ = chat.encode_chat(tok, name, msgs, add_generation_prompt=True, require_answer=False)
        assert tok.encode(text) == ids.tolist()


def test_auto_names_a_foreign_template_model():
    assert chat.template_name_for_jinja(META_LLAMA3_TEMPLATE) == "model"
    assert chat.template_name_for_jinja(chat.hf_chat_template("llama3")) == "llama3"
    assert chat.template_name_for_jinja(None) == "none"
    assert {"llama3", "model"} <= set(chat.template_names())


def test_config_validation_accepts_the_new_names():
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from configs.sft import get_config

    from mellama_jax.config_validation import ConfigError, validate_config
    for name in ("llama3", "model"):
        c = get_config("tiny")
        c.data.chat_template = name
        validate_config(c)
    c = get_config("tiny")
    c.data.chat_template = "llama4"
    with pytest.raises(ConfigError, match="config.data.chat_template='llama4'.*'llama3', 'model'"):
        validate_config(c)


def test_template_errors_name_the_file(gen_dir, tmp_path):
    d = str(tmp_path / "t")
    shutil.copytree(gen_dir, d)
    conv = CONVERSATIONS[0]
    with open(os.path.join(d, "chat_template.jinja"), "w") as f:
        f.write("{% for m in messages %}{{ m['content'] }")
    tok = load_tokenizer(d)
    with pytest.raises(chat.ChatError, match=rf"{tok.model_path}: the chat template does not parse"):
        chat.encode_chat(tok, "model", conv)
    with open(os.path.join(d, "chat_template.jinja"), "w") as f:
        f.write("{{ raise_exception('only user turns') }}")
    with pytest.raises(chat.ChatError, match=r"fails to render \(TemplateError: only user turns\)"):
        chat.encode_chat(load_tokenizer(d), "model", conv)
    # A template without generation blocks trains nothing: refused for SFT, fine for prompts.
    with open(os.path.join(d, "chat_template.jinja"), "w") as f:
        f.write(META_LLAMA3_TEMPLATE)
    with pytest.raises(chat.ChatError, match=r"no \{% generation %\} block"):
        chat.encode_chat(load_tokenizer(d), "model", conv)
    chat.encode_chat(load_tokenizer(d), "model", conv[:1], add_generation_prompt=True, require_answer=False)
    os.remove(os.path.join(d, "chat_template.jinja"))
    cfg = json.load(open(os.path.join(d, "tokenizer_config.json")))
    cfg.pop("chat_template", None)
    json.dump(cfg, open(os.path.join(d, "tokenizer_config.json"), "w"))
    with pytest.raises(chat.ChatError, match="carries no chat template"):
        chat.encode_chat(load_tokenizer(d), "model", conv)


def test_llama3_needs_the_header_tokens():
    from mellama_jax.data.config import SAMPLES_DIR
    sp = load_tokenizer(os.path.join(SAMPLES_DIR, "tokenizer.model"))
    with pytest.raises(chat.ChatError, match=r"'<\|start_header_id\|>', which is not a special token"):
        chat.encode_chat(sp, "llama3", CONVERSATIONS[0])
