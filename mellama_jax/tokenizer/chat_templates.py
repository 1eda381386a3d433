"""Chat templates: ONE table used by SFT (token ids + loss masks), evaluation and export.

A template renders a conversation (messages with role system / user / assistant) into parts: text
(trained or not) and the special tokens BOS / EOS. From the parts come
  * `encode_chat`: the token ids and a per-token "trained" flag (every assistant turn, with the
    template text that closes it and its EOS, is trained; everything else is prompt);
  * `apply_chat_template`: the prompt text for evaluation (BOS left to the tokenizer);
  * `hf_chat_template`: the same template in Jinja, written into an exported tokenizer_config.json so
    that `transformers`' `tokenizer.apply_chat_template` gives exactly the ids we trained on (tested).

Templates:
  none     the raw prompt, the answer right after it (Me-LLaMA's `no_prompt`).
  mellama  Me-LLaMA's released chat wrapper `Human: \\n{prompt}\\n\\nAssistant: \\n` (src/model_prompt.py);
           turns after the first repeat it; an optional system message comes first, then a blank line.
  llama2   Meta's LLaMA-2 chat format as its reference `chat_completion` builds it:
           `<s>[INST] <<SYS>>\\n{system}\\n<</SYS>>\\n\\n{user} [/INST] {answer} </s>` per turn, contents
           stripped, BOS and EOS around every turn.

Tokenization matches Hugging Face's for the same tokenizer files: the rendered text is split at the
special tokens and each text chunk is encoded by the tokenizer (`Tokenizer.encode_chunk`; for
sentencepiece, its dummy "▁" prefix on every chunk when `legacy` is true, LLaMA-2's reference
behaviour, and only on a chunk at the very start when it is false). A token is trained when its text
overlaps a trained span. Templates live with the tokenizer because SFT, evaluation and export all
render them, and a checkpoint carries its template in tokenizer_config.json.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import numpy as np

from mellama_jax.tokenizer.base import Tokenizer

__all__ = ["TEMPLATES", "ROLES", "ChatError", "Part", "normalize_messages", "render_parts", "render_text",
           "apply_chat_template", "encode_chat", "hf_chat_template", "template_names"]

ROLES = ("system", "user", "assistant")
BOS, EOS = "<bos>", "<eos>"  # part kinds for the special tokens


class ChatError(ValueError):
    """A conversation a template cannot render (roles out of order, empty turn...)."""


@dataclasses.dataclass(frozen=True)
class Part:
    kind: str            # "text", BOS or EOS
    text: str = ""
    trained: bool = False


Message = dict  # {"role": ..., "content": ...}


def normalize_messages(messages: Sequence[Any], *, require_answer: bool = True) -> list[dict]:
    """Validated [{"role", "content"}]: optional system first, then user/assistant alternating from user.

    With `require_answer` the last turn must be the assistant's (a training example)."""
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise ChatError(f"message {i}: expected an object with 'role' and 'content'")
        role, content = m["role"], m["content"]
        if role not in ROLES:
            raise ChatError(f"message {i}: unknown role {role!r} (expected one of {ROLES})")
        if not isinstance(content, str):
            raise ChatError(f"message {i}: content must be a string, got {type(content).__name__}")
        out.append({"role": role, "content": content})
    body = out[1:] if out and out[0]["role"] == "system" else out
    if not body:
        raise ChatError("no user message")
    for i, m in enumerate(body):
        want = "user" if i % 2 == 0 else "assistant"
        if m["role"] != want:
            raise ChatError(f"turn {i}: expected a {want} message, got {m['role']} (roles must alternate "
                            "user/assistant after an optional first system message)")
    if require_answer and body[-1]["role"] != "assistant":
        raise ChatError("the last message must be the assistant's answer")
    for m in body:
        if m["role"] == "assistant" and not m["content"].strip():
            raise ChatError("empty assistant message")
    if not any(m["content"].strip() for m in body if m["role"] == "user"):
        raise ChatError("empty user message")
    return out


