"""Sampled generation protocols: per-example sampling keys, self-consistency votes and the
chain-of-thought instruction with its answer-extraction rule. Pure functions, no model.

Keys: example i's sample s of task T under seed S is drawn with
    fold_in(fold_in(fold_in(key(S), crc32(T)), i), s)
(and, inside the decode loop, fold_in(that, step)), so a sample depends only on (seed, task, example
index, sample index): not on the batch size, the bucket the prompt fell into or the other rows.
"""
from __future__ import annotations

import re
import zlib
from typing import Any, Hashable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["sample_keys", "majority_vote", "add_cot", "extract_answer", "KEY_RULE", "VOTE_RULE", "COT_INSTRUCTION",
           "COT_PLACEMENT", "EXTRACTION_RULE"]

KEY_RULE = ("jax.random.fold_in(fold_in(fold_in(key(decoding.seed), crc32(task)), example index), sample index), "
            "then fold_in(step) per decode step: independent of batch size and bucketing")
VOTE_RULE = ("majority over the samples' parsed answers (unparsed samples do not vote); ties go to the tied answer "
             "whose first vote came earliest (lowest sample index); no parsed sample: missing")
COT_INSTRUCTION = ("Think step by step, then give your final answer on its own line in the form 'Answer: X', "
                   "where X is one of the options.")
COT_PLACEMENT = "its own line, inserted before the prompt's last non-empty line (the answer cue)"
EXTRACTION_RULE = ("the text after the last 'Answer:' (case-insensitive) up to the end of its line, parsed by the "
                   "task's parse rule; if there is none or it does not parse, the parse rule on the whole "
                   "generation")
_ANSWER = re.compile(r"answer\s*:[ \t]*([^\n]*)", re.IGNORECASE)


@jax.jit
def _keys(seed: jax.Array, task_hash: jax.Array, examples: jax.Array, samples: jax.Array) -> jax.Array:
    base = jax.random.fold_in(jax.random.key(seed), task_hash)
    per_example = jax.vmap(lambda i: jax.random.fold_in(base, i))(examples)
    keys = jax.vmap(lambda k: jax.vmap(lambda s: jax.random.fold_in(k, s))(samples))(per_example)
    return jax.random.key_data(keys)


def sample_keys(seed: int, task: str, num_examples: int, samples: int) -> np.ndarray:
    """uint32 key data [num_examples * samples, key words], example-major (row i * samples + s)."""
    data = _keys(jnp.uint32(seed), jnp.uint32(zlib.crc32(task.encode())), jnp.arange(num_examples, dtype=jnp.uint32),
                 jnp.arange(samples, dtype=jnp.uint32))
    data = np.asarray(data, np.uint32)
    return data.reshape((num_examples * samples,) + data.shape[2:])


def majority_vote(answers: Sequence[Hashable | None]) -> tuple[Any, list[list]]:
    """(voted answer, [[answer, votes], ...] in first-vote order) under VOTE_RULE."""
    counts: dict[Any, int] = {}
    for a in answers:
        if a is not None:
            counts[a] = counts.get(a, 0) + 1
    if not counts:
        return None, []
    best = max(counts.values())
    winner = next(a for a in counts if counts[a] == best)  # dicts keep first-vote order
    return winner, [[a, n] for a, n in counts.items()]


def add_cot(prompt: str) -> str:
    """The prompt with COT_INSTRUCTION on its own line before its last non-empty line."""
    lines = prompt.split("\n")
    last = max((i for i, line in enumerate(lines) if line.strip()), default=len(lines))
    return "\n".join(lines[:last] + [COT_INSTRUCTION] + lines[last:])


def extract_answer(generation: str) -> str | None:
    """The text after the last 'Answer:' up to the end of its line (stripped), or None."""
    matches = _ANSWER.findall(generation)
    if not matches:
        return None
    return matches[-1].strip() or None
