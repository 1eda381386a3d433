"""Pretraining rows from a token store (data.token_store): the row source of a global-order pipeline.

Why "global": the in-process path tokenizes a host's own share of the documents, so which rows a
step sees depends on the host count. A store holds every document once, already tokenized, and every
host opens the same global documents (reading only the rows it draws, reader.py), so the pipeline
draws the global batch as one host would (`global_rows = True`, pipeline.TrainPipeline) and each
process takes its slice: the batches are a function of (seed, step) alone, on any number of hosts.

Before any row is laid out the store is checked against the run: every source the run trains or
evaluates must be in it, built with this run's tokenizer and split rule (eval_fraction, dedup,
exclude_ids, reading keys); otherwise a DataError names both hashes and the source. No source file
is read and nothing is tokenized at launch.
"""
from __future__ import annotations

import hashlib
import json

from mellama_jax.data.rows import PACKINGS, Rows, layout_rows
from mellama_jax.data.sources.report import BadInputReport
from mellama_jax.data.store.format import SPLITS
from mellama_jax.data.store.reader import DEFAULT_BLOCK_BYTES, DEFAULT_CACHE_BYTES, TokenStore, open_token_store
from mellama_jax.data.token_store import TokenizedDocs
from mellama_jax.tokenizer import Tokenizer

__all__ = ["StoreRows", "first_documents"]


def first_documents(docs: TokenizedDocs, n: int) -> TokenizedDocs:
    """The first n documents (data.max_docs_per_source, as the in-process path keeps them); n <= 0: all."""
    if n <= 0 or n >= docs.num_docs:
        return docs
    offsets = docs.offsets[:n + 1].copy()
    return TokenizedDocs(docs.tokens.head(int(offsets[-1])), offsets)


class StoreRows:
    """Rows of a token store's global documents, laid out as data.packing says (pipeline.RowSource)."""

    chat_template_jinja = None
    global_rows = True  # every host holds every document: the pipeline draws in global order

    def __init__(self, url: str, packing: str, cache_bytes: int = DEFAULT_CACHE_BYTES,
                 block_bytes: int = DEFAULT_BLOCK_BYTES):
        if packing not in PACKINGS:
            raise ValueError(f"data.packing={packing!r}: expected 'concat' or 'pack'")
        self.url, self.packing = str(url), packing
        self.cache_bytes, self.block_bytes = int(cache_bytes), int(block_bytes)
        self._store: TokenStore | None = None

    @property
    def store(self) -> TokenStore:
        if self._store is None:
            self._store = open_token_store(self.url, cache_bytes=self.cache_bytes, block_bytes=self.block_bytes)
        return self._store

    def load(self, name: str, data_config, tokenizer: Tokenizer, process_index: int,
             process_count: int) -> tuple[dict[str, TokenizedDocs], BadInputReport]:
        """Every document of source `name` (the host indices do not matter: the rows are global)."""
        store = self.store
        store.check(name, data_config.sources[name], tokenizer.sha256())
        max_docs = int(data_config.get("max_docs_per_source", 0) or 0)
        docs = {split: first_documents(store.docs(name, split), max_docs) for split in SPLITS}
        report = store.report(name)
        report.check(float(data_config.max_bad_fraction))
        return docs, report

    def make_rows(self, docs: TokenizedDocs, seq_len: int, for_eval: bool) -> Rows:
        return layout_rows(docs, self.packing, seq_len, for_eval)

    def state(self) -> dict:
        """A resumed run must read the same store content in the same global order (any host count)."""
        return {"row_order": "global", "token_store": {"url": self.store.url, "sha256": self.store.sha256}}

    def source_fingerprint(self, name: str, src) -> str:
        """What the store built source `name` from (its files' sha256, split rule, tokenizer): the
        provenance of the data, without opening a source file (they may not be on this machine)."""
        entry = self.store.manifest["sources"][name]
        blob = {"files": entry.get("files", []), "split_sha256": entry.get("split_sha256", ""),
                "tokenizer_sha256": self.store.manifest.get("tokenizer", {}).get("sha256", "")}
        return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()

    def fingerprint(self) -> dict:
        return {"token_store": self.store.url, "token_store_sha256": self.store.sha256}

    def stats(self, name: str, docs: dict[str, TokenizedDocs]) -> dict[str, float]:
        out = {f"data/{name}/store_shards": len(self.store.manifest["sources"][name].get("shards", []))}
        out.update({f"data/store/{k}": v for k, v in self.store.stats().items()})
        return out
