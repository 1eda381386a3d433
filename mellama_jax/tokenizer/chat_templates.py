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
  llama3   Meta's LLaMA-3 header format as its reference `ChatFormat.encode_dialog_prompt` builds it:
           `<|begin_of_text|>` once, then per message (a system message is one more message)
           `<|start_header_id|>{role}<|end_header_id|>\\n\\n{content stripped}<|eot_id|>`; the generation
           prompt is the assistant header. An answer's text and its `<|eot_id|>` are trained.
  model    the Jinja `chat_template` the model artifact itself carries (tokenizer_config.json's
           chat_template or chat_template.jinja), rendered as transformers renders it: a sandboxed
           Jinja environment, `add_generation_prompt`, and `{% generation %}` blocks marking the trained
           text (what transformers' `return_assistant_tokens_mask` reads; a template without them
           trains nothing, as transformers' mask would be all zero, and is refused for SFT).

Tokenization matches Hugging Face's for the same tokenizer files: the rendered text is split at the
special tokens and each text chunk is encoded by the tokenizer (`Tokenizer.encode_chunk`; for
sentencepiece, its dummy "▁" prefix on every chunk when `legacy` is true, LLaMA-2's reference
behaviour, and only on a chunk at the very start when it is false). A token is trained when its text
overlaps a trained span. Templates live with the tokenizer because SFT, evaluation and export all
render them, and a checkpoint carries its template in tokenizer_config.json.
"""
from __future__ import annotations

import contextvars
import dataclasses
import functools
import json
from datetime import datetime
from typing import Any, Callable, Sequence

import jinja2
import jinja2.ext
import jinja2.nodes
import numpy as np
from jinja2.sandbox import ImmutableSandboxedEnvironment

from mellama_jax.tokenizer.base import Tokenizer

__all__ = ["TEMPLATES", "ROLES", "ChatError", "Part", "normalize_messages", "render_parts", "render_text",
           "apply_chat_template", "encode_chat", "hf_chat_template", "template_names", "render_jinja",
           "MODEL_TEMPLATE"]

ROLES = ("system", "user", "assistant")
BOS, EOS = "<bos>", "<eos>"  # part kinds for the special tokens
SPECIAL = "special"          # part kind for any other special token, named by its text
MODEL_TEMPLATE = "model"     # the template the artifact carries (Jinja), not one of ours


class ChatError(ValueError):
    """A conversation a template cannot render (roles out of order, empty turn...)."""


@dataclasses.dataclass(frozen=True)
class Part:
    kind: str            # "text", BOS, EOS or SPECIAL (text: the token's text)
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


def _render_llama3(messages: list[dict], add_generation_prompt: bool) -> list[Part]:
    """Meta's ChatFormat: encode_header + content.strip() + <|eot_id|> per message, header for the answer."""
    def header(role: str) -> list[Part]:
        return [Part(SPECIAL, "<|start_header_id|>"), Part("text", role), Part(SPECIAL, "<|end_header_id|>"),
                Part("text", "\n\n")]

    parts = [Part(BOS)]
    for m in messages:
        trained = m["role"] == "assistant"
        parts += header(m["role"]) + [Part("text", m["content"].strip(), trained),
                                      Part(SPECIAL, "<|eot_id|>", trained)]
    if add_generation_prompt:
        parts += header("assistant")
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
    "llama3": (
        "{{ bos_token }}"
        "{% for m in messages %}"
        "{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\n\n' }}"
        "{% if m['role'] == 'assistant' %}"
        "{% generation %}{{ m['content'] | trim + '<|eot_id|>' }}{% endgeneration %}"
        "{% else %}{{ m['content'] | trim + '<|eot_id|>' }}{% endif %}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"),
}

TEMPLATES: dict[str, Callable[[list[dict], bool], list[Part]]] = {
    "none": _render_none,
    "mellama": _render_mellama,
    "llama2": _render_llama2,
    "llama3": _render_llama3,
}


def template_names() -> tuple[str, ...]:
    """Every name config.data.chat_template / config.chat_template accepts (besides eval's "auto")."""
    return tuple(TEMPLATES) + (MODEL_TEMPLATE,)


def _get(name: str) -> Callable[[list[dict], bool], list[Part]]:
    if name not in TEMPLATES:
        raise ValueError(f"unknown chat template {name!r}; expected one of {sorted(template_names())}")
    return TEMPLATES[name]


