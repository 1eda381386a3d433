"""Prompt sets: the instruction text of every task, kept as data (mellama_jax/eval/prompt_sets/<name>.json).

A prompt set maps task -> {template, demo?, answer, choices?, transforms?, source?}:
- `template`: the whole prompt, str.format placeholders naming the example's input fields
  (Example.inputs: {question}, {options}, {text}, ...) and optionally {examples}, where few-shot
  demonstrations go (each written with `demo`, whose {target} is the demonstration's answer). A
  template without {examples} gets its demonstrations before it, each one the template filled
  with the demonstration followed by its answer and a blank line.
- `answer`: "text" (choice text is the answer) or "letter" (option letters are the choices and the
  gold, as Me-LLaMA's MedQA/MedMCQA evaluation sets do).
- `choices`: the answer choices in the set's order (Me-LLaMA's parse takes the first choice found,
  so order is part of the protocol); every gold label of the file must be among them.
- `transforms`: field -> a named transformation applied before formatting (e.g. Me-LLaMA appends "?"
  to MedQA questions that end with neither "?" nor ".").
A set may name a `fallback` set for tasks it has no prompt for; results.json records which set
and the exact template text each task used.

Two sets ship: `mellama-release` (Me-LLaMA's released instructions, byte for byte; the default for
the generate protocol) and `mellama-v1` (this project's first wording; the default for loglik,
because it has the HoC per-label yes/no question the release lacks).
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import string
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable, Mapping, Sequence

from mellama_jax.eval.tasks.common import Example

__all__ = ["PromptSet", "Template", "PROMPT_SET_DIR", "DEFAULT_SET", "load_prompt_set", "available_sets",
           "get_template", "render", "render_yesno", "answer_view", "release_fields", "default_set"]

PROMPT_SET_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "prompt_sets")
DEFAULT_SET = {"generate": "mellama-release", "loglik": "mellama-v1"}


def _end_with_question_mark(s: str) -> str:
    # Me-LLaMA's MedQA/MedMCQA fetch_data: question += '?' unless it ends with '?' or '.'.
    return s if s.endswith("?") or s.endswith(".") else s + "?"


TRANSFORMS: dict[str, Callable[[str], str]] = {"end_with_question_mark": _end_with_question_mark}


@dataclass(frozen=True)
class Template:
    """One task's prompt within a set."""

    set_name: str
    task: str
    template: str
    demo: str = ""
    answer: str = "text"
    choices: tuple[str, ...] = ()
    transforms: Mapping[str, str] = dataclasses.field(default_factory=dict)
    source: str = ""

    @property
    def id(self) -> str:
        return f"{self.set_name}/{self.task}"

    def full_text(self) -> str:
        """The template with its placeholders, as recorded in results.json."""
        return self.template

    def fields(self) -> list[str]:
        return [f for _, f, _, _ in string.Formatter().parse(self.template) if f]


@dataclass(frozen=True)
class PromptSet:
    name: str
    description: str
    tasks: Mapping[str, Template]
    fallback: str = ""
    path: str = ""

    def get(self, task: str) -> Template:
        if task in self.tasks:
            return self.tasks[task]
        if self.fallback:
            return load_prompt_set(self.fallback).get(task)
        raise ValueError(f"prompt set {self.name!r} ({self.path}) has no prompt for task {task!r} and no "
                         f"fallback; it covers {sorted(self.tasks)}")


def available_sets() -> list[str]:
    return sorted(f[:-5] for f in os.listdir(PROMPT_SET_DIR) if f.endswith(".json"))


def default_set(protocol: str) -> str:
    return DEFAULT_SET.get(protocol, DEFAULT_SET["generate"])


@lru_cache(maxsize=None)
def load_prompt_set(name_or_path: str) -> PromptSet:
    """A prompt set by name (a file in prompt_sets/) or by path to a JSON file of the same shape."""
    path = name_or_path if name_or_path.endswith(".json") else os.path.join(PROMPT_SET_DIR, f"{name_or_path}.json")
    if not os.path.isfile(path):
        raise ValueError(f"config.prompt_set={name_or_path!r}: no such prompt set (known: {available_sets()}, "
                         "or a path to a .json prompt set)")
    with open(path, encoding="utf-8") as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None
    name = data.get("name") or os.path.basename(path)[:-5]
    tasks = {}
    for task, t in (data.get("tasks") or {}).items():
        if "template" not in t:
            raise ValueError(f"{path}: task {task!r} has no 'template'")
        if t.get("answer", "text") not in ("text", "letter"):
            raise ValueError(f"{path}: task {task!r}: answer must be 'text' or 'letter'")
        for field_name, tr in (t.get("transforms") or {}).items():
            if tr not in TRANSFORMS:
                raise ValueError(f"{path}: task {task!r}: unknown transform {tr!r} (known: {sorted(TRANSFORMS)})")
        tasks[task] = Template(name, task, t["template"], t.get("demo", ""), t.get("answer", "text"),
                               tuple(t.get("choices") or ()), dict(t.get("transforms") or {}), t.get("source", ""))
    return PromptSet(name, data.get("description", ""), tasks, data.get("fallback", ""), path)


