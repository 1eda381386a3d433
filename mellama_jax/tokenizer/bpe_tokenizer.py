"""A Hugging Face BPE tokenizer (LLaMA-3, Qwen2, Mistral's tokenizer.json) over the `tokenizers` library.

What transformers' AutoTokenizer does with such a directory (transformers 5, a tokenizer.json present):
the tokenizer.json is used as written. add_bos_token / add_eos_token in tokenizer_config.json are
ignored then (BOS/EOS come from the post-processor: LLaMA-3's TemplateProcessing adds
<|begin_of_text|>), and the special tokens (bos/eos/pad/unk) are the names tokenizer_config.json and
special_tokens_map.json give. That holds for the generic classes (`PreTrainedTokenizerFast`,
`TokenizersBackend`); a model-specific class may rebuild the tokenizer from its vocabulary and encode
differently (tested: Qwen2Tokenizer, GPT2Tokenizer), so such a file is refused with its name rather
than silently encoded another way; `LlamaTokenizer(Fast)` over a byte-level tokenizer.json is loaded
as written by transformers too, and so here.

generation_config.json's eos_token_id may be a list (LLaMA-3 Instruct: <|end_of_text|>, <|eom_id|>,
<|eot_id|>): `eos_ids` holds them all so generation stops at any of them.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
from typing import Any, Iterable, Sequence

import tokenizers

from mellama_jax.tokenizer.files import (BPE_FILES, GENERATION_CONFIG, SPECIAL_TOKENS_MAP, TOKENIZER_CONFIG,
                                         read_chat_template, read_json, write_json)

__all__ = ["BPETokenizer", "AS_WRITTEN_CLASSES", "read_spec", "all_ids", "check_bpe_extends", "bpe_row_sources"]
# tokenizer_class values whose AutoTokenizer uses tokenizer.json exactly as written.
AS_WRITTEN_CLASSES = (None, "PreTrainedTokenizerFast", "TokenizersBackend")
# tokenizer_config.json fields that change ids (the fingerprint covers them, not the chat template).
_ID_FIELDS = ("tokenizer_class", "bos_token", "eos_token", "pad_token", "unk_token", "added_tokens_decoder")


def _token_text(value: Any) -> str | None:
    """A special-token entry of tokenizer_config.json: a string or an AddedToken dict."""
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


class BPETokenizer:
    """Encode/decode with a Hugging Face `tokenizer.json` whose model is BPE, ids as AutoTokenizer's."""

    def __init__(self, model_path: str):
        if not os.path.isfile(model_path):
            raise FileNotFoundError(f"tokenizer file not found: {model_path!r} (expected a Hugging Face "
                                    "tokenizer.json)")
        self.model_path = os.path.abspath(model_path)
        self.directory = os.path.dirname(self.model_path)
        try:
            with open(model_path, encoding="utf-8") as f:
                spec = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{model_path}: not a valid tokenizer.json ({err})") from err
        kind = (spec.get("model") or {}).get("type") if isinstance(spec, dict) else None
        if kind != "BPE":
            raise ValueError(f"{model_path}: the tokenizer model is {kind!r}, not BPE; only BPE tokenizer.json "
                             "files (LLaMA-3, Qwen2, Mistral) are supported (a LLaMA-2 model uses its "
                             "tokenizer.model)")
        try:
            self._tok = tokenizers.Tokenizer.from_str(json.dumps(spec))
        except Exception as err:  # tokenizers raises a bare Exception without the path
            raise ValueError(f"{model_path}: tokenizers cannot load it ({err})") from err
        self._spec = spec
        config_file = os.path.join(self.directory, TOKENIZER_CONFIG)
        self.config = read_json(config_file)
        self.special_map = read_json(os.path.join(self.directory, SPECIAL_TOKENS_MAP))
        self.generation_config = read_json(os.path.join(self.directory, GENERATION_CONFIG))
        cls = self.config.get("tokenizer_class")
        # transformers 5 loads a LlamaTokenizer(Fast) whose tokenizer.json is byte-level (LLaMA-3
        # repos that declare it) as TokenizersBackend, i.e. as written.
        llama_byte_level = (str(cls).removesuffix("Fast") == "LlamaTokenizer"
                            and "ByteLevel" in json.dumps(spec.get("pre_tokenizer")))
        if cls not in AS_WRITTEN_CLASSES and not llama_byte_level:
            raise ValueError(f"{config_file}: tokenizer_class {cls!r}: transformers may rebuild this tokenizer "
                             f"from its vocabulary and encode differently from {model_path}; set tokenizer_class "
                             "to \"PreTrainedTokenizerFast\" to use tokenizer.json as written")
        self._add_config_tokens(config_file)
        self._bos = self._named_id("bos_token", config_file)
        self._eos = self._named_id("eos_token", config_file)
        self._pad = self._named_id("pad_token", config_file)
        self._unk = self._named_id("unk_token", config_file)
        if self._unk < 0 and spec["model"].get("unk_token"):
            self._unk = self._tok.token_to_id(spec["model"]["unk_token"]) or -1
        self.add_bos, self.add_eos = self._template_adds()
        self.eos_ids = self._eos_list()
        self.chat_template = read_chat_template(self.directory)

    # --- construction helpers ----------------------------------------------------------------------
    def _add_config_tokens(self, config_file: str) -> None:
        """Added tokens tokenizer_config.json declares but tokenizer.json lacks (transformers adds them)."""
        have = {t["content"] for t in self._spec.get("added_tokens", [])}
        decoder = self.config.get("added_tokens_decoder") or {}
        for key, entry in sorted(decoder.items(), key=lambda kv: int(kv[0])):
            if entry.get("content") in have:
                continue
            token = tokenizers.AddedToken(entry["content"], single_word=entry.get("single_word", False),
                                          lstrip=entry.get("lstrip", False), rstrip=entry.get("rstrip", False),
                                          normalized=entry.get("normalized", False),
                                          special=entry.get("special", True))
            self._tok.add_tokens([token])
            if self._tok.token_to_id(entry["content"]) != int(key):
                raise ValueError(f"{config_file}: added token {entry['content']!r} has id {key} there but "
                                 f"{self._tok.token_to_id(entry['content'])} when added to {self.model_path}")

    def _named_id(self, field: str, config_file: str) -> int:
        text = _token_text(self.config.get(field))
        if text is None:
            text = _token_text(self.special_map.get(field))
        if text is None:
            return -1
        i = self._tok.token_to_id(text)
        if i is None:
            raise ValueError(f"{config_file}: {field} {text!r} is not in the vocabulary of {self.model_path}")
        return int(i)

    def _template_adds(self) -> tuple[bool, bool]:
        """Whether the post-processor puts BOS first / EOS last on a single sequence."""
        plain = self._tok.encode("a", add_special_tokens=False).ids
        full = self._tok.encode("a", add_special_tokens=True).ids
        return (self._bos >= 0 and full[:1] == [self._bos] and plain[:1] != [self._bos],
                self._eos >= 0 and full[-1:] == [self._eos] and plain[-1:] != [self._eos])

    def _eos_list(self) -> list[int]:
        """EOS ids generation stops at: generation_config.json's eos_token_id (int or list) + eos_token."""
        value = self.generation_config.get("eos_token_id")
        listed = value if isinstance(value, list) else ([value] if value is not None else [])
        out = [self._eos] if self._eos >= 0 else []
        for i in listed:
            if not isinstance(i, int) or not 0 <= i < self.vocab_size:
                raise ValueError(f"{os.path.join(self.directory, GENERATION_CONFIG)}: eos_token_id {i!r} is not in "
                                 f"the vocabulary of {self.model_path} ({self.vocab_size} tokens)")
            if i not in out:
                out.append(i)
        return out

    # --- ids -------------------------------------------------------------------------------------
    @property
    def bos_id(self) -> int:
        return self._bos

    @property
    def eos_id(self) -> int:
        return self._eos

    @property
    def unk_id(self) -> int:
        return self._unk

    @property
    def pad_id(self) -> int:
        """The declared pad token, else EOS (any valid embedding index: padding is always masked)."""
        for i in (self._pad, self._eos, 0):
            if i >= 0:
                return i
        return 0

    @property
    def declared_pad_id(self) -> int:
        return self._pad

    @property
    def vocab_size(self) -> int:
        """Number of ids (base vocabulary + added tokens), as len(AutoTokenizer)."""
        return int(self._tok.get_vocab_size(with_added_tokens=True))

    @functools.cached_property
    def special_tokens(self) -> dict[str, int]:
        """Text -> id of the added tokens marked special (never produced by encoding plain text)."""
        return {t.content: int(i) for i, t in self._tok.get_added_tokens_decoder().items() if t.special}

    @functools.cached_property
    def added_tokens(self) -> dict[str, int]:
        """Text -> id of every added token, special or not (matched whole before BPE)."""
        return {t.content: int(i) for i, t in self._tok.get_added_tokens_decoder().items()}

    # --- files -----------------------------------------------------------------------------------
    @property
    def files(self) -> list[str]:
        """tokenizer.json and the Hugging Face files beside it (what travels with a model)."""
        found = [self.model_path]
        for name in BPE_FILES[1:]:
            path = os.path.join(self.directory, name)
            if os.path.isfile(path):
                found.append(path)
        return found

    def sha256(self) -> str:
        """Fingerprint of what decides the ids: tokenizer.json's bytes and the id-relevant fields of
        tokenizer_config.json (a chat template or model_max_length change keeps the token store)."""
        h = hashlib.sha256()
        with open(self.model_path, "rb") as f:
            h.update(f.read())
        h.update(json.dumps({k: self.config.get(k) for k in _ID_FIELDS}, sort_keys=True, default=str).encode())
        return h.hexdigest()

    fingerprint = sha256

    def write_hf_files(self, directory: str, tokenizer_config: dict | None = None) -> list[str]:
        """The files unchanged into `directory`, tokenizer_config.json replaced by `tokenizer_config`
        when given (the run's chat template), so transformers loads the same ids."""
        os.makedirs(directory, exist_ok=True)
        if tokenizer_config == self.config:
            tokenizer_config = None  # nothing changed: the file itself, byte for byte
        written = []
        for source in self.files:
            name = os.path.basename(source)
            if name == GENERATION_CONFIG:  # a model file: the exporter writes it (with these EOS ids)
                continue
            target = os.path.join(directory, name)
            if name == TOKENIZER_CONFIG and tokenizer_config is not None:
                continue
            if os.path.abspath(source) != os.path.abspath(target):
                shutil.copyfile(source, target + ".tmp")
                os.replace(target + ".tmp", target)
            written.append(target)
        if tokenizer_config is not None:
            path = os.path.join(directory, TOKENIZER_CONFIG)
            write_json(path, tokenizer_config)
            written.append(path)
        return written

    # --- encode / decode ---------------------------------------------------------------------------
    def _wrap(self, ids: list[int], bos: bool | None, eos: bool | None) -> list[int]:
        if bos if bos is not None else self.add_bos:
            ids = [self._bos] + ids
        if eos if eos is not None else self.add_eos:
            ids = ids + [self._eos]
        return ids

    def _default(self, bos: bool | None, eos: bool | None) -> bool:
        """Whether bos/eos ask for what the post-processor does (then it does it, as transformers)."""
        return (bos is None or bos == self.add_bos) and (eos is None or eos == self.add_eos)

    def encode(self, text: str, bos: bool | None = None, eos: bool | None = None) -> list[int]:
        """Ids of `text`; bos/eos None -> the post-processor's (LLaMA-3: BOS, no EOS)."""
        if self._default(bos, eos):
            return list(self._tok.encode(text, add_special_tokens=True).ids)
        return self._wrap(list(self._tok.encode(text, add_special_tokens=False).ids), bos, eos)

    def encode_batch(self, texts: Sequence[str], bos: bool | None = None, eos: bool | None = None,
                     num_threads: int = 0) -> list[list[int]]:
        """Many texts on all cores (tokenizers' Rust thread pool; RAYON_NUM_THREADS caps it)."""
        if self._default(bos, eos):
            return [list(e.ids) for e in self._tok.encode_batch_fast(list(texts), add_special_tokens=True)]
        out = self._tok.encode_batch_fast(list(texts), add_special_tokens=False)
        return [self._wrap(list(e.ids), bos, eos) for e in out]

    def encode_chunk(self, text: str, at_start: bool) -> list[tuple[int, int, int]]:
        """(id, begin byte, end byte) per token of a chunk between special tokens, as HF tokenizes it.

        Byte-level BPE has no dummy prefix, so `at_start` changes nothing. Added tokens inside the chunk
        are matched whole, as transformers does when it tokenizes a rendered chat.
        """
        enc = self._tok.encode(text, add_special_tokens=False)
        # Char offsets -> UTF-8 byte offsets of the chunk.
        starts = [0]
        for ch in text:
            starts.append(starts[-1] + len(ch.encode("utf-8")))
        return [(int(i), starts[b], starts[e]) for i, (b, e) in zip(enc.ids, enc.offsets)]

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        """Text of `ids` (transformers 5 does no clean-up of spaces for BPE)."""
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    decode_as_hf = decode  # tokenizers' decoder is transformers' decoder

    def id_to_piece(self, i: int) -> str:
        return self._tok.id_to_token(int(i))

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def __repr__(self) -> str:
        return (f"BPETokenizer({self.model_path!r}, vocab_size={self.vocab_size}, add_bos={self.add_bos}, "
                f"eos_ids={self.eos_ids})")


