"""lm-evaluation-harness model `mellama_jax`: any lm-eval task on a mellama-jax checkpoint, on a mesh.

    python -m mellama_jax.cli.lm_eval --model mellama_jax \
        --model_args checkpoint=PATH,mesh_tensor=4 --tasks mmlu_clinical_knowledge --batch_size 16

The adapter follows the request semantics of lm-eval's Hugging Face backend (`--model hf`) token for
token, so the two give the same numbers for the same weights (tests/test_lm_eval_parity.py):
  * loglikelihood: context and continuation split as lm-eval's TemplateLM does (encode context +
    continuation, then the context; trailing context whitespace moves to the continuation; an empty
    context is the BOS token); the model reads (context + continuation)[:-1], cut from the left to
    max_length tokens, and the continuation is scored from the last len(continuation) positions;
    is_greedy says every continuation token is the argmax.
  * loglikelihood_rolling: lm-eval's own disjoint rolling windows (BOS-prefixed, max_length each).
  * generate_until: greedy, or sampled (gen_kwargs do_sample / temperature / top_p; model arg `seed`,
    one key per request from its context, see _request_keys), on the project's jitted KV-cache decode
    loop (Engine.generate), contexts cut from the left to max_length - max_gen_toks; EOS ends a row, and
    so does a stop sequence (lm-eval's `until`) once its tokens are generated (checked on device, see
    stop_token_ids); the text is cut at the first stop sequence, exactly as the HF backend
    post-processes its generations.
  * strings that contain the tokenizer's special-token text (`<s>`, `</s>`, as chat templates write
    them) become those ids, as a Hugging Face tokenizer does.

Weights, tokenizer and mesh come from `mellama_jax.eval.engine.load_engine`, so everything the
project reads (HF directory, Orbax checkpoint, training or instruction-tuning workdir, LoRA adapters)
works. Requests are sorted by length and run in (batch rows, power-of-two length) buckets so each
shape compiles once; the batch is split over the mesh's data axes, the weights over its tensor axis.
"""
from __future__ import annotations

import functools
import json
import logging
import os
from types import SimpleNamespace
from typing import Any, Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs, postprocess_generated_text
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from tqdm import tqdm

from mellama_jax.checkpoint.artifact import resolve_artifact
from mellama_jax.eval.engine import bucket_length, load_engine
from mellama_jax.model.llama import Llama
from mellama_jax.tokenizer.chat_templates import (MODEL_TEMPLATE, TEMPLATES, Part, encode_parts, hf_chat_template,
                                                  render_jinja, render_text, template_name_for_jinja,
                                                  template_names)

log = logging.getLogger(__name__)

__all__ = ["MellamaJaxLM", "MODEL_NAME", "TASKS_DIR", "score_continuations"]

MODEL_NAME = "mellama_jax"
# The project's lm-eval task YAMLs (local data only), e.g. pubmedqa_mellama.
TASKS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "lm_eval_tasks")
DEFAULT_MAX_GEN_TOKS = 256  # lm-eval's HF backend default


@functools.partial(jax.jit, static_argnames=("config",))
def _target_scores(params, inputs, targets, last, *, config):
    """log p(targets[:, t] | inputs[:, :t+1]) and the argmax token for every t (float32 / int32), and
    the whole log-distribution at position last[b] ([b, vocab], for requests that share the input).

    Right padding is harmless: attention is causal and padded positions are never read."""
    logits = Llama(config).apply({"params": params}, inputs)
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    target_logp = jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    last_logp = jnp.take_along_axis(logp, last[:, None, None], axis=1)[:, 0]
    return target_logp, jnp.argmax(logp, axis=-1).astype(jnp.int32), last_logp


