"""The model side of evaluation: load a checkpoint onto a mesh, then batched greedy generation and
batched continuation log-likelihoods, with prompt lengths bucketed so each (batch, length) shape
compiles once.

Prompts longer than the context window are cut from the left (the BOS token is kept) and counted,
so a results.json always says how many examples the model saw only in part. Log-likelihood requests
that share a prompt share its KV cache (one prefill, then short continuations). Results are
gathered across processes when the model is sharded over several hosts.
"""
from __future__ import annotations

import functools
import math
import sys
from dataclasses import dataclass, field
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from mellama_jax.checkpoint.artifact import check_artifact_tokenizer, resolve_artifact
from mellama_jax.tokenizer import load_tokenizer
from mellama_jax.model import decode
from mellama_jax.model.generate import generate
from mellama_jax.model.llama import Llama, param_logical_axes
from mellama_jax.sharding import (DEFAULT_RULES, batch_shards, batch_sharding, logical_to_sharding, make_mesh,
                                  mesh_context)

__all__ = ["Engine", "bucket_length", "small_bucket", "truncate_left", "load_engine"]

MIN_BUCKET = 32


def with_single_token_stops(stop_ids: np.ndarray | None, tokens: Sequence[int]) -> np.ndarray | None:
    """`stop_ids` ([n, L] token sequences, left-padded with -1) plus one single-token row per id in
    `tokens`: the EOS ids after the first (LLaMA-3 Instruct's <|eot_id|>, <|eom_id|>). The decode
    loop checks stop sequences on device, so a row that emits any EOS ends there instead of running
    to max_new_tokens and being cut on the host."""
    if not tokens:
        return stop_ids
    rows = [] if stop_ids is None else [list(r) for r in np.asarray(stop_ids, np.int64)]
    width = max([len(r) for r in rows] + [1])
    rows = [[-1] * (width - len(r)) + r for r in rows] + [[-1] * (width - 1) + [int(t)] for t in tokens]
    return np.asarray(rows, np.int32)


def bucket_length(n: int, cap: int) -> int:
    """Smallest power of two >= n (at least MIN_BUCKET), never above cap."""
    b = MIN_BUCKET
    while b < n:
        b *= 2
    return min(b, cap)


def truncate_left(ids: list[int], max_len: int, bos_id: int | None) -> tuple[list[int], bool]:
    """Keep the last max_len tokens (and a leading BOS); returns (ids, whether anything was cut)."""
    if len(ids) <= max_len:
        return ids, False
    if bos_id is not None and ids and ids[0] == bos_id:
        return [bos_id] + ids[len(ids) - max_len + 1:], True
    return ids[len(ids) - max_len:], True


def _progress(label: str, done: int, total: int) -> None:
    end = "\n" if done >= total else ""
    width = 30
    filled = int(width * done / max(total, 1))
    print(f"\r[{label}] |{'#' * filled}{'.' * (width - filled)}| {done}/{total}", end=end, file=sys.stderr,
          flush=True)


@functools.partial(jax.jit, static_argnames=("config",))
def _target_logprobs(params, tokens, *, config):
    """log p(tokens[:, t+1] | tokens[:, :t+1]) for every t: [b, s-1] float32 (right padding is harmless:
    attention is causal)."""
    logits = Llama(config).apply({"params": params}, tokens)
    logp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
    return jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1)[..., 0]


@functools.partial(jax.jit, static_argnames=("config", "cache_len"))
def _prefill(params, tokens, mask, *, config, cache_len) -> decode.KVCache:
    """KV cache of left-padded prefixes [b, p] (mask 1 = real token) in a cache of cache_len slots:
    the prefill `generate` runs (its logits are unused, so XLA drops the output projection)."""
    return decode.prefill(config, params, tokens, mask, cache_len)[1]


@functools.partial(jax.jit, static_argnames=("config", "cache_index"))
def _continuation_logprobs(params, cache, rows, tokens, positions, *, cache_index, config):
    """log p(tokens[:, t+1] | prefix of row `rows[i]` in `cache`, tokens[:, :t+1]): [b, r-1] float32.
    Each continuation row reads the cached prefix of its group (gathered on device)."""
    logits, _ = decode.forward(config, params, tokens, positions, jnp.ones_like(tokens), cache.take_rows(rows),
                               jnp.int32(cache_index))
    logp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
    return jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1)[..., 0]


def _common_prefix(seqs: Sequence[Sequence[int]]) -> int:
    first = seqs[0]
    n = min(len(s) for s in seqs)
    for s in seqs[1:]:
        i = 0
        while i < n and s[i] == first[i]:
            i += 1
        n = i
    return n