# --------------------------------------------------------------------------------------------------
# Extension (vocabulary growth keeps every id)
# --------------------------------------------------------------------------------------------------
def read_spec(path: str) -> dict:
    """A tokenizer.json as its JSON object (errors name the file)."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not a readable tokenizer.json ({err})") from err


def all_ids(spec: dict) -> dict[str, int]:
    """Token -> id over the BPE vocabulary and the added tokens."""
    ids = dict(spec["model"]["vocab"])
    ids.update({t["content"]: int(t["id"]) for t in spec.get("added_tokens", [])})
    return ids


def check_bpe_extends(base_file: str, extended_file: str) -> tuple[int, int]:
    """(base size, extended size); error naming both files unless every base token keeps its id."""
    base, ext = all_ids(read_spec(base_file)), all_ids(read_spec(extended_file))
    for token, i in base.items():
        if ext.get(token) != i:
            raise ValueError(f"{extended_file}: {token!r} has id {ext.get(token)} but {i} in the base {base_file}; "
                             "an extended tokenizer must keep every base id")
    return max(base.values()) + 1, max(ext.values()) + 1


def bpe_row_sources(base_file: str, extended_file: str) -> dict[int, list[int]]:
    """For each new id of the extended tokenizer.json: the base ids its text splits into (the BPE
    model alone: a new token is already in the model's symbol space, e.g. byte-level "Ġmetformin")."""
    n_base, _ = check_bpe_extends(base_file, extended_file)
    base = tokenizers.Tokenizer.from_file(base_file)
    new = {i: t for t, i in all_ids(read_spec(extended_file)).items() if i >= n_base}
    sources = {}
    for i, token in sorted(new.items()):
        pieces = base.model.tokenize(token)
        sources[i] = [int(p.id) for p in pieces] if "".join(p.value for p in pieces) == token else []
    return sources