def score_continuations(engine, pairs: Sequence[tuple[Sequence[int], Sequence[int]]], max_length: int,
                        progress: Any = None) -> list[tuple[float, bool]]:
    """(sum of log p(continuation | context), continuation == greedy tokens) for token-id pairs.

    lm-eval's causal-LM protocol: the input is (context + continuation)[-(max_length + 1):][:-1], so a
    rolling window of exactly max_length + 1 tokens (the last one only a target) needs no cut. Requests
    with the same input (multiple choice with one-token answers: " A" / " B" / ...) differ only in their
    last target and share one row, as the HF backend's one-token-continuation cache does. Rows are
    sorted longest first and batched in `engine`'s (rows, power-of-two length) buckets.
    """
    pad = 0 if engine.model_config.pad_token_id is None else int(engine.model_config.pad_token_id)
    inputs, targets = [], []
    for ctx, cont in pairs:
        cont = list(cont)
        if not cont:
            raise ValueError("lm-eval request with an empty continuation")
        if len(cont) > max_length:
            raise ValueError(f"continuation of {len(cont)} tokens is longer than max_length={max_length}")
        whole = (list(ctx) + cont)[-(max_length + 1):]
        if len(whole) < 2:
            raise ValueError("lm-eval request with no context token (the BOS prefix is missing)")
        inputs.append(whole[:-1])
        targets.append(whole[1:])
    groups: dict[tuple, list[int]] = {}
    for i, x in enumerate(inputs):
        groups.setdefault(tuple(x), []).append(i)
    reps = sorted((members[0] for members in groups.values()), key=lambda i: (-len(inputs[i]), i))
    members_of = {m[0]: m for m in groups.values()}
    rows = engine._rows(len(reps))
    out: list[tuple[float, bool] | None] = [None] * len(pairs)
    for start in range(0, len(reps), rows):
        chunk = reps[start:start + rows]
        length = bucket_length(len(inputs[chunk[0]]), max_length)
        tok = np.full((rows, length), pad, np.int32)
        tgt = np.zeros((rows, length), np.int32)
        last = np.zeros((rows,), np.int32)
        for r, i in enumerate(chunk):
            tok[r, :len(inputs[i])] = inputs[i]
            tgt[r, :len(targets[i])] = targets[i]
            last[r] = len(inputs[i]) - 1
        engine.stats.setdefault("compiled_shapes", set()).add(("lm_eval_loglik", rows, length))
        with engine._context():
            lp, argmax, last_lp = _target_scores(engine.params, engine._put(tok), engine._put(tgt),
                                                 engine._put(last), config=engine.model_config)
        lp, argmax = engine._get(lp).astype(np.float64), engine._get(argmax)
        last_lp = engine._get(last_lp).astype(np.float64)
        for r, rep in enumerate(chunk):
            n = len(targets[rep])
            for i in members_of[rep]:
                span = slice(n - len(pairs[i][1]), n - 1)  # all but the last target: shared in the group
                final = targets[i][-1]
                out[i] = (float(lp[r, span].sum() + last_lp[r, final]),
                          bool(np.all(argmax[r, span] == tgt[r, span]) and argmax[r, n - 1] == final))
        if progress is not None:
            progress.update(sum(len(members_of[rep]) for rep in chunk))
    return out  # type: ignore[return-value]


def _mesh_config(data: int, fsdp: int, tensor: int):
    return SimpleNamespace(data=int(data), fsdp=int(fsdp), tensor=int(tensor))