def _split_system(messages: list[dict]) -> tuple[str | None, list[dict]]:
    if messages and messages[0]["role"] == "system":
        return messages[0]["content"], messages[1:]
    return None, messages


def _render_plain(user_format: str) -> Callable[[list[dict], bool], list[Part]]:
    """A single-BOS template: system text, then each user turn through `user_format`, each answer + EOS."""
    def render(messages: list[dict], add_generation_prompt: bool) -> list[Part]:
        system, body = _split_system(messages)
        parts = [Part(BOS)]
        if system:
            parts.append(Part("text", system + "\n\n"))
        for m in body:
            if m["role"] == "user":
                parts.append(Part("text", user_format.format(m["content"])))
            else:
                parts += [Part("text", m["content"], True), Part(EOS, trained=True)]
        return parts
    return render


_render_none = _render_plain("{}")
# Me-LLaMA's released wrapper (src/model_prompt.py: mellama_prompt).
_render_mellama = _render_plain("Human: \n{}\n\nAssistant: \n")


B_INST, E_INST, B_SYS, E_SYS = "[INST]", "[/INST]", "<<SYS>>\n", "\n<</SYS>>\n\n"


def _render_llama2(messages: list[dict], add_generation_prompt: bool) -> list[Part]:
    system, body = _split_system(messages)
    parts: list[Part] = []
    for i, m in enumerate(body):
        if m["role"] == "user":
            content = (B_SYS + system + E_SYS + m["content"]) if (i == 0 and system is not None) else m["content"]
            parts += [Part(BOS), Part("text", f"{B_INST} {content.strip()} {E_INST}")]
        else:
            parts += [Part("text", f" {m['content'].strip()} ", True), Part(EOS, trained=True)]
    return parts


# Jinja twins of the renderers above (transformers passes messages, bos_token, eos_token,
# add_generation_prompt). Kept beside the Python so a change to one is a visible change to the other;
# tests render both through transformers and compare ids.
_JINJA = {
    "none": (
        "{{ bos_token }}"
        "{% for m in messages %}"
        "{% if m['role'] == 'system' %}{{ m['content'] + '\n\n' }}"
        "{% elif m['role'] == 'user' %}{{ m['content'] }}"
        "{% else %}{% generation %}{{ m['content'] + eos_token }}{% endgeneration %}{% endif %}"
        "{% endfor %}"),
    "mellama": (
        "{{ bos_token }}"
        "{% for m in messages %}"
        "{% if m['role'] == 'system' %}{{ m['content'] + '\n\n' }}"
        "{% elif m['role'] == 'user' %}{{ 'Human: \n' + m['content'] + '\n\nAssistant: \n' }}"
        "{% else %}{% generation %}{{ m['content'] + eos_token }}{% endgeneration %}{% endif %}"
        "{% endfor %}"),
    "llama2": (
        "{% if messages[0]['role'] == 'system' %}"
        "{% set system = '<<SYS>>\n' + messages[0]['content'] + '\n<</SYS>>\n\n' %}"
        "{% set body = messages[1:] %}"
        "{% else %}{% set system = '' %}{% set body = messages %}{% endif %}"
        "{% for m in body %}"
        "{% if m['role'] == 'user' %}"
        "{% set content = (system + m['content']) if loop.first else m['content'] %}"
        "{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
        "{% else %}{% generation %}{{ ' ' + m['content'].strip() + ' ' + eos_token }}{% endgeneration %}"
        "{% endif %}"
        "{% endfor %}"),
}

TEMPLATES: dict[str, Callable[[list[dict], bool], list[Part]]] = {
    "none": _render_none,
    "mellama": _render_mellama,
    "llama2": _render_llama2,
}


def template_names() -> tuple[str, ...]:
    return tuple(TEMPLATES)


def _get(name: str) -> Callable[[list[dict], bool], list[Part]]:
    if name not in TEMPLATES:
        raise ValueError(f"unknown chat template {name!r}; expected one of {sorted(TEMPLATES)}")
    return TEMPLATES[name]


def render_parts(name: str, messages: Sequence[Any], add_generation_prompt: bool = False,
                 require_answer: bool = False) -> list[Part]:
    msgs = normalize_messages(messages, require_answer=require_answer)
    return _get(name)(msgs, add_generation_prompt)


