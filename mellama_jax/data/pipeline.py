"""The pretraining input pipeline: documents -> tokens -> fixed-length rows -> weighted mixture -> batches.

Interface (what the train loop consumes, data/batch_source.BatchSource): `build_train_pipeline(data_config,
*, global_batch_size, process_index, process_count[, tokenizer]) -> TrainPipeline` with `.batch(step)`,
`.eval_batches(source, n)`, `.stats()`, `.state()` / `.restore(state)`, `.fingerprint()`,
`.source_names`, `.vocab_size`, `.tokenizer`.

How a batch is made, and why resume is exact:
  1. A row source (`RowSource`) gives each source's train/eval documents and lays them out as rows.
     The default, `DocumentRows`, reads and tokenizes documents once into the on-disk token cache
     (token_cache.py; memory-mapped, only per-document metadata in RAM) and lays them out as
     `data.packing` says (rows.py): "concat" windows over the token stream, or "pack"ed whole
     documents with segment ids. With data.token_store set, `StoreRows` (data/store/row_source.py)
     reads a token store built offline instead (nothing tokenized at launch; every host maps the
     same global documents and reads only the rows it draws). Instruction tuning passes its own
     row source (mellama_jax.sft.data).
  2. Row j of the batch at `step` is the host's global row r = step * local_batch + j. Its source is
     drawn from the mixture weights by a counter-based hash of (seed, host, r) (mixture_order.py); it
     takes the k-th row of that source, k = how many earlier rows chose that source (prefix counts,
     cached), from the source's row permutation for epoch k // n_rows (seeded by seed, host, source,
     epoch).
     So a batch is a pure function of (seed, step, process_index) and the data: resuming at any step
     reproduces the same batches without saving iterator state. From a token store the rows are
     drawn in global order (TrainPipeline): the global batch is drawn as host 0 of 1 and process p
     takes rows [p * L, (p + 1) * L) of it, so the batches are a function of (seed, step) alone and
     a run resumes on any number of processes.
  3. Budget-faithful ablations (data.target_budget_tokens = T, the full run's budget; the run's own
     budget b = train_steps x global_batch_size x seq_len): source s repeats r_s = T x w_s / tokens_s
     times in the full run; keeping tokens_s x b / T of it (token_cache.subsample_documents, a hash of
     (seed, source, document id)) makes the short run repeat it r_s times too. stats() reports
     data/<s>/target_repetition (r_s) and data/<s>/repetition (b x w_s / kept tokens), and
     repetition_so_far(tokens) the repetition the draws have realised up to a step.
"""
from __future__ import annotations

import logging
import os
import time
from typing import Protocol

import numpy as np

from mellama_jax.data.config import parse_mixture_stages, resolved_data_config
from mellama_jax.data.mixture_order import mixture_choices
from mellama_jax.data.rows import PACKINGS, ConcatRows, Rows, layout_rows
from mellama_jax.data.sources.report import BadInputReport, DataError
from mellama_jax.data.store.reader import DEFAULT_CACHE_BYTES
from mellama_jax.data.store.row_source import StoreRows
from mellama_jax.data.token_cache import load_source_tokens, source_dict, source_fingerprint, subsample_documents
from mellama_jax.data.token_store import TokenizedDocs
from mellama_jax.tokenizer import Tokenizer, load_tokenizer

__all__ = ["TrainPipeline", "build_train_pipeline", "RowSource", "DocumentRows", "StoreRows", "pretraining_rows"]

log = logging.getLogger("mellama_jax.data")
_COUNT_STRIDE = 256          # steps between cached prefix counts of the mixture draws