@register_model(MODEL_NAME)
class MellamaJaxLM(TemplateLM):
    """lm-eval `LM` over a mellama-jax Engine (model + tokenizer + mesh)."""

    backend = "causal"

    def __init__(self, checkpoint: str | None = None, *, engine: Any = None, tokenizer: str = "",
                 batch_size: int | str | None = 8, max_batch_size: int | None = None, device: str | None = None,
                 dtype: str = "", use_mesh: bool = True, mesh_data: int = -1, mesh_fsdp: int = 1,
                 mesh_tensor: int = 1, max_length: int | None = None, max_gen_toks: int = DEFAULT_MAX_GEN_TOKS,
                 chat_template: str | None = None, prefix_token_id: int | None = None,
                 add_bos_token: bool | None = None, seed: int = 0, **unknown: Any):
        super().__init__()
        # lm-eval's CLI passes its generic options (and, for some tasks, metadata) to every model.
        unknown.pop("trust_remote_code", None)
        checkpoint = checkpoint or unknown.pop("pretrained", None)  # the HF backend's name for it
        if unknown:
            raise ValueError(f"--model_args: unknown argument(s) {sorted(unknown)} for --model {MODEL_NAME}; "
                             "known: checkpoint, tokenizer, batch_size, dtype, use_mesh, mesh_data, mesh_fsdp, "
                             "mesh_tensor, max_length, max_gen_toks, chat_template, prefix_token_id, add_bos_token, seed")
        rows = _batch_size(batch_size)
        # lm-eval hands --model_args over as parsed strings/ints: "max_length=0" must not mean "the
        # default" nor "add_bos_token=maybe" mean true.
        max_length = _positive_int("max_length", max_length)
        max_gen_toks = _positive_int("max_gen_toks", max_gen_toks)
        add_bos_token = _bool_arg("add_bos_token", add_bos_token)
        use_mesh = _bool_arg("use_mesh", use_mesh) is not False
        if engine is None:
            if not checkpoint:
                raise ValueError(f"--model {MODEL_NAME} needs --model_args checkpoint=PATH (an HF directory, an "
                                 "Orbax checkpoint or a training / instruction-tuning workdir)")
            mesh = _mesh_config(mesh_data, mesh_fsdp, mesh_tensor) if use_mesh else None
            engine = load_engine(str(checkpoint), tokenizer or "", batch_size=rows, mesh_config=mesh,
                                 dtype=dtype or "", show_progress=False)
        if device not in (None, "", "cpu", "cuda", "tpu", "auto"):
            log.info("%s: device=%r ignored; JAX places the model on its own devices", MODEL_NAME, device)
        self.engine = engine
        self.checkpoint = None if checkpoint is None else os.path.abspath(str(checkpoint))
        self.tok = engine.tokenizer
        self._max_length = max_length if max_length is not None else int(engine.model_config.max_position_embeddings)
        self._max_gen_toks = DEFAULT_MAX_GEN_TOKS if max_gen_toks is None else max_gen_toks
        self.seed = int(seed)  # sampled generate_until (do_sample): see _request_keys
        self.custom_prefix_token_id = prefix_token_id
        self.add_bos_token = add_bos_token
        self.batch_sizes: dict = {}
        self._specials = dict(self.tok.special_tokens)  # text -> id, matched whole as HF does
        self._chat = _resolve_chat_template(chat_template, self.checkpoint)

    # --- what lm-eval reads ----------------------------------------------------------------------
    @property
    def eot_token_id(self) -> int:
        return self.tok.eos_id

    @property
    def prefix_token_id(self) -> int:
        if self.custom_prefix_token_id is not None:
            return int(self.custom_prefix_token_id)
        return self.tok.bos_id

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def max_gen_toks(self) -> int:
        return self._max_gen_toks

    @property
    def batch_size(self) -> int:
        return self.engine._rows(1)

    @property
    def tokenizer_name(self) -> str:
        return self.tok.model_path.replace("/", "__")

    def get_model_info(self) -> dict:
        cfg = self.engine.model_config
        return {"model_num_parameters": int(sum(x.size for x in jax.tree.leaves(self.engine.params))),
                "model_dtype": str(cfg.dtype), "checkpoint": self.checkpoint,
                "tokenizer_sha256": self.tok.sha256(),
                "mesh": None if self.engine.mesh is None else dict(self.engine.mesh.shape)}

    # --- tokenization ----------------------------------------------------------------------------
    def tok_encode(self, string: str, add_special_tokens: bool | None = None, left_truncate_len: int | None = None,
                   **kwargs) -> list[int]:
        """Token ids as lm-eval's HF backend encodes: BOS per the tokenizer config (or add_bos_token),
        none when the text already starts with the BOS text; special-token text becomes its id."""
        if add_special_tokens is None:
            bos = self.tok.add_bos if self.add_bos_token is None else bool(self.add_bos_token)
            if string.startswith(self.tok.id_to_piece(self.prefix_token_id)):
                bos = False
        else:
            bos = bool(add_special_tokens)
        ids = self._encode_with_specials(string)
        if bos:
            ids = [self.tok.bos_id] + ids
        if left_truncate_len:
            ids = ids[-left_truncate_len:]
        return ids

    def _encode_with_specials(self, string: str) -> list[int]:
        if not any(s in string for s in self._specials):
            return self.tok.encode(string, bos=False, eos=False)
        # Special-token text becomes its id; the text between is encoded chunk by chunk, as HF does.
        return [int(i) for i in encode_parts(self.tok, [Part("text", string)])[0]]

    def tok_decode(self, tokens: Iterable[int], skip_special_tokens: bool = True) -> str:
        """Text of ids as the model's Hugging Face tokenizer decodes them (what lm-eval's HF backend
        returns), through the Tokenizer interface for either backend."""
        tokens = [int(t) for t in ([tokens] if isinstance(tokens, (int, np.integer)) else tokens)]
        return self.tok.decode_as_hf(tokens, skip_special_tokens=skip_special_tokens)

    # --- log-likelihood --------------------------------------------------------------------------
    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        pairs = [(ctx, cont) for _, ctx, cont in requests]
        with tqdm(total=len(pairs), disable=disable_tqdm, desc="mellama_jax loglikelihood") as bar:
            results = score_continuations(self.engine, pairs, self.max_length, progress=bar)
        for (key, _, _), res in zip(requests, results):
            if key is not None:
                self.cache_hook.add_partial("loglikelihood", key, res)
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        windows, owners = [], []
        for i, (string,) in enumerate(req.args for req in requests):
            for w in get_rolling_token_windows(token_list=self.tok_encode(string), prefix_token=self.prefix_token_id,
                                               max_seq_len=self.max_length, context_len=1):
                windows.append(make_disjoint_window(w))
                owners.append(i)
        with tqdm(total=len(windows), disable=disable_tqdm, desc="mellama_jax rolling windows") as bar:
            scores = score_continuations(self.engine, windows, self.max_length, progress=bar)
        totals = [0.0] * len(requests)
        for i, (lp, _) in zip(owners, scores):
            totals[i] += lp
        for req, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return totals

    # --- generation ------------------------------------------------------------------------------
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        groups: dict[str, list[int]] = {}
        for i, req in enumerate(requests):
            groups.setdefault(json.dumps(req.args[1], sort_keys=True, default=str), []).append(i)
        out: list[str | None] = [None] * len(requests)
        eos_text = self.tok_decode(self.eot_token_id, skip_special_tokens=False)
        keys = _request_keys(self.seed, [req.args[0] for req in requests])
        bar = tqdm(total=len(requests), disable=disable_tqdm, desc="mellama_jax generate_until")
        for members in groups.values():
            gen_kwargs = requests[members[0]].args[1]
            kwargs = normalize_gen_kwargs(gen_kwargs, self.max_gen_toks)
            until = handle_stop_sequences(kwargs.pop("until", None), eos=eos_text)
            max_gen = int(kwargs.pop("max_gen_toks"))
            temperature, top_p = _sampling_kwargs(kwargs, gen_kwargs, requests[members[0]].task_name)
            ignored = {k: v for k, v in kwargs.items() if k not in ("top_k", "repetition_penalty")
                       or v not in (None, 1.0, 0, 1)}
            if ignored:
                log.warning("%s: generation kwargs %s are not used", MODEL_NAME, ignored)
            cap = self.max_length - max_gen
            if cap < 1:
                raise ValueError(f"max_gen_toks={max_gen} leaves no room for a context in max_length="
                                 f"{self.max_length}")
            # lm-eval cuts contexts from the left to max_length - max_gen_toks (BOS included).
            prompts = [self.tok_encode(requests[i].args[0], left_truncate_len=cap) for i in members]
            _, ids, _ = self.engine.generate(prompts, max_gen, label="lm_eval generate_until",
                                             temperature=temperature, top_p=top_p,
                                             keys=keys[members] if temperature > 0 else None,
                                             stop_ids=self.stop_token_ids(until))
            for i, new_ids in zip(members, ids):
                out[i] = postprocess_generated_text(self.tok_decode(new_ids), until, None)
                self.cache_hook.add_partial("generate_until", requests[i].args, out[i])
            bar.update(len(members))
        bar.close()
        return out  # type: ignore[return-value]

    def stop_token_ids(self, until: Sequence[str]) -> np.ndarray | None:
        """Token-id sequences [n, L] (left-padded with -1) that end a row on device (model/generate.py).

        For each stop string: its encoding (and that encoding without a leading lone dummy-prefix
        piece), and every single vocabulary piece whose text contains it. Each sequence's text contains
        the stop string, so a row stops only after the string has appeared; generations that reach a
        stop string through other tokens run on to max_gen_toks and are cut on the host as before, so
        the returned text never depends on this list (only the decode time does)."""
        seqs: set[tuple[int, ...]] = set()
        pieces = [self.tok_decode([t], skip_special_tokens=False) if t not in (self.tok.bos_id, self.tok.eos_id)
                  else "" for t in range(self.tok.vocab_size)]
        for stop in until:
            if not stop:
                continue
            ids = tuple(self._encode_with_specials(stop))
            if ids and self.tok_decode(list(ids), skip_special_tokens=False).find(stop) >= 0:
                seqs.add(ids)
            if len(ids) > 1 and self.tok.id_to_piece(ids[0]) == "\u2581":
                seqs.add(ids[1:])
            seqs.update((t,) for t, text in enumerate(pieces) if stop in text)
        if not seqs:
            return None
        width = max(len(q) for q in seqs)
        table = np.full((len(seqs), width), -1, np.int32)
        for r, q in enumerate(sorted(seqs)):
            table[r, width - len(q):] = q
        return table

    # --- chat ------------------------------------------------------------------------------------
    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        if self._chat is None:
            raise ValueError(f"{MODEL_NAME}: --apply_chat_template needs a chat template: pass --model_args "
                             f"chat_template=NAME {template_names()} or evaluate a checkpoint that ships one")
        kind, template = self._chat
        bos = self.tok.id_to_piece(self.tok.bos_id) if self.tok.bos_id >= 0 else ""
        eos = self.tok.id_to_piece(self.tok.eos_id) if self.tok.eos_id >= 0 else ""
        if kind == "name":
            return render_text(template, chat_history, add_generation_prompt, bos_token=bos, eos_token=eos)
        return render_jinja(template, chat_history, add_generation_prompt, source=self.checkpoint or "chat_template",
                            bos_token=bos, eos_token=eos)[0]

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        if not chat_template or self._chat is None:
            return None
        kind, template = self._chat
        return hf_chat_template(template) if kind == "name" else template


