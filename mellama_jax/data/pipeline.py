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
     documents with segment ids. Instruction tuning passes its own (mellama_jax.sft.data).
  2. Row j of the batch at `step` is the host's global row r = step * local_batch + j. Its source is
     drawn from the mixture weights by a counter-based hash of (seed, host, r) (mixture_order.py); it
     takes the k-th row of that source, k = how many earlier rows chose that source (prefix counts,
     cached), from the source's row permutation for epoch k // n_rows (seeded by seed, host, source,
     epoch).
     So a batch is a pure function of (seed, step, process_index) and the data: resuming at any step
     reproduces the same batches without saving iterator state.
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
from mellama_jax.data.rows import ConcatRows, Rows, concat_rows, pack_rows
from mellama_jax.data.sources.report import BadInputReport, DataError
from mellama_jax.data.token_cache import load_source_tokens, source_dict, source_fingerprint, subsample_documents
from mellama_jax.data.token_store import TokenizedDocs
from mellama_jax.tokenizer import Tokenizer, load_tokenizer

__all__ = ["TrainPipeline", "build_train_pipeline", "RowSource", "DocumentRows"]

log = logging.getLogger("mellama_jax.data")
_COUNT_STRIDE = 256          # steps between cached prefix counts of the mixture draws


class RowSource(Protocol):
    """Where a pipeline's rows come from: each source's documents, and their layout as rows."""

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

    def __init__(self, packing: str):
        if packing not in ("concat", "pack"):
            raise ValueError(f"data.packing={packing!r}: expected 'concat' or 'pack'")
        self.packing = packing

    def load(self, name, data_config, tokenizer, process_index, process_count):
        return load_source_tokens(name, data_config, tokenizer, process_index, process_count)

    def make_rows(self, docs: TokenizedDocs, seq_len: int, for_eval: bool) -> Rows:
        if self.packing == "concat":
            return concat_rows(docs, seq_len, for_eval)
        return pack_rows(docs, seq_len)

    def state(self) -> dict:
        return {}

    def stats(self, name: str, docs: dict[str, TokenizedDocs]) -> dict[str, float]:
        return {}


