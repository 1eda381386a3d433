"""Reading Me-LLaMA's own evaluation sets (Hugging Face `clinicalnlplab/<task>_test`: id, query,
answer[, choices, gold]). Their `query` is the released prompt already filled in; the input fields
are recovered by matching it against the released template (prompt set `mellama-release`), so the
same example can be prompted with any prompt set and re-rendering the release set gives the query
back byte for byte."""
from __future__ import annotations

from typing import Any, Mapping

from mellama_jax.eval.tasks.common import FormatError

__all__ = ["is_release_record", "release_inputs", "release_label"]


def is_release_record(rec: Mapping) -> bool:
    return isinstance(rec.get("query"), str) and "answer" in rec


def release_inputs(task: str, rec: Mapping, path: str, where) -> dict[str, str]:
    from mellama_jax.eval.prompts import load_prompt_set, release_fields

    t = load_prompt_set("mellama-release").tasks.get(task)
    if t is None:
        raise FormatError(path, where, f"a query/answer record, but Me-LLaMA released no {task} prompt to read "
                                       "its query with", "unknown_query_format")
    fields = release_fields(t, rec["query"])
    if fields is None:
        raise FormatError(path, where, f"query does not match Me-LLaMA's released {task} prompt "
                                       f"(prompt set mellama-release)", "query_mismatch")
    return fields


def release_label(rec: Mapping, path: str, where) -> Any:
    """The gold answer: choices[gold] when both are there (they must agree with answer), else answer."""
    choices, gold = rec.get("choices"), rec.get("gold")
    if isinstance(choices, list) and isinstance(gold, int) and not isinstance(gold, bool):
        if not 0 <= gold < len(choices):
            raise FormatError(path, where, f"gold {gold} outside choices (0..{len(choices) - 1})", "bad_label")
        return choices[gold]
    return rec["answer"]