def _sampling_kwargs(kwargs: dict, gen_kwargs: dict, task: str) -> tuple[float, float]:
    """(temperature, top_p) from normalised gen_kwargs (lm-eval's normalize_gen_kwargs: do_sample absent
    means "sample iff temperature > 0"; do_sample=False zeroes the temperature): sampled iff do_sample
    and temperature > 0, else greedy (0.0, 1.0)."""
    do_sample = bool(kwargs.pop("do_sample", False))
    temperature = float(kwargs.pop("temperature", 0.0) or 0.0)
    top_p = kwargs.pop("top_p", None)
    top_p = 1.0 if top_p is None else float(top_p)
    if temperature < 0 or not 0 < top_p <= 1:
        raise ValueError(f"{MODEL_NAME}: need temperature >= 0 and 0 < top_p <= 1; got gen_kwargs {gen_kwargs} "
                         f"(task {task})")
    return (temperature, top_p) if do_sample and temperature > 0 else (0.0, 1.0)


def _request_keys(seed: int, contexts: Sequence[str]) -> np.ndarray:
    """One sampling key per request: fold_in(fold_in(key(seed), crc32(context)), k), k = how many
    requests with the same context came before it (lm-eval's `repeats` send identical requests), so a
    request's samples depend on its context, its repeat index and the seed only: not on its batch,
    its position or its gen_kwargs (the same seed gives the same draws with and without `until`)."""
    import zlib

    seen: dict[str, int] = {}
    rows = []
    for ctx in contexts:
        k = seen.get(ctx, 0)
        seen[ctx] = k + 1
        rows.append((zlib.crc32(ctx.encode()), k))
    if not rows:
        return np.zeros((0, 2), np.uint32)
    base = jax.random.key(int(seed))
    h, k = (jnp.asarray([r[i] for r in rows], jnp.uint32) for i in (0, 1))
    keys = jax.vmap(lambda a, b: jax.random.fold_in(jax.random.fold_in(base, a), b))(h, k)
    return np.asarray(jax.random.key_data(keys), np.uint32)


