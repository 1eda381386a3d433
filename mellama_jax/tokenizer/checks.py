"""Whether a tokenizer can drive a model: vocab size (with sharding padding), BOS, EOS and pad ids.

The model side is duck-typed (`ModelIds`: a LlamaConfig has these fields) so that this layer needs
nothing from the model package.
"""
from __future__ import annotations

from typing import Any, Protocol

__all__ = ["TokenizerMismatchError", "ModelIds", "MAX_VOCAB_MULTIPLE", "padded_vocab_sizes", "check_tokenizer"]

MAX_VOCAB_MULTIPLE = 1024  # resize_vocab pads embedding rows to a power of two up to this


class TokenizerMismatchError(ValueError):
    """A tokenizer that does not fit a model (vocab size or special ids)."""


class ModelIds(Protocol):
    """What the check reads from a model config."""

    vocab_size: int
    bos_token_id: int
    eos_token_id: int
    pad_token_id: int | None


def padded_vocab_sizes(n_tokens: int) -> set[int]:
    """Model vocab sizes that fit a tokenizer of n_tokens: itself, or rounded up to a power-of-two
    multiple (<= MAX_VOCAB_MULTIPLE and <= n_tokens / 8) for sharding; the extra rows are never
    produced by the tokenizer. A 2,000-piece tokenizer never fits a 32,000-row model."""
    sizes, multiple = {n_tokens}, 2
    while multiple <= MAX_VOCAB_MULTIPLE and 8 * multiple <= n_tokens:  # padding < 1/8 of the vocab
        sizes.add(-(-n_tokens // multiple) * multiple)
        multiple *= 2
    return sizes


def check_tokenizer(tokenizer: Any, model_config: ModelIds, tokenizer_file: str, model_file: str, *,
                    allow_larger_model: bool = False) -> None:
    """Raise TokenizerMismatchError (naming both files) when `tokenizer` cannot drive the model.

    The model's vocab must equal the tokenizer's or be it padded to a power-of-two multiple
    (`padded_vocab_sizes`); `allow_larger_model` accepts any larger vocab (a fresh model whose
    vocab_size was set by hand). BOS must be the same id (unless the tokenizer has none, as Qwen2's);
    the model's EOS must be one the tokenizer stops at (`eos_ids`: LLaMA-3 Instruct's list); a model
    pad id must be inside the vocab and equal the tokenizer's pad piece when it has one. Added tokens
    (LLaMA-3's specials) past the model's rows are named: they would index no embedding.
    """
    def fail(what: str) -> None:
        raise TokenizerMismatchError(f"tokenizer {tokenizer_file} does not match model {model_file}: {what}")

    n_tok, n_model = int(tokenizer.vocab_size), int(model_config.vocab_size)
    beyond = sorted((i, t) for t, i in (getattr(tokenizer, "added_tokens", None) or {}).items() if i >= n_model)
    if beyond:
        shown = ", ".join(f"{t!r}={i}" for i, t in beyond[:5]) + (" ..." if len(beyond) > 5 else "")
        fail(f"{len(beyond)} added token(s) have ids beyond the model's vocab_size {n_model}: {shown}")
    if n_model < n_tok or (n_model not in padded_vocab_sizes(n_tok) and not allow_larger_model):
        fail(f"tokenizer has {n_tok} pieces, model vocab_size is {n_model}")
    if int(tokenizer.bos_id) >= 0 and int(tokenizer.bos_id) != int(model_config.bos_token_id):
        fail(f"BOS id {tokenizer.bos_id} in the tokenizer, bos_token_id {model_config.bos_token_id} in the model")
    model_eos = model_config.eos_token_id
    model_eos = list(model_eos) if isinstance(model_eos, (list, tuple)) else [model_eos]
    tok_eos = [int(i) for i in (getattr(tokenizer, "eos_ids", None) or [tokenizer.eos_id])]
    if not set(int(i) for i in model_eos) & set(tok_eos):
        fail(f"EOS id {tokenizer.eos_id} in the tokenizer (stops at {tok_eos}), eos_token_id "
             f"{model_config.eos_token_id} in the model")
    pad = model_config.pad_token_id
    if pad is not None:
        tok_pad = getattr(tokenizer, "declared_pad_id", -1)
        if not 0 <= int(pad) < n_model:
            fail(f"pad_token_id {pad} is outside the model's vocab")
        if tok_pad >= 0 and int(pad) != int(tok_pad):
            fail(f"pad id {tok_pad} in the tokenizer, pad_token_id {pad} in the model")