def small_bucket(n: int, cap: int) -> int:
    """Power-of-two length >= n (at least 8) for short continuations, never above cap."""
    b = 8
    while b < n:
        b *= 2
    return min(b, cap)


@dataclass
class Engine:
    """A loaded model + tokenizer (+ optional mesh) that turns prompts into generations or scores."""

    model_config: Any
    params: Any
    tokenizer: Any
    batch_size: int = 8
    mesh: Any = None
    rules: Any = None
    show_progress: bool = True
    stats: dict = field(default_factory=lambda: {"compiled_shapes": set()})

    # --- placement -----------------------------------------------------------------------------
    def _context(self):
        return mesh_context(self.mesh, self.rules if self.mesh is not None else None)

    def _rows(self, n: int) -> int:
        """Batch rows per call: batch_size rounded up to a multiple of the mesh's batch shards."""
        shards = 1
        if self.mesh is not None:
            shards = batch_shards(self.mesh)
        return int(math.ceil(max(self.batch_size, 1) / shards) * shards)

    def _put(self, x: np.ndarray):
        """A host array (the same on every process) as a global array sharded over the batch axes.
        Built from per-device slices, so it works when the mesh spans several processes."""
        if self.mesh is None:
            return jnp.asarray(x)
        sharding = batch_sharding(self.mesh)
        return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])

    @staticmethod
    def _get(x) -> np.ndarray:
        """A global array's full value on this host: all-gathered across processes when this
        process does not hold every shard (never np.asarray of a non-addressable array)."""
        if getattr(x, "is_fully_addressable", True):
            return np.asarray(jax.device_get(x))
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))

    def _shape(self, *key) -> None:
        self.stats["compiled_shapes"].add(tuple(key))
        self.stats.setdefault("task_shapes", set()).add(tuple(key))

    def take_task_shapes(self) -> list[list]:
        """The (kind, rows, lengths...) shapes used since the last call (one task), sorted."""
        shapes = self.stats.pop("task_shapes", set())
        return sorted([list(s) for s in shapes], key=str)

    @property
    def max_len(self) -> int:
        return int(self.model_config.max_position_embeddings)

    # --- generation ----------------------------------------------------------------------------
    def generate(self, prompts: Sequence[list[int]], max_new_tokens: int, label: str = "generate", *,
                 temperature: float = 0.0, top_p: float = 1.0, keys: np.ndarray | None = None,
                 stop_ids: np.ndarray | None = None) -> tuple[list[str], list[list[int]], int]:
        """Continuations of token-id prompts (greedy, or sampled with temperature / top_p); returns
        (texts, token ids, number truncated).

        Prompts are sorted by length and batched into power-of-two length buckets (a few compiled
        shapes per task, listed in results.json); each batch stops as soon as every row has ended (EOS,
        or one of the `stop_ids` token sequences, see model/generate.py). Sampling needs `keys`, one
        uint32 key-data row per prompt ([n, 2], `jax.random.key_data`): a prompt's samples depend on
        its key alone, not on its batch or bucket. stats["decode_steps"] counts the decode steps run.
        """
        cap = self.max_len - max_new_tokens
        if cap < 2:
            raise ValueError(f"max_new_tokens={max_new_tokens} leaves no room for a prompt in "
                             f"max_position_embeddings={self.max_len}")
        bos, eos = self.tokenizer.bos_id, self.tokenizer.eos_id
        stops = list(getattr(self.tokenizer, "eos_ids", None) or [eos])
        pad = 0 if self.model_config.pad_token_id is None else int(self.model_config.pad_token_id)
        cut = [truncate_left(list(p), cap, bos) for p in prompts]
        n_trunc = sum(c for _, c in cut)
        ids = [p for p, _ in cut]
        order = sorted(range(len(ids)), key=lambda i: (len(ids[i]), i))  # group similar lengths
        rows = self._rows(len(ids))
        if temperature > 0 and keys is None:
            raise ValueError("sampling (temperature > 0) needs one key per prompt (keys)")
        if keys is not None:
            keys = np.asarray(keys, np.uint32)
            if keys.shape[0] != len(ids):
                raise ValueError(f"{keys.shape[0]} keys for {len(ids)} prompts")
        stop_ids = with_single_token_stops(stop_ids, [e for e in stops if e != eos])
        out_ids: list[list[int] | None] = [None] * len(ids)
        for start in range(0, len(order), rows):
            chunk = order[start:start + rows]
            length = bucket_length(max(len(ids[i]) for i in chunk), cap)
            tokens = np.full((rows, length), pad, np.int32)
            mask = np.zeros((rows, length), np.int32)
            tokens[:, -1] = bos  # filler rows: one real token so every row is valid
            mask[:, -1] = 1
            for r, i in enumerate(chunk):
                p = ids[i]
                tokens[r, length - len(p):] = p
                mask[r, length - len(p):] = 1
            row_keys = None
            if keys is not None:
                row_keys = np.zeros((rows,) + keys.shape[1:], np.uint32)  # filler rows: key data 0
                row_keys[:len(chunk)] = keys[chunk]
                row_keys = self._put(row_keys)
            active = np.zeros((rows,), bool)
            active[:len(chunk)] = True
            self._shape("generate", rows, length, max_new_tokens)
            with self._context():
                out, steps = generate(self.model_config, self.params, self._put(tokens), max_new_tokens,
                                      temperature=float(temperature), top_p=float(top_p), eos_id=eos,
                                      prompt_mask=self._put(mask), row_keys=row_keys, stop_ids=stop_ids,
                                      active=self._put(active),
                                      return_steps=True)
            self.stats["decode_steps"] = self.stats.get("decode_steps", 0) + int(steps)
            out = self._get(out)[:, length:]
            for r, i in enumerate(chunk):
                new = [int(t) for t in out[r]]
                ends = [new.index(e) for e in stops if e in new]  # any EOS of the list (LLaMA-3: <|eot_id|>...)
                if ends:
                    new = new[:min(ends)]
                out_ids[i] = new
            if self.show_progress:
                _progress(label, min(start + rows, len(order)), len(order))
        texts = [self.tokenizer.decode(t) for t in out_ids]
        return texts, out_ids, n_trunc

    # --- log-likelihood ------------------------------------------------------------------------
    def loglik(self, requests: Sequence[tuple[list[int], list[int]]], label: str = "loglik",
               groups: Sequence[Any] | None = None, share_prefix: bool = True,
               ) -> tuple[list[float], list[bool]]:
        """Sum of log p(continuation | context) for (context ids, continuation ids) pairs.

        With share_prefix (default), requests of one group (`groups[i]`, by default: the same
        context) share their longest common token prefix: its KV cache is computed once and each
        request's remaining tokens are scored from it, so HoC's 20 requests per abstract cost one
        prefill plus 20 short continuations. Equal to the unshared computation up to float error
        (tested <= 1e-4). Returns (sums, per request whether its context was cut from the left).
        """
        bos = self.tokenizer.bos_id
        seqs, starts, truncated = [], [], []
        for ctx, cont in requests:
            if not cont:
                raise ValueError("empty continuation in a log-likelihood request")
            ctx, cut = truncate_left(list(ctx), self.max_len - len(cont), bos)
            truncated.append(cut)
            seqs.append(ctx + list(cont))
            starts.append(len(ctx))
        sums = [0.0] * len(seqs)
        plain = list(range(len(seqs)))
        if share_prefix and seqs:
            keys = groups if groups is not None else [tuple(r[0]) for r in requests]
            by_group: dict[Any, list[int]] = {}
            for i, k in enumerate(keys):
                by_group.setdefault(k, []).append(i)
            shared, plain = [], []
            for members in by_group.values():
                # cache at most up to the last context token, whose output scores the first answer token
                p = min(_common_prefix([seqs[i] for i in members]), min(starts[i] for i in members)) - 1
                if len(members) > 1 and p >= 1:
                    shared.append((p, members))
                else:
                    plain.extend(members)
            self._loglik_shared(seqs, starts, shared, sums, label)
        self._loglik_plain(seqs, starts, sorted(plain), sums, label)
        return sums, truncated

    def _loglik_plain(self, seqs, starts, which: list[int], sums: list[float], label: str) -> None:
        pad = 0 if self.model_config.pad_token_id is None else int(self.model_config.pad_token_id)
        order = sorted(which, key=lambda i: (len(seqs[i]), i))
        rows = self._rows(len(order))
        for start in range(0, len(order), rows):
            chunk = order[start:start + rows]
            length = bucket_length(max(len(seqs[i]) for i in chunk), self.max_len)
            tokens = np.full((rows, length), pad, np.int32)
            for r, i in enumerate(chunk):
                tokens[r, :len(seqs[i])] = seqs[i]
            self._shape("loglik", rows, length)
            with self._context():
                lp = _target_logprobs(self.params, self._put(tokens), config=self.model_config)
            lp = self._get(lp).astype(np.float64)
            for r, i in enumerate(chunk):
                # token t+1 is predicted at row index t
                sums[i] = float(lp[r, starts[i] - 1:len(seqs[i]) - 1].sum())
            if self.show_progress:
                _progress(label, min(start + rows, len(order)), len(order))

    def _loglik_shared(self, seqs, starts, shared: list[tuple[int, list[int]]], sums: list[float],
                       label: str) -> None:
        """Groups (prefix length p, member requests): prefill the prefixes `rows` groups at a time,
        then score every member's seq[p:] (from the first token not in the cache, which is at latest the
        last context token) from its group's cache, `rows` continuations per call."""
        pad = 0 if self.model_config.pad_token_id is None else int(self.model_config.pad_token_id)
        bos = self.tokenizer.bos_id if self.tokenizer.bos_id is not None else pad
        shared = sorted(shared, key=lambda g: (g[0], g[1][0]))
        rows = self._rows(len(shared))
        done = 0
        for start in range(0, len(shared), rows):
            chunk = shared[start:start + rows]
            plen = bucket_length(max(p for p, _ in chunk), self.max_len)
            rest = small_bucket(max(len(seqs[i]) - p for p, m in chunk for i in m), self.max_len)
            tokens = np.full((rows, plen), pad, np.int32)
            mask = np.zeros((rows, plen), np.int32)
            tokens[:, -1], mask[:, -1] = bos, 1  # filler rows: one real token
            for g, (p, members) in enumerate(chunk):
                tokens[g, plen - p:] = seqs[members[0]][:p]
                mask[g, plen - p:] = 1
            self._shape("loglik_prefix", rows, plen, plen + rest)
            with self._context():
                cache = _prefill(self.params, self._put(tokens), self._put(mask), config=self.model_config,
                                 cache_len=plen + rest)
            items = [(g, p, i) for g, (p, members) in enumerate(chunk) for i in members]
            for c0 in range(0, len(items), rows):
                part = items[c0:c0 + rows]
                cont = np.full((rows, rest), pad, np.int32)
                pos = np.zeros((rows, rest), np.int32)
                owner = np.zeros((rows,), np.int32)
                for r, (g, p, i) in enumerate(part):
                    tail = seqs[i][p:]
                    cont[r, :len(tail)] = tail
                    pos[r] = p + np.arange(rest)
                    owner[r] = g
                self._shape("loglik_continuation", rows, rest)
                with self._context():
                    lp = _continuation_logprobs(self.params, cache, self._put(owner), self._put(cont),
                                                self._put(pos), cache_index=int(plen), config=self.model_config)
                lp = self._get(lp).astype(np.float64)
                for r, (g, p, i) in enumerate(part):
                    # seq token t+1 (t >= p) is predicted at continuation index t - p
                    sums[i] = float(lp[r, starts[i] - 1 - p:len(seqs[i]) - 1 - p].sum())
            done += len(chunk)
            if self.show_progress:
                _progress(label + " (shared prefixes)", done, len(shared))