def get_template(task: str, prompt_set: str = "mellama-v1") -> Template:
    return load_prompt_set(prompt_set).get(task)


def _fields(t: Template, example: Example, **extra) -> dict[str, Any]:
    fields = dict(example.inputs)
    fields.setdefault("choices", ", ".join(example.choices))
    fields.update(extra)
    for name, tr in t.transforms.items():
        if name in fields:
            fields[name] = TRANSFORMS[tr](str(fields[name]))
    return fields


def _fill(t: Template, fields: Mapping[str, Any], examples: str = "") -> str:
    try:
        return t.template.format(examples=examples, **fields)
    except KeyError as e:
        raise ValueError(f"prompt {t.id}: the example has no field {e.args[0]!r} (has {sorted(fields)})") from None


def _render(t: Template, example: Example, demos: Sequence[Example], target_of: Callable[[Example], str],
            **extra) -> str:
    fields = _fields(t, example, **extra)
    if "{examples}" in t.template:
        demo = t.demo or "{target}\n"
        examples = "".join(demo.format(target=target_of(d), **_fields(t, d, **extra)) for d in demos)
        return _fill(t, fields, examples)
    prefix = "".join(_fill(t, _fields(t, d, **extra)) + target_of(d) + "\n\n" for d in demos)
    return prefix + _fill(t, fields)


def render(t: Template, example: Example, demos: Sequence[Example] = ()) -> str:
    """The prompt for `example`; `demos` (few-shot) are written with their target answers."""
    return _render(t, example, demos, lambda d: d.target_text)


def render_yesno(t: Template, example: Example, label: str, demos: Sequence[Example] = ()) -> str:
    """The per-label prompt asking whether `example` has `label` (multi-label log-likelihood protocol).
    Demonstrations are asked about the same label and answered yes/no from their references."""
    return _render(t, example, demos, lambda d: "yes" if label in d.reference else "no", label=label)


def answer_view(t: Template, examples: Sequence[Example], path: str = "") -> list[Example]:
    """The examples as this prompt scores them: option letters as choices and gold ("letter"), and
    the set's choice order. Raises when a gold label is not among the set's choices."""
    out = []
    for ex in examples:
        if t.answer == "letter":
            letters = tuple(ex.meta.get("option_letters") or ())
            if not letters or len(letters) != len(ex.choices):
                raise ValueError(f"prompt {t.id} scores option letters, but task {t.task!r} examples carry none")
            gold = letters[ex.choices.index(ex.reference)]
            ex = dataclasses.replace(ex, choices=letters, reference=gold, target_text=gold,
                                     meta={**ex.meta, "option_texts": list(ex.choices)})
        if t.choices:
            golds = ex.reference if isinstance(ex.reference, list) else [ex.reference]
            unknown = [g for g in golds if g not in t.choices]
            if unknown:
                raise ValueError(f"{path or t.task}: example {ex.id}: gold {unknown} is not among prompt "
                                 f"{t.id}'s choices {list(t.choices)}")
            ex = dataclasses.replace(ex, choices=t.choices)
        out.append(ex)
    return out


def release_fields(t: Template, query: str) -> dict[str, str] | None:
    """Recover the input fields from a `query` that this template produced (Me-LLaMA's evaluation
    sets carry only the filled prompt): the template's literal text must match exactly."""
    parts, names = [], []
    for literal, name, _, _ in string.Formatter().parse(t.template):
        parts.append(re.escape(literal))
        if name and name != "examples":
            if name in names:
                parts.append(f"(?P={name})")
            else:
                names.append(name)
                parts.append(f"(?P<{name}>.*?)")
    m = re.fullmatch("".join(parts), query, flags=re.S)
    return None if m is None else m.groupdict()