class RowSource(Protocol):
    """Where a pipeline's rows come from: each source's documents, and their layout as rows.

    Optional: `global_rows = True` says load() gives every host all of a source's documents (a token
    store), so the pipeline draws in global order (TrainPipeline); `source_fingerprint(name, src)`
    and `fingerprint()` replace the file-stats provenance when the source files are not read.
    """

    packing: str                     # the layout's name (data.packing), kept in state() and fingerprint()
    chat_template_jinja: str | None  # the chat template the rows were rendered with; None for plain text

    def load(self, name: str, data_config, tokenizer: Tokenizer, process_index: int,
             process_count: int) -> tuple[dict[str, TokenizedDocs], BadInputReport]:
        """{"train", "eval"} documents of one source on this host, and its bad-input report (checked)."""
        ...

    def make_rows(self, docs: TokenizedDocs, seq_len: int, for_eval: bool) -> Rows: ...

    def state(self) -> dict:
        """Keys added to the pipeline state: a resumed run must lay out its rows the same way."""
        ...

    def stats(self, name: str, docs: dict[str, TokenizedDocs]) -> dict[str, float]:
        """Per-source figures added to the pipeline's stats()."""
        ...


class DocumentRows:
    """Pretraining rows: documents tokenized through the token cache, as concat windows or packed."""

    chat_template_jinja = None
    global_rows = False  # each host tokenizes its own share of the documents

    def __init__(self, packing: str):
        if packing not in PACKINGS:
            raise ValueError(f"data.packing={packing!r}: expected 'concat' or 'pack'")
        self.packing = packing

    def load(self, name, data_config, tokenizer, process_index, process_count):
        return load_source_tokens(name, data_config, tokenizer, process_index, process_count)

    def make_rows(self, docs: TokenizedDocs, seq_len: int, for_eval: bool) -> Rows:
        return layout_rows(docs, self.packing, seq_len, for_eval)

    def state(self) -> dict:
        return {}

    def stats(self, name: str, docs: dict[str, TokenizedDocs]) -> dict[str, float]:
        return {}


def pretraining_rows(data_config) -> RowSource:
    """The row source of a pretraining run: the token store at data.token_store when it is set (global
    row order, nothing tokenized at launch), else the documents through the in-process token cache."""
    url = str(data_config.get("token_store", "") or "")
    packing = str(data_config.packing)
    if url:
        mb = data_config.get("store_cache_mb", None)
        return StoreRows(url, packing, int(mb) << 20 if mb else DEFAULT_CACHE_BYTES)
    return DocumentRows(packing)