class TrainPipeline:
    """Host-local batches of the weighted source mixture, a pure function of (seed, step, host).

    `row_source` gives each source's documents and their row layout: DocumentRows(data.packing) when None
    (pretraining), the SFT row source for instruction tuning (mellama_jax.sft.data).
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
        self.row_source = row_source if row_source is not None else DocumentRows(str(data_config.packing))
        self.packing = self.row_source.packing
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
            docs, report = self.row_source.load(name, data_config, self.tokenizer, self.process_index,
                                                self.process_count)
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
        self._count_cache: dict[int, np.ndarray] = {0: np.zeros(len(self.source_names), np.int64)}
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
                                   process_index=self.process_index, process_count=self.process_count)
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
        b x w_s / kept tokens)} for every trained source (this host's tokens, its share of the budget)."""
        if self.target_budget <= 0:
            return {}
        out = {}
        for s, name in enumerate(self.source_names):
            if not self._trained[s]:
                continue
            share = float(self.weights[s]) / self.process_count
            full, kept = self._full_train_tokens[name], self._docs[name]["train"].num_tokens
            out[name] = (self.target_budget * share / max(full, 1), self.run_budget * share / max(kept, 1))
        return out

    def repetition_so_far(self, source_tokens) -> dict[str, float]:
        """data/<source>/repetition: tokens trained on so far (all hosts, per source) over the source's
        kept tokens (all hosts: this host's x process_count); {} without a target budget."""
        if self.target_budget <= 0:
            return {}
        out = {}
        for s, name in enumerate(self.source_names):
            if self._trained[s]:
                kept = self._docs[name]["train"].num_tokens * self.process_count
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
        """Source of each host row in [r0, r1): each row drawn with the weights of its step's stage."""
        b = self.local_batch
        parts = []
        for i, st in enumerate(self.stages):
            end = self.stages[i + 1].start_step * b if i + 1 < len(self.stages) else r1
            lo, hi = max(r0, st.start_step * b), min(r1, end)
            if lo < hi:
                parts.append(mixture_choices(self.seed, self.process_index, np.arange(lo, hi, dtype=np.int64),
                                             self._stage_cums[i]))
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)

    def stage_row_counts(self, step: int) -> tuple[int, np.ndarray]:
        """(stage of the last step before `step`, this host's rows per source drawn in that stage up
        to `step`, then their total): realised stage fractions, a pure function like the batches."""
        stage = self.stage_of(max(step - 1, 0))
        counts = self._counts_before(step) - self._counts_before(self.stages[stage].start_step)
        return stage, np.concatenate([counts, [counts.sum()]]).astype(np.int64)

    def _counts_before(self, step: int) -> np.ndarray:
        """How many rows of each source the host drew before `step` (cached every _COUNT_STRIDE steps)."""
        base = (step // _COUNT_STRIDE) * _COUNT_STRIDE
        known = max(k for k in self._count_cache if k <= base)
        counts = self._count_cache[known].copy()
        chunk = _COUNT_STRIDE * self.local_batch * max(1, (1 << 20) // (_COUNT_STRIDE * self.local_batch))
        r, end = known * self.local_batch, base * self.local_batch
        while r < end:  # extend the cache to `base` in bounded chunks
            r1 = min(end, r + chunk)
            counts += np.bincount(self._choices(r, r1), minlength=len(self.source_names))
            r = r1
            done = r // self.local_batch
            if done % _COUNT_STRIDE == 0:
                self._count_cache[done] = counts.copy()
        if base * self.local_batch < step * self.local_batch:
            counts = counts + np.bincount(self._choices(base * self.local_batch, step * self.local_batch),
                                          minlength=len(self.source_names))
        return counts

    def _row_index(self, s: int, k: int) -> int:
        n = self._rows[s].num_rows
        epoch, i = divmod(k, n)
        key = (s, epoch)
        perm = self._perm_cache.get(key)
        if perm is None:
            if len(self._perm_cache) > 2 * len(self.source_names):
                self._perm_cache.clear()
            rng = np.random.default_rng([self.seed, self.process_index, s, epoch, 0x5EED])
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
        """The host-local batch for `step` (the same for the same seed, step and host, always)."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        b = self.local_batch
        choices = self._choices(step * b, (step + 1) * b)
        counts = self._counts_before(step)
        out = self._empty(b)
        for j, s in enumerate(choices.tolist()):
            k = int(counts[s])
            counts[s] += 1
            self._rows[s].write(self._row_index(s, k), out, j, s)
        return out

    def eval_batches(self, source_name: str, num_batches: int) -> list[dict[str, np.ndarray]]:
        """Held-out batches of one source, in a fixed order; rows past its end are all padding."""
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
                r = i * self.local_batch + j
                if r < rows.num_rows:
                    rows.write(r, batch, j, s)
            out.append(batch)
        return out

    # --- bookkeeping ---------------------------------------------------------------------------
    def state(self) -> dict:
        """Nothing to save beyond these checks: batches are a pure function of (seed, step, host)."""
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
        for name in self.source_names:
            sources[name] = source_fingerprint(name, source_dict(self.config.sources[name]))
        return {"sources": sources, "mixture": dict(zip(self.source_names, map(float, self.weights))),
                "seq_len": self.seq_len, "packing": self.packing, "seed": self.seed,
                "tokenizer_sha256": self.tokenizer.sha256(),
                **({"target_budget_tokens": self.target_budget, "budget_fraction": self.budget_fraction}
                   if self.target_budget > 0 else {})}

    def restore(self, state: dict) -> None:
        """Check that a resumed run reads the same data the same way (else batches would differ)."""
        mine = self.state()
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

    def epoch_rows(self) -> int:
        """Rows in one pass over every trained source on this host (an epoch of the mixture)."""
        return int(sum(r.num_rows for r, t in zip(self._rows, self._trained) if t))

    def steps_for_epochs(self, epochs: float, global_rows: int | None = None) -> int:
        """Optimizer steps for `epochs` passes over the mixture's rows (all hosts: global_rows)."""
        rows = self.epoch_rows() * self.process_count if global_rows is None else int(global_rows)
        return max(1, int(np.ceil(epochs * rows / (self.local_batch * self.process_count))))

    def reports(self) -> dict[str, BadInputReport]:
        return dict(self._reports)


def build_train_pipeline(data_config, *, global_batch_size: int, process_index: int = 0,
                         process_count: int = 1, tokenizer: Tokenizer | None = None,
                         train_steps: int | None = None) -> TrainPipeline:
    """The pretraining pipeline (documents, DocumentRows(data.packing)); `train_steps` sets the run's
    own budget under data.target_budget_tokens."""
    return TrainPipeline(data_config, global_batch_size=global_batch_size, process_index=process_index,
                         process_count=process_count, tokenizer=tokenizer, train_steps=train_steps)