_TRUE, _FALSE = ("true", "1", "yes"), ("false", "0", "no")


def _bool_arg(name: str, value: Any) -> bool | None:
    """A --model_args boolean: true/false/1/0/yes/no (any case); None or "" = unset."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f"--model_args {name}={value!r}: expected one of true/false/1/0/yes/no")


def _positive_int(name: str, value: Any) -> int | None:
    """A --model_args count that must be >= 1; None or "" = the default."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise ValueError(f"--model_args {name}={value!r}: expected an integer >= 1")
    try:
        number = int(value) if not isinstance(value, float) or value.is_integer() else None
    except (TypeError, ValueError):
        number = None
    if number is None:
        raise ValueError(f"--model_args {name}={value!r}: expected an integer >= 1")
    if number < 1:
        raise ValueError(f"--model_args {name}={number}: must be >= 1")
    return number


def _batch_size(value: Any) -> int:
    if value is None or value == "":
        return 8
    if isinstance(value, str) and value.startswith("auto"):
        raise ValueError(f"--batch_size {value}: {MODEL_NAME} does not search for a batch size; pass an integer "
                         "(rows per device call, rounded up to a multiple of the mesh's data shards)")
    try:
        rows = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"--batch_size {value!r}: expected an integer") from None
    if rows < 1:
        raise ValueError(f"--batch_size {rows}: expected >= 1")
    return rows