class TrainPipeline:
    """Host-local batches of the weighted source mixture, a pure function of (seed, step, host).

    `row_source` gives each source's documents and their row layout: pretraining_rows(data_config) when
    None (a token store, or documents through the token cache), the SFT row source for instruction
    tuning (mellama_jax.sft.data).

    Row order. In-process (host-local) mode, the default: each host draws from its own documents as
    `process_index` of `process_count` (the module docstring). Global mode, when the row source's
    `global_rows` is set (a token store: every host holds every document): the global batch of `step`
    is what host 0 of 1 would draw with local_batch = global_batch_size (mixture draws, row
    permutations, prefix counts and the budget subsample all as host 0 of 1), and process p takes
    global rows [p * L, (p + 1) * L) of it (L = local batch; held-out batches likewise). So a batch is
    a function of (seed, step) alone: a run resumed on 1, 2 or 4 processes sees the same global
    batches, and at one process the two modes give identical batches.
    """

    def __init__(self, data_config, *, global_batch_size: int, process_index: int, process_count: int,
                 tokenizer: Tokenizer | None = None, row_source: RowSource | None = None,
                 train_steps: int | None = None):
        if global_batch_size % process_count:
            raise ValueError(f"global_batch_size={global_batch_size} is not divisible by "
                             f"process_count={process_count}")
        self.config = data_config
        self.process_index, self.process_count = int(process_index), int(process_count)
        self.local_batch = global_batch_size // process_count
        self.seq_len = int(data_config.seq_len)
        self.seed = int(data_config.seed)
        if row_source is not None and data_config.get("token_store", "") and \
                not getattr(row_source, "global_rows", False):
            raise DataError(f"data.token_store={data_config.token_store!r} is a pretraining setting; this "
                            "pipeline reads its own rows (instruction tuning): set data.token_store=''")
        self.row_source = row_source if row_source is not None else pretraining_rows(data_config)
        self.packing = self.row_source.packing
        # Global order draws the global batch as host 0 of 1 and slices it (see the class docstring).
        self.global_order = bool(getattr(self.row_source, "global_rows", False))
        self._draw_batch = global_batch_size if self.global_order else self.local_batch  # rows drawn a step
        self._draw_host = 0 if self.global_order else self.process_index               # host of the draws
        self._row_offset = self.process_index * self.local_batch if self.global_order else 0
        self._data_hosts = 1 if self.global_order else self.process_count  # hosts the documents split over
        self.chat_template_jinja = self.row_source.chat_template_jinja  # written into the checkpoints
        # The train loop passes the tokenizer it chose (config.data.tokenizer_path, else the one of
        # config.model.init_from) after checking it against the model.
        if tokenizer is None:
            if not data_config.get("tokenizer_path", ""):
                raise DataError("data.tokenizer_path is empty: name a tokenizer.model or tokenizer.json (the train "
                                "loop fills it in from config.model.init_from)")
            tokenizer = load_tokenizer(os.path.expanduser(data_config.tokenizer_path))
        self.tokenizer = tokenizer
        self.vocab_size = self.tokenizer.vocab_size

        # Spec applied, perplexity text set added as an eval-only source (see data/config.py).
        try:
            data_config = self.config = resolved_data_config(data_config)
        except ValueError as err:
            raise DataError(str(err)) from None
        mixture = {k: float(v) for k, v in dict(data_config.mixture).items()}
        for name, w in mixture.items():
            if name not in data_config.sources:
                raise DataError(f"data.mixture.{name}: no such source in data.sources "
                                f"({sorted(data_config.sources.keys())})")
            if w < 0:
                raise DataError(f"data.mixture.{name}={w}: weights must be >= 0")
        try:
            self.stages = parse_mixture_stages(str(data_config.get("mixture_stages", "") or ""), mixture)
        except ValueError as err:
            raise DataError(str(err)) from None
        # Every source with a mixture entry is loaded and evaluated; one whose weight is 0 in every
        # stage is never drawn for training (eval only: forgetting / held-out measures).
        self.source_names = list(mixture)
        if not any(w > 0 for w in mixture.values()):
            raise DataError("data.mixture: every weight is zero; nothing to train on")
        self._trained = [any(st.weights[n] > 0 for st in self.stages) for n in self.source_names]
        weights = np.array([mixture[n] for n in self.source_names])
        self.weights = weights / weights.sum()  # target token fractions (of the first stage)

        self.target_budget = float(data_config.get("target_budget_tokens", 0) or 0)
        self.budget_fraction = self._budget_fraction(global_batch_size, train_steps)
        self._full_train_tokens: dict[str, int] = {}

        self._reports: dict[str, BadInputReport] = {}
        self._docs: dict[str, dict[str, TokenizedDocs]] = {}
        self._rows, self._eval_rows = [], {}
        self._timings = {}
        for name, trained in zip(self.source_names, self._trained):
            t0 = time.perf_counter()
            docs, report = self.row_source.load(name, data_config, self.tokenizer, self._draw_host,
                                                self._data_hosts)
            self._full_train_tokens[name] = docs["train"].num_tokens
            if trained and self.budget_fraction < 1.0:
                docs = {**docs, "train": self._subsample(name, docs["train"])}
            self._timings[name] = time.perf_counter() - t0
            self._reports[name], self._docs[name] = report, docs
            if trained and docs["train"].num_docs == 0:
                raise DataError(
                    f"source {name!r} has mixture weight {mixture[name]} but its train split is empty on "
                    f"host {self.process_index}/{self.process_count} (paths {list(data_config.sources[name].paths)}, "
                    f"{report.good} documents read, eval_fraction {data_config.sources[name].eval_fraction})")
            self._rows.append(self.row_source.make_rows(docs["train"], self.seq_len, False) if trained
                              else ConcatRows(np.zeros(0, np.int32), self.seq_len))
            self._eval_rows[name] = (self.row_source.make_rows(docs["eval"], self.seq_len, True)
                                     if docs["eval"].num_docs else None)
            log.info("data: %s", report.summary())
        # Rows are drawn with probability ~ weight / fill so that *token* fractions match the weights
        # even when packed rows of different sources carry different amounts of padding.
        fills = np.array([r.fill if r.num_rows else 1.0 for r in self._rows])
        self._stage_cums = [self._cum_weights(st.weights, fills) for st in self.stages]
        self.row_probs = np.diff(np.concatenate([[0.0], self._stage_cums[0]]))
        self._cum = self._stage_cums[0]
        zero = np.zeros(len(self.source_names), np.int64)
        self._count_cache: dict[bool, dict[int, np.ndarray]] = {False: {0: zero}, True: {0: zero}}
        self._perm_cache: dict[tuple[int, int], np.ndarray] = {}

    def _budget_fraction(self, global_batch_size: int, train_steps: int | None) -> float:
        """b / T, the share of each source a run of budget b keeps to stand for a run of budget T."""
        if self.target_budget <= 0:
            return 1.0
        batch = int(global_batch_size) * self.seq_len
        if self.target_budget < batch:
            raise DataError(f"data.target_budget_tokens={self.target_budget:g} is smaller than one batch "
                            f"(global_batch_size x seq_len = {batch} tokens)")
        if train_steps is None:
            raise DataError("data.target_budget_tokens is set but the pipeline was not given the run's "
                            "train steps (build_train_pipeline(..., train_steps=config.train.steps))")
        self.run_budget = int(train_steps) * batch
        if self.target_budget < self.run_budget:
            raise DataError(f"data.target_budget_tokens={self.target_budget:g} is smaller than this run's "
                            f"own budget (train.steps x global_batch_size x seq_len = {self.run_budget})")
        return self.run_budget / self.target_budget

    def _subsample(self, name: str, train: TokenizedDocs) -> TokenizedDocs:
        kept = subsample_documents(train, self.budget_fraction, seed=self.seed, source=name,
                                   process_index=self._draw_host, process_count=self._data_hosts)
        if kept.num_tokens < self.seq_len + 1:
            raise DataError(f"source {name!r}: under data.target_budget_tokens={self.target_budget:g} this "
                            f"run keeps {kept.num_tokens} of its {train.num_tokens} train tokens on host "
                            f"{self.process_index}, less than one row of {self.seq_len + 1}; train longer "
                            "or lower the target budget")
        log.info("data: %s keeps %d of %d train tokens (%d documents) for target budget %.4g",
                 name, kept.num_tokens, train.num_tokens, kept.num_docs, self.target_budget)
        return kept

    def repetition(self) -> dict[str, tuple[float, float]]:
        """Under a target budget: {source: (full-run repetition r_s = T x w_s / tokens_s, this run's
        b x w_s / kept tokens)} for every trained source (this host's tokens, its share of the budget;
        in global order every host holds all the tokens and the whole budget)."""
        if self.target_budget <= 0:
            return {}
        out = {}
        for s, name in enumerate(self.source_names):
            if not self._trained[s]:
                continue
            share = float(self.weights[s]) / self._data_hosts
            full, kept = self._full_train_tokens[name], self._docs[name]["train"].num_tokens
            out[name] = (self.target_budget * share / max(full, 1), self.run_budget * share / max(kept, 1))
        return out

    def repetition_so_far(self, source_tokens) -> dict[str, float]:
        """data/<source>/repetition: tokens trained on so far (all hosts, per source) over the source's
        kept tokens (all hosts: this host's x process_count; in global order every host holds all of
        them); {} without a target budget."""
        if self.target_budget <= 0:
            return {}
        out = {}
        for s, name in enumerate(self.source_names):
            if self._trained[s]:
                kept = self._docs[name]["train"].num_tokens * self._data_hosts
                out[f"data/{name}/repetition"] = float(source_tokens[s]) / max(kept, 1)
        return out

    def _cum_weights(self, weights: dict[str, float], fills: np.ndarray) -> np.ndarray:
        """Cumulative row-draw probabilities of one stage; the last drawable source ends at exactly 1,
        so a zero-weight source after it is never drawn."""
        w = np.array([weights[n] for n in self.source_names], np.float64)
        w = w / w.sum()
        row_p = w / fills
        cum = np.cumsum(row_p / row_p.sum())
        cum[int(np.flatnonzero(w > 0)[-1]):] = 1.0
        return cum

    # --- mixture bookkeeping -------------------------------------------------------------------
    def stage_of(self, step: int) -> int:
        """Index of the mixture stage that `step` (0-based) trains in."""
        return max(i for i, st in enumerate(self.stages) if st.start_step <= step)

    def _choices(self, r0: int, r1: int) -> np.ndarray:
        """Source of each drawn row in [r0, r1) (this host's rows; in global order the global rows):
        each row drawn with the weights of its step's stage."""
        b = self._draw_batch
        parts = []
        for i, st in enumerate(self.stages):
            end = self.stages[i + 1].start_step * b if i + 1 < len(self.stages) else r1
            lo, hi = max(r0, st.start_step * b), min(r1, end)
            if lo < hi:
                parts.append(mixture_choices(self.seed, self._draw_host, np.arange(lo, hi, dtype=np.int64),
                                             self._stage_cums[i]))
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)

    def stage_row_counts(self, step: int) -> tuple[int, np.ndarray]:
        """(stage of the last step before `step`, this process's rows per source drawn in that stage
        up to `step`, then their total): realised stage fractions, a pure function like the batches.
        In global order these are the rows of this process's slices, so the sum over processes is
        the global count, as in host-local order."""
        stage = self.stage_of(max(step - 1, 0))
        own = self.global_order
        counts = self._counts_before(step, own) - self._counts_before(self.stages[stage].start_step, own)
        return stage, np.concatenate([counts, [counts.sum()]]).astype(np.int64)

    def _count_steps(self, s0: int, s1: int, own: bool) -> np.ndarray:
        """Rows per source drawn in steps [s0, s1): all drawn rows, or (own) this process's slices."""
        b = self._draw_batch
        choices = self._choices(s0 * b, s1 * b)
        if own:
            choices = choices.reshape(-1, b)[:, self._row_offset:self._row_offset + self.local_batch].ravel()
        return np.bincount(choices, minlength=len(self.source_names))

    def _counts_before(self, step: int, own: bool = False) -> np.ndarray:
        """How many rows of each source were drawn before `step` (this host's; in global order all
        global rows, or with `own` this process's slices), cached every _COUNT_STRIDE steps."""
        own = own and self.global_order  # host-local order: a host's draws are its own rows
        cache = self._count_cache[own]
        base = (step // _COUNT_STRIDE) * _COUNT_STRIDE
        known = max(k for k in cache if k <= base)
        counts = cache[known].copy()
        chunk = _COUNT_STRIDE * max(1, (1 << 20) // (_COUNT_STRIDE * self._draw_batch))  # steps per pass
        s = known
        while s < base:  # extend the cache to `base` in bounded chunks
            s1 = min(base, s + chunk)
            counts += self._count_steps(s, s1, own)
            s = s1
            if s % _COUNT_STRIDE == 0:
                cache[s] = counts.copy()
        if base < step:
            counts = counts + self._count_steps(base, step, own)
        return counts

    def _row_index(self, s: int, k: int) -> int:
        n = self._rows[s].num_rows
        epoch, i = divmod(k, n)
        key = (s, epoch)
        perm = self._perm_cache.get(key)
        if perm is None:
            if len(self._perm_cache) > 2 * len(self.source_names):
                self._perm_cache.clear()
            rng = np.random.default_rng([self.seed, self._draw_host, s, epoch, 0x5EED])
            perm = self._perm_cache[key] = rng.permutation(n)
        return int(perm[i])

    # --- batches -------------------------------------------------------------------------------
    def _empty(self, b: int) -> dict[str, np.ndarray]:
        s = self.seq_len
        return {"inputs": np.full((b, s), self.tokenizer.pad_id, np.int32),
                "targets": np.full((b, s), self.tokenizer.pad_id, np.int32),
                "positions": np.zeros((b, s), np.int32), "segment_ids": np.zeros((b, s), np.int32),
                "loss_mask": np.zeros((b, s), np.float32), "source_ids": np.full((b, s), -1, np.int32)}

    def batch(self, step: int) -> dict[str, np.ndarray]:
        """The host-local batch for `step` (the same for the same seed, step and host, always; in
        global order rows [p * L, (p + 1) * L) of the global batch, the same for any host count)."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        b, off = self._draw_batch, self._row_offset
        drawn = self._choices(step * b, (step + 1) * b)
        counts = self._counts_before(step)
        if off:  # the rows of the processes before this one, earlier in the global batch
            counts = counts + np.bincount(drawn[:off], minlength=len(self.source_names))
        choices = drawn[off:off + self.local_batch]
        out = self._empty(self.local_batch)
        for j, s in enumerate(choices.tolist()):
            k = int(counts[s])
            counts[s] += 1
            self._rows[s].write(self._row_index(s, k), out, j, s)
        return out

    def eval_batches(self, source_name: str, num_batches: int) -> list[dict[str, np.ndarray]]:
        """Held-out batches of one source, in a fixed order; rows past its end are all padding. In
        global order batch i is global held-out rows [i * G, (i + 1) * G), of which this process
        takes its slice."""
        if source_name not in self._eval_rows:
            raise KeyError(f"eval_batches: unknown source {source_name!r}; have {self.source_names}")
        rows = self._eval_rows[source_name]
        if rows is None or rows.num_rows == 0:
            log.warning("data: source %r has no held-out documents on this host (eval_fraction=%s)",
                        source_name, self.config.sources[source_name].eval_fraction)
            return []
        s = self.source_names.index(source_name)
        out = []
        for i in range(num_batches):
            batch = self._empty(self.local_batch)
            for j in range(self.local_batch):
                r = i * self._draw_batch + self._row_offset + j
                if r < rows.num_rows:
                    rows.write(r, batch, j, s)
            out.append(batch)
        return out

    # --- bookkeeping ---------------------------------------------------------------------------
    def state(self) -> dict:
        """Nothing to save beyond these checks: batches are a pure function of (seed, step, host), in
        global order of (seed, step): then nothing here depends on the host count, so a run resumes
        on any number of processes."""
        state = {"kind": "stateless", "seed": self.seed, "packing": self.packing, "seq_len": self.seq_len,
                 "sources": self.source_names,
                 "rows": {n: int(r.num_rows) for n, r in zip(self.source_names, self._rows)}}
        if self.target_budget > 0:  # the subsample: a resumed run must keep the same one
            state["target_budget_tokens"] = self.target_budget
            state["budget_fraction"] = self.budget_fraction
        if len(self.stages) > 1:
            state["stages"] = [[st.start_step, [st.weights[n] for n in self.source_names]] for st in self.stages]
        return {**state, **self.row_source.state()}

    def fingerprint(self) -> dict:
        """What this run's data is (for checkpoint provenance): per-source config + file stats
        hashes, mixture, layout and tokenizer."""
        sources = {}
        fingerprint_source = getattr(self.row_source, "source_fingerprint", source_fingerprint)
        for name in self.source_names:
            sources[name] = fingerprint_source(name, source_dict(self.config.sources[name]))
        extra = self.row_source.fingerprint() if hasattr(self.row_source, "fingerprint") else {}
        return {"sources": sources, "mixture": dict(zip(self.source_names, map(float, self.weights))),
                "seq_len": self.seq_len, "packing": self.packing, "seed": self.seed,
                "tokenizer_sha256": self.tokenizer.sha256(), **extra,
                **({"target_budget_tokens": self.target_budget, "budget_fraction": self.budget_fraction}
                   if self.target_budget > 0 else {})}

    def restore(self, state: dict) -> None:
        """Check that a resumed run reads the same data the same way (else batches would differ)."""
        mine = self.state()
        if isinstance(mine.get("token_store"), dict) and isinstance(state.get("token_store"), dict):
            # The same store content at another URL (copied to a bucket) reads the same rows: its
            # sha256 (store_sha256) is what must match.
            saved = state["token_store"]
            if saved.get("url") != mine["token_store"]["url"] and saved.get("sha256") == mine["token_store"]["sha256"]:
                log.info("data: resuming from token store %s (the checkpoint read the same store at %s)",
                         mine["token_store"]["url"], saved.get("url"))
                state = {**state, "token_store": mine["token_store"]}
        diff = {k: (state.get(k), v) for k, v in mine.items() if state.get(k) != v}
        if diff:
            raise DataError(f"data pipeline differs from the checkpointed one (saved, now): {diff}; "
                            "resuming would not reproduce the same batches")

    def stats(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for s, name in enumerate(self.source_names):
            rep, docs = self._reports[name], self._docs[name]
            out[f"data/{name}/weight"] = float(self.weights[s])
            out[f"data/{name}/documents"] = rep.good
            out[f"data/{name}/bad_items"] = rep.num_bad
            for reason, n in rep.bad.items():
                out[f"data/{name}/bad/{reason}"] = n
            out[f"data/{name}/train_docs"] = docs["train"].num_docs
            out[f"data/{name}/train_tokens"] = docs["train"].num_tokens
            out[f"data/{name}/eval_tokens"] = docs["eval"].num_tokens
            out[f"data/{name}/train_rows"] = self._rows[s].num_rows
            out[f"data/{name}/load_seconds"] = round(self._timings[name], 3)
        for name, (full, realised) in self.repetition().items():
            out[f"data/{name}/target_repetition"] = full
            out[f"data/{name}/repetition"] = realised
            out[f"data/{name}/full_train_tokens"] = self._full_train_tokens[name]
        for name in self.source_names:
            out.update(self.row_source.stats(name, self._docs[name]))
        return out

    def _trained_rows(self) -> int:
        return int(sum(r.num_rows for r, t in zip(self._rows, self._trained) if t))

    def epoch_rows(self) -> int:
        """Rows in one pass over every trained source on this host (an epoch of the mixture). In
        global order every host holds all rows: this is its share of them, so that the sum over
        processes (what the train loop takes) is the global count exactly."""
        rows = self._trained_rows()
        if not self.global_order:
            return rows
        return rows // self.process_count + int(self.process_index < rows % self.process_count)

    def steps_for_epochs(self, epochs: float, global_rows: int | None = None) -> int:
        """Optimizer steps for `epochs` passes over the mixture's rows (all hosts: global_rows)."""
        if global_rows is None:
            global_rows = self._trained_rows() * self._data_hosts
        rows = int(global_rows)
        return max(1, int(np.ceil(epochs * rows / (self.local_batch * self.process_count))))

    def reports(self) -> dict[str, BadInputReport]:
        return dict(self._reports)


def build_train_pipeline(data_config, *, global_batch_size: int, process_index: int = 0,
                         process_count: int = 1, tokenizer: Tokenizer | None = None,
                         train_steps: int | None = None) -> TrainPipeline:
    """The pretraining pipeline (a token store at data.token_store, else documents through the token
    cache; laid out as data.packing); `train_steps` sets the run's own budget under
    data.target_budget_tokens."""
    return TrainPipeline(data_config, global_batch_size=global_batch_size, process_index=process_index,
                         process_count=process_count, tokenizer=tokenizer, train_steps=train_steps)