def load_engine(checkpoint: str, tokenizer_path: str = "", batch_size: int = 8, mesh_config: Any = None,
                rules: Any = None, dtype: str = "", show_progress: bool = True) -> Engine:
    """Load a model artifact (HF dir, converter output, training workdir or one of its steps) with
    the tokenizer that travels with it (or `tokenizer_path`, checked against the model), on a mesh."""
    artifact = resolve_artifact(checkpoint)
    tok_path = tokenizer_path or artifact.tokenizer_file
    if not tok_path:
        raise FileNotFoundError(f"{checkpoint}: no tokenizer files (tokenizer.model or tokenizer.json) travel "
                                f"with this checkpoint "
                                f"({artifact.root}); set config.tokenizer_path")
    tokenizer = load_tokenizer(tok_path)
    check_artifact_tokenizer(artifact, tokenizer, tokenizer.model_path)
    config, params = artifact.model_config, artifact.load_params()
    if dtype:
        config = config.replace(dtype=dtype)
    mesh = None
    if mesh_config is not None:
        rules = tuple(rules) if rules else DEFAULT_RULES
        mesh = make_mesh(mesh_config)
        shardings = logical_to_sharding(param_logical_axes(config), mesh, rules, shapes=params)
        params = jax.tree.map(lambda x, s: jax.device_put(x, s), params, shardings)
    return Engine(config, params, tokenizer, batch_size=batch_size, mesh=mesh, rules=rules,
                  show_progress=show_progress)