def _resolve_chat_template(chat_template: str | None, checkpoint: str | None) -> tuple[str, str] | None:
    """("name", template name from mellama_jax.tokenizer.chat_templates) or ("jinja", text): the
    explicit argument first, else what the checkpoint ships (a template name or Jinja text), else None.
    `model` is the checkpoint's own Jinja."""
    if chat_template == MODEL_TEMPLATE:
        shipped = resolve_artifact(checkpoint).chat_template if checkpoint else None
        if not shipped:
            raise ValueError(f"chat_template=model: {checkpoint} carries no chat template "
                             "(tokenizer_config.json chat_template or chat_template.jinja)")
        return ("jinja", shipped)
    if chat_template:
        if chat_template in template_names():
            return ("name", chat_template)
        if os.path.isfile(chat_template):
            with open(chat_template, encoding="utf-8") as f:
                return ("jinja", f.read())
        raise ValueError(f"chat_template={chat_template!r}: not a template name {template_names()} nor a Jinja file")
    if checkpoint is None:
        return None
    try:
        shipped = resolve_artifact(checkpoint).chat_template
    except (ImportError, FileNotFoundError, ValueError):
        return None
    if not shipped:
        return None
    if shipped.strip() in TEMPLATES:
        return ("name", shipped.strip())
    name = template_name_for_jinja(shipped)
    return ("name", name) if name != MODEL_TEMPLATE else ("jinja", shipped)