# --------------------------------------------------------------------------------------------------
# The model's own Jinja template, rendered as transformers renders it
# --------------------------------------------------------------------------------------------------
class _GenerationTracker(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}`: records the character span the block rendered to, as
    transformers' AssistantTracker does (the spans are the assistant-mask source)."""

    tags = {"generation"}

    def __init__(self, environment: jinja2.Environment):
        super().__init__(environment)
        self._tracking: contextvars.ContextVar = contextvars.ContextVar("generation_tracker", default=None)
        environment.extend(generation_tracking=self._tracking)

    def parse(self, parser: Any) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_generation"), [], [], body).set_lineno(lineno)

    def _generation(self, caller: Callable[[], str]) -> str:
        rendered = caller()
        tracking = self._tracking.get()
        if tracking is not None:
            blocks, spans = tracking
            start = sum(len(b) for b in blocks)
            spans.append((start, start + len(rendered)))
        return rendered


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None,
            sort_keys: bool = False) -> str:
    """transformers' tojson (Jinja's own escapes HTML characters)."""
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


@functools.lru_cache(maxsize=16)
def _compile(jinja: str) -> jinja2.Template:
    """The template in transformers' environment: sandboxed, trim_blocks + lstrip_blocks, loop controls,
    raise_exception / strftime_now / tojson."""
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[_GenerationTracker, jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(jinja)


def render_jinja(jinja: str, messages: Sequence[dict], add_generation_prompt: bool = False,
                 source: str = "chat template", **variables: Any) -> tuple[str, list[tuple[int, int]]]:
    """(rendered text, character spans of its {% generation %} blocks); errors name `source`."""
    try:
        template = _compile(jinja)
    except jinja2.TemplateSyntaxError as err:
        raise ChatError(f"{source}: the chat template does not parse (line {err.lineno}: {err.message})") from err
    blocks: list[str] = []
    spans: list[tuple[int, int]] = []
    token = template.environment.generation_tracking.set((blocks, spans))
    try:
        for block in template.generate(messages=[dict(m) for m in messages],
                                       add_generation_prompt=add_generation_prompt, **variables):
            blocks.append(block)
    except jinja2.TemplateError as err:
        raise ChatError(f"{source}: the chat template fails to render ({type(err).__name__}: {err})") from err
    except Exception as err:  # a template's own TypeError/KeyError etc.: say where it came from
        raise ChatError(f"{source}: the chat template fails to render ({type(err).__name__}: {err})") from err
    finally:
        template.environment.generation_tracking.reset(token)
    return "".join(blocks), spans


def _render_model(jinja: str | None, messages: list[dict], add_generation_prompt: bool, bos_token: str,
                  eos_token: str, source: str, require_trained: bool) -> list[Part]:
    """The carried template as text parts (trained = inside a generation block). Special tokens stay in
    the text: `encode_parts` splits them out as transformers' tokenizer does."""
    if not jinja:
        raise ChatError(f"chat_template={MODEL_TEMPLATE!r}: {source} carries no chat template "
                        "(tokenizer_config.json chat_template or chat_template.jinja)")
    text, spans = render_jinja(jinja, messages, add_generation_prompt, source=source,
                               bos_token=bos_token, eos_token=eos_token)
    if require_trained and not any(e > b for b, e in spans):
        raise ChatError(f"{source}: its chat template has no {{% generation %}} block around the assistant "
                        "text, so nothing would be trained (transformers' assistant mask is empty too); "
                        "add one or use a named template (e.g. llama3)")
    parts, pos = [], 0
    for b, e in spans:
        if b < pos:  # nested/overlapping blocks: merge
            b = pos
        if b > pos:
            parts.append(Part("text", text[pos:b]))
        if e > b:
            parts.append(Part("text", text[b:e], True))
        pos = max(pos, e)
    if pos < len(text):
        parts.append(Part("text", text[pos:]))
    return parts


def render_parts(name: str, messages: Sequence[Any], add_generation_prompt: bool = False,
                 require_answer: bool = False, *, jinja: str | None = None, bos_token: str = "<s>",
                 eos_token: str = "</s>", source: str = "the model") -> list[Part]:
    """The parts of a conversation under template `name`; `model` renders `jinja` (the artifact's
    template, with these bos/eos token texts; `source` names where it came from in errors)."""
    msgs = normalize_messages(messages, require_answer=require_answer)
    if name == MODEL_TEMPLATE:
        return _render_model(jinja, msgs, add_generation_prompt, bos_token, eos_token, source, require_answer)
    return _get(name)(msgs, add_generation_prompt)


def render_text(name: str, messages: Sequence[Any], add_generation_prompt: bool = False,
                bos_token: str = "<s>", eos_token: str = "</s>", *, jinja: str | None = None) -> str:
    """The whole rendered string with special tokens written out (what HF's template renders)."""
    return "".join(bos_token if p.kind == BOS else eos_token if p.kind == EOS else p.text
                   for p in render_parts(name, messages, add_generation_prompt, jinja=jinja,
                                         bos_token=bos_token, eos_token=eos_token))


def apply_chat_template(name: str, messages: Sequence[Any], add_generation_prompt: bool = True, *,
                        jinja: str | None = None, bos_token: str | None = None, eos_token: str = "</s>") -> str:
    """The prompt text that `Tokenizer.encode` (which adds BOS itself) turns into the trained ids.

    For the single-turn prompts evaluation builds. Special tokens other than BOS/EOS (llama3's headers)
    are written out: a BPE tokenizer matches them whole when it encodes the text. `model` renders
    `jinja`; its leading `bos_token` text is dropped (encode adds BOS). A conversation that needs BOS/EOS
    inside the text (a multi-turn llama2/mellama history) has no such plain-text form: use `encode_chat`.
    """
    parts = render_parts(name, messages, add_generation_prompt, jinja=jinja, bos_token=bos_token or "<s>",
                         eos_token=eos_token, source="the checkpoint")
    if parts and parts[0].kind == BOS:
        parts = parts[1:]
    if any(p.kind in (BOS, EOS) for p in parts):
        raise ChatError(f"chat template {name!r}: this conversation has special tokens inside the text; "
                        "use mellama_jax.tokenizer.chat_templates.encode_chat for its token ids")
    text = "".join(p.text for p in parts)
    if name == MODEL_TEMPLATE and bos_token and text.startswith(bos_token):
        text = text[len(bos_token):]
    return text


def hf_chat_template(name: str, tokenizer: Any = None) -> str | None:
    """The Jinja chat template for tokenizer_config.json["chat_template"].

    `model`: the template the tokenizer's directory carries (None without a tokenizer: the artifact's
    own template travels on unchanged).
    """
    if name == MODEL_TEMPLATE:
        return getattr(tokenizer, "chat_template", None) if tokenizer is not None else None
    _get(name)
    return _JINJA[name]


def template_name_for_jinja(jinja: str | None) -> str:
    """The name of our template whose Jinja text is `jinja` ("none" for no template, `model` for a
    carried template that is none of ours: it is then rendered as Jinja).

    Checkpoints carry the template as Jinja text (what transformers reads); evaluation renders by name,
    so a checkpoint written by our SFT maps back to the exact template it was trained with.
    """
    if not jinja:
        return "none"
    for name in TEMPLATES:
        if _JINJA.get(name, "").strip() == jinja.strip():
            return name
    return MODEL_TEMPLATE


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

    special = dict(getattr(tokenizer, "special_tokens", {}) or {})
    for p in _split_special(parts, special):
        if p.kind == "text":
            if p.text:
                chunk.append(p)
            continue
        flush(first=not ids)
        if p.kind == SPECIAL:
            if p.text not in special:
                raise ChatError(f"{tokenizer.model_path}: the chat template writes {p.text!r}, which is not a special "
                                "token of this tokenizer (llama3 needs LLaMA-3's header tokens)")
            ids.append(special[p.text])
        else:
            i = tokenizer.bos_id if p.kind == BOS else tokenizer.eos_id
            if i < 0:
                raise ChatError(f"{tokenizer.model_path}: the chat template needs a {'BOS' if p.kind == BOS else 'EOS'} "
                                "token and this tokenizer defines none")
            ids.append(i)
        flags.append(p.trained)
    flush(first=not ids)
    return np.asarray(ids, np.int32), np.asarray(flags, bool)


def _split_special(parts: Sequence[Part], special: dict[str, int]) -> list[Part]:
    """Text parts cut at the special tokens they contain (longest first), as HF's tokenizer splits a
    rendered chat before encoding; each piece keeps its part's trained flag."""
    if not special:
        return list(parts)
    names = sorted(special, key=len, reverse=True)
    out: list[Part] = []
    for p in parts:
        if p.kind != "text" or not any(n in p.text for n in names):
            out.append(p)
            continue
        text, start, i = p.text, 0, 0
        while i < len(text):
            hit = next((n for n in names if text.startswith(n, i)), None)
            if hit is None:
                i += 1
                continue
            if i > start:
                out.append(Part("text", text[start:i], p.trained))
            out.append(Part(SPECIAL, hit, p.trained))
            i += len(hit)
            start = i
        if start < len(text):
            out.append(Part("text", text[start:], p.trained))
    return out


def _token_text(tokenizer: Tokenizer, i: int) -> str:
    return tokenizer.id_to_piece(i) if i >= 0 else ""


def encode_chat(tokenizer: Tokenizer, name: str, messages: Sequence[Any], add_generation_prompt: bool = False,
                require_answer: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Token ids and trained flags of a conversation under template `name` (see module docstring);
    `model` renders the template the tokenizer's directory carries."""
    parts = render_parts(name, messages, add_generation_prompt, require_answer,
                         jinja=getattr(tokenizer, "chat_template", None),
                         bos_token=_token_text(tokenizer, tokenizer.bos_id),
                         eos_token=_token_text(tokenizer, tokenizer.eos_id),
                         source=getattr(tokenizer, "model_path", "the tokenizer"))
    return encode_parts(tokenizer, parts)