def render_text(name: str, messages: Sequence[Any], add_generation_prompt: bool = False,
                bos_token: str = "<s>", eos_token: str = "</s>") -> str:
    """The whole rendered string with special tokens written out (what HF's template renders)."""
    return "".join(bos_token if p.kind == BOS else eos_token if p.kind == EOS else p.text
                   for p in render_parts(name, messages, add_generation_prompt))


def apply_chat_template(name: str, messages: Sequence[Any], add_generation_prompt: bool = True) -> str:
    """The prompt text that `Tokenizer.encode` (which adds BOS itself) turns into the trained ids.

    For the single-turn prompts evaluation builds. A conversation that needs a special token inside
    the text (a multi-turn llama2/mellama history) has no such plain-text form: use `encode_chat`.
    """
    parts = render_parts(name, messages, add_generation_prompt)
    if parts and parts[0].kind == BOS:
        parts = parts[1:]
    if any(p.kind != "text" for p in parts):
        raise ChatError(f"chat template {name!r}: this conversation has special tokens inside the text; "
                        "use mellama_jax.tokenizer.chat_templates.encode_chat for its token ids")
    return "".join(p.text for p in parts)


def hf_chat_template(name: str) -> str:
    """The Jinja chat template for tokenizer_config.json["chat_template"]."""
    _get(name)
    return _JINJA[name]


def template_name_for_jinja(jinja: str | None) -> str | None:
    """The name of our template whose Jinja text is `jinja` ("none" for no template; None if unknown).

    Checkpoints carry the template as Jinja text (what transformers reads); evaluation renders by name,
    so a checkpoint written by our SFT maps back to the exact template it was trained with.
    """
    if not jinja:
        return "none"
    for name in TEMPLATES:
        if _JINJA.get(name, "").strip() == jinja.strip():
            return name
    return None


# --------------------------------------------------------------------------------------------------
# Tokenization with trained-token flags
# --------------------------------------------------------------------------------------------------
def _encode_chunk(tokenizer: Tokenizer, text: str, at_start: bool,
                  spans: list[tuple[int, int]]) -> tuple[list[int], list[bool]]:
    """Ids of one text chunk and whether each overlaps a trained byte span of the chunk."""
    ids, flags = [], []
    for i, b, e in tokenizer.encode_chunk(text, at_start):
        ids.append(i)
        if e == b:  # a byte-fallback piece that starts a multi-byte char: attach to that char
            e = b + 1
        flags.append(any(b < s1 and e > s0 for s0, s1 in spans))
    return ids, flags


def encode_parts(tokenizer: Tokenizer, parts: Sequence[Part]) -> tuple[np.ndarray, np.ndarray]:
    """(ids int32 [n], trained bool [n]) of rendered parts with `tokenizer`."""
    ids: list[int] = []
    flags: list[bool] = []
    chunk: list[Part] = []

    def flush(first: bool) -> None:
        if not chunk:
            return
        raw, spans, pos = b"", [], 0
        for p in chunk:
            data = p.text.encode("utf-8")
            if p.trained:
                spans.append((pos, pos + len(data)))
            raw += data
            pos += len(data)
        i, f = _encode_chunk(tokenizer, raw.decode("utf-8"), first, spans)
        ids.extend(i)
        flags.extend(f)
        chunk.clear()

    for p in parts:
        if p.kind == "text":
            if p.text:
                chunk.append(p)
            continue
        flush(first=not ids)
        ids.append(tokenizer.bos_id if p.kind == BOS else tokenizer.eos_id)
        flags.append(p.trained)
    flush(first=not ids)
    return np.asarray(ids, np.int32), np.asarray(flags, bool)


def encode_chat(tokenizer: Tokenizer, name: str, messages: Sequence[Any], add_generation_prompt: bool = False,
                require_answer: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Token ids and trained flags of a conversation under template `name` (see module docstring)."""
    return encode_parts(tokenizer, render_parts(name, messages, add_generation_prompt, require_answer))
