"""The pretraining loop: build mesh, model, data and state; step, log, evaluate, checkpoint.

``run(config, workdir)`` is what ``launch.py`` calls for ``config.task == "pretrain"``.
Rerunning with the same workdir resumes from the latest complete checkpoint (params, optimizer
state, step, PRNG key, data position); the resumed run is step-for-step identical to an
uninterrupted one because every batch is a function of the step (or of the saved data state).
"""
from __future__ import annotations

import logging
import math
import os
import signal
import time
from typing import Any

import jax
import numpy as np

from mellama_jax import sharding as shd
# Model-config resolution and checkpoint layouts live in mellama_jax.checkpoint (one definition of a
# model artifact for training, data, eval and convert); NUMERIC_FIELDS/model_overrides re-exported.
from mellama_jax.checkpoint.model_spec import NUMERIC_FIELDS, model_overrides  # noqa: F401
from mellama_jax.model.config import LlamaConfig
from mellama_jax.model.llama import init_params, param_logical_axes, param_shapes
from mellama_jax.train import metrics as metrics_lib
from mellama_jax.train import optim
from mellama_jax.train import state as state_lib
from mellama_jax.train import step as step_lib
from mellama_jax.train.checkpointing import Checkpointer, NonFiniteStateError, write_model_config

log = logging.getLogger(__name__)

class NonFiniteLossError(RuntimeError):
    pass


# --------------------------------------------------------------------------------------------
# Building blocks (also used by the benchmark and the tests)
# --------------------------------------------------------------------------------------------
def resolve_model_config(config: Any, data_vocab_size: int | None = None) -> LlamaConfig:
    """LlamaConfig from config.model: the preset (or the init_from checkpoint's shapes) + overrides."""
    from mellama_jax.checkpoint.model_spec import resolve_model_config as resolve

    return resolve(config.model, data_vocab_size)


def build_pipeline(config: Any, vocab_size: int | None, tokenizer: Any = None) -> Any:
    """The real train pipeline, or the synthetic one when config.data.synthetic is set."""
    data = config.data
    gbs = int(config.train.global_batch_size)
    if data.get("synthetic", False):
        from mellama_jax.train.synthetic import SyntheticPipeline
        for key in ("mixture_stages", "perplexity_texts"):  # real-data features: refuse, never ignore
            if data.get(key):
                raise ValueError(f"config.data.{key} is set but config.data.synthetic=True generates "
                                 "tokens without sources; set config.data.synthetic=False")
        mixture = data.get("mixture")
        names = list(mixture.keys()) if mixture else ["biomedical", "clinical", "general"]
        weights = [float(mixture[n]) for n in names] if mixture else None
        return SyntheticPipeline(
            vocab_size=int(vocab_size), seq_len=int(data.seq_len), global_batch_size=gbs,
            process_index=jax.process_index(), process_count=jax.process_count(),
            seed=int(data.seed), source_names=names, mixture=weights)
    if config.get("task") == "sft":  # instruction data: prompt-masked examples, same mixture machinery
        from mellama_jax.sft.data import build_sft_pipeline
        return build_sft_pipeline(data, global_batch_size=gbs, process_index=jax.process_index(),
                                  process_count=jax.process_count(), tokenizer=tokenizer)
    from mellama_jax.data.pipeline import build_train_pipeline
    return build_train_pipeline(data, global_batch_size=gbs, process_index=jax.process_index(),
                                process_count=jax.process_count(), tokenizer=tokenizer)


def _init_tokenizer_file(config: Any) -> str | None:
    """Synthetic runs encode nothing; their checkpoints still carry init_from's tokenizer, if any."""
    from mellama_jax.checkpoint.model_spec import init_artifact
    artifact = init_artifact(config.model)
    return artifact.tokenizer_file if artifact is not None else None


def write_artifact(directory: str, config: Any, model_config: LlamaConfig, tokenizer_file: str | None,
                   pipeline: Any) -> None:
    """Make <workdir>/checkpoints a model artifact: model config, tokenizer files, provenance.

    A resumed run must encode with the tokenizer its checkpoints were trained with.
    """
    from mellama_jax.checkpoint.artifact import write_artifact_files
    from mellama_jax.checkpoint.model_spec import init_artifact
    from mellama_jax.tokenizer import file_sha256
    if jax.process_index() != 0:
        return
    saved = os.path.join(directory, "tokenizer.model")
    if tokenizer_file and os.path.isfile(saved) and file_sha256(saved) != file_sha256(tokenizer_file):
        raise ValueError(f"{saved}: this run's checkpoints were trained with a different tokenizer than "
                         f"{tokenizer_file}; resume with the same tokenizer or use a new workdir")
    artifact = init_artifact(config.model)
    source = ({"init_from": artifact.path, "kind": artifact.kind, "step": artifact.step,
               "provenance": artifact.provenance} if artifact is not None
              else {"init_from": "", "preset": config.model.preset})
    data = (pipeline.fingerprint() if hasattr(pipeline, "fingerprint")
            else {"synthetic": True, "seed": int(config.data.seed), "seq_len": int(config.data.seq_len)})
    provenance = {"created_by": "mellama_jax.train.loop", "task": config.get("task", "pretrain"),
                  "source": source, "tokenizer": tokenizer_file,
                  "tokenizer_sha256": file_sha256(tokenizer_file) if tokenizer_file else None,
                  "data_fingerprint": data}
    # An instruction-tuning pipeline names the template it trained with; else init_from's travels on.
    chat_template = getattr(pipeline, "chat_template_jinja", None) or (
        artifact.chat_template if artifact is not None else None)
    write_artifact_files(directory, model_config, tokenizer_file=tokenizer_file, provenance=provenance,
                         chat_template=chat_template)


def validate_batch_layout(config: Any, mesh: jax.sharding.Mesh) -> None:
    gbs, k = int(config.train.global_batch_size), int(config.train.micro_batches)
    shards = shd.batch_shards(mesh)
    if k < 1 or gbs % k:
        raise ValueError(f"config.train.global_batch_size={gbs} is not divisible by "
                         f"config.train.micro_batches={k}")
    if (gbs // k) % shards:
        raise ValueError(f"micro-batch of {gbs // k} rows (config.train.global_batch_size / "
                         f"micro_batches) is not divisible by mesh data x fsdp = {shards}")
    if gbs % jax.process_count():
        raise ValueError(f"config.train.global_batch_size={gbs} is not divisible by "
                         f"{jax.process_count()} processes")


class Trainer:
    """Everything jitted and sharded for one model config on one mesh."""

    def __init__(self, config: Any, model_config: LlamaConfig, mesh: jax.sharding.Mesh):
        self.config, self.model_config, self.mesh = config, model_config, mesh
        self.rules = shd.rules_as_tuple(config.sharding.rules)
        total = int(config.train.steps)
        self.schedule = optim.make_schedule(config.optim, total)
        self.optimizer = optim.make_optimizer(config.optim, total)
        self.abstract_params = param_shapes(model_config)
        self.param_shardings = shd.logical_to_sharding(
            param_logical_axes(model_config), mesh, self.rules, self.abstract_params)
        # LoRA (config.lora.enabled): the state's params are the adapters; the base is frozen, an
        # argument of the step outside the state (no gradient, no optimizer state, never saved again).
        from mellama_jax.model import lora as lora_lib
        self.lora = lora_lib.spec_from_config(getattr(config, "lora", None))
        self.frozen_shapes = self.frozen_shardings = self._frozen = None
        if self.lora is not None:
            self.frozen_shapes, self.frozen_shardings = self.abstract_params, self.param_shardings
            self.abstract_params = lora_lib.adapter_shapes(model_config, self.lora)
            self.param_shardings = shd.logical_to_sharding(
                lora_lib.adapter_logical_axes(model_config, self.lora), mesh, self.rules, self.abstract_params)
        self.shardings = state_lib.state_shardings(
            self.optimizer, self.abstract_params, self.param_shardings, mesh)
        # Concatenated windows (and synthetic rows) are plain causal: no segment ids needed.
        packed = config.data.get("packing", "concat") == "pack" and not config.data.get("synthetic", False)
        self.train_step = step_lib.jit_train_step(
            step_lib.make_train_step(
                model_config, self.optimizer, self.schedule, mesh,
                micro_batches=int(config.train.micro_batches),
                loss_impl=config.train.loss_impl, z_loss=float(config.train.z_loss),
                packed_documents=packed, lora=self.lora),
            self.shardings, mesh, self.rules, self.frozen_shardings)
        self.eval_step = step_lib.make_eval_step(
            model_config, mesh, self.rules, self.param_shardings, config.train.loss_impl, packed,
            lora=self.lora, frozen_shardings=self.frozen_shardings)
        # The jitted step itself, (state, batch[, frozen LoRA base]) -> (state, metrics): what
        # mellama_jax.plan lowers and compiles ahead of time for a TPU topology.
        self.jitted_train_step = self.train_step
        if self.lora is not None:  # callers keep calling step(state, batch) / eval(params, batch)
            jitted_train, jitted_eval = self.train_step, self.eval_step
            self.train_step = lambda state, batch: jitted_train(state, batch, self.frozen_params())
            self.eval_step = lambda params, batch: jitted_eval(params, batch, self.frozen_params())

    def frozen_params(self) -> Any:
        """The LoRA base, loaded once onto its shardings: init_from's weights, else a seeded random
        init (tiny tests), so a resumed run sees the very same base."""
        if self.lora is None:
            raise ValueError("frozen_params: only a LoRA run (config.lora.enabled) has a frozen base")
        if self._frozen is None:
            from mellama_jax.checkpoint.model_spec import init_artifact
            artifact = init_artifact(self.config.model)
            target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                                  self.frozen_shapes, self.frozen_shardings)
            if artifact is None:
                init_key = jax.random.split(jax.random.PRNGKey(int(self.config.seed)))[0]
                params = jax.jit(lambda: init_params(self.model_config, init_key),
                                 out_shardings=self.frozen_shardings)()
            else:
                params = artifact.load_params(target)
            self._frozen = jax.tree.map(lambda p, t: jax.device_put(p.astype(t.dtype), t.sharding),
                                        params, target)
        return self._frozen

    def abstract_state(self) -> state_lib.TrainState:
        return state_lib.abstract_state(self.optimizer, self.abstract_params, self.shardings)

    def init_state(self, seed: int) -> state_lib.TrainState:
        init_key, state_key = jax.random.split(jax.random.PRNGKey(seed))
        from mellama_jax.checkpoint.model_spec import init_artifact
        if self.lora is not None:
            from mellama_jax.model.lora import init_adapters
            lora_key = jax.random.fold_in(init_key, 0x10A)
            return state_lib.create_state(lambda: init_adapters(self.model_config, self.lora, lora_key),
                                          self.optimizer, state_key, self.shardings)
        artifact = init_artifact(self.config.model)
        if artifact is None:
            return state_lib.create_state(lambda: init_params(self.model_config, init_key),
                                          self.optimizer, state_key, self.shardings)
        target = jax.tree.map(
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
            self.abstract_params, self.param_shardings)
        params = artifact.load_params(target)
        params = jax.tree.map(lambda p, t: p.astype(t.dtype), params, target)
        return state_lib.state_from_params(params, self.optimizer, state_key, self.shardings)

    def global_batch(self, local: dict) -> dict:
        return shd.host_local_to_global({k: local[k] for k in step_lib.BATCH_KEYS}, self.mesh)


def source_token_counts(local: dict, names: list[str]) -> np.ndarray:
    """Loss tokens per source in this host-local batch, then the total: int64 [len(names) + 1]."""
    ids, mask = local["source_ids"], local["loss_mask"] > 0
    counts = [int(((ids == i) & mask).sum()) for i in range(len(names))]
    return np.asarray(counts + [int(mask.sum())], np.int64)


def global_source_fractions(counts: np.ndarray, names: list[str]) -> dict[str, float]:
    """Realised share of loss tokens per source over every process's slice of the batches.

    Every process calls this at the same log steps, so the all-gather lines up across hosts.
    """
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        counts = np.asarray(multihost_utils.process_allgather(counts)).reshape(-1, counts.size).sum(0)
    total = max(int(counts[-1]), 1)
    return {n: float(counts[i]) / total for i, n in enumerate(names)}


def global_counts(counts: np.ndarray) -> np.ndarray:
    """Sum of a per-process count vector over all processes (every process calls it at the same step)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        counts = np.asarray(multihost_utils.process_allgather(counts)).reshape(-1, counts.size).sum(0)
    return np.asarray(counts, np.int64)


def tokens_seen_from_meta(meta: dict | None, names: list[str]) -> np.ndarray:
    """Loss tokens per source a checkpoint had seen (its meta "source_tokens"; 0 for older ones)."""
    seen = (meta or {}).get("source_tokens") or {}
    return np.asarray([int(seen.get(n, 0)) for n in names], np.int64)


# --------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------
class _Preemption:
    """SIGTERM -> flag; the loop checkpoints and exits at the next step boundary."""

    def __init__(self) -> None:
        self.requested = False
        try:
            self._old = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread
            self._old = None

    def _handle(self, signum, frame) -> None:
        self.requested = True

    def any_process(self) -> bool:
        if jax.process_count() == 1:
            return self.requested
        from jax.experimental import multihost_utils
        flags = multihost_utils.process_allgather(np.asarray(self.requested, np.int32))
        return bool(np.any(flags))

    def restore(self) -> None:
        if self._old is not None:
            signal.signal(signal.SIGTERM, self._old)


def _check_finite(step: int, values: dict, last_good: Any = None) -> None:
    for key in ("loss", "grad_norm"):
        if key in values and not math.isfinite(float(values[key])):
            raise NonFiniteLossError(
                f"step {step}: {key} is {values[key]}; stopping. {last_good() if last_good else ''}"
                "Lower config.optim.learning_rate or check the data.")


def _last_good(ckpt: Checkpointer) -> str:
    """What is actually on disk, not what should be: the newest committed step and whether its
    state was checked finite when it was saved (Checkpointer.save records that in meta)."""
    ckpt.wait()
    step = ckpt.latest_step()
    if step is None:
        return "No checkpoint has been written yet. "
    meta = ckpt.read_meta(step) or {}
    verified = (meta.get("integrity") or {}).get("finite") is True
    return (f"The newest checkpoint is step {step} ({ckpt.directory}/{step}); "
            + ("its state was checked finite before it was saved. " if verified else
               "it was written without an integrity record, so its values are not verified. "))


def _say(msg: str) -> None:
    if jax.process_index() == 0:
        print(msg, flush=True)


def run(config: Any, workdir: str) -> dict:
    """Trains per ``config`` in ``workdir``; returns the last logged metrics.

    Every numeric config value is range-checked first, and the workdir is locked for this run
    (a second writer fails at once naming the holder; see workdir_lock).
    """
    from mellama_jax.config_validation import validate_config
    from mellama_jax.train import workdir_lock
    validate_config(config)
    with workdir_lock.acquire(workdir):
        return _run(config, workdir)


def _run(config: Any, workdir: str) -> dict:
    workdir = os.path.abspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    mesh = shd.make_mesh(config.mesh)
    validate_batch_layout(config, mesh)
    _say(f"mesh {dict(mesh.shape)} on {jax.device_count()} x {jax.devices()[0].device_kind} "
         f"({jax.process_count()} process(es))")

    synthetic = bool(config.data.get("synthetic", False))
    if synthetic:
        model_config = resolve_model_config(config)
        tokenizer_file = _init_tokenizer_file(config)
        pipeline = build_pipeline(config, model_config.vocab_size)
    else:
        # The tokenizer (config.data.tokenizer_path, else init_from's) is checked against the model
        # before any data is read.
        from mellama_jax.checkpoint.model_spec import check_training_tokenizer, training_tokenizer_file
        from mellama_jax.tokenizer import load_tokenizer
        tokenizer_file = os.path.abspath(training_tokenizer_file(config))
        tokenizer = load_tokenizer(tokenizer_file)
        model_config = resolve_model_config(config, tokenizer.vocab_size)
        check_training_tokenizer(config, tokenizer, tokenizer_file, model_config)
        pipeline = build_pipeline(config, None, tokenizer)
        if hasattr(pipeline, "steps_for_epochs") and float(config.train.get("epochs", 0) or 0) > 0:
            rows = int(global_counts(np.asarray([pipeline.epoch_rows()], np.int64))[0])
            config.train.steps = pipeline.steps_for_epochs(float(config.train.epochs), rows)
            _say(f"{float(config.train.epochs):g} epochs of {rows} rows = {config.train.steps} steps")
    seq_len = int(config.data.seq_len)
    _say(f"model: {model_config.num_params() / 1e6:.2f}M params, vocab {model_config.vocab_size}, "
         f"dtype {model_config.dtype}, attention {model_config.attention_impl}")

    trainer = Trainer(config, model_config, mesh)
    ckpt = Checkpointer(workdir, keep=int(config.train.keep_checkpoints),
                        async_save=bool(config.train.async_checkpointing),
                        params_item="adapters" if trainer.lora is not None else "params")
    write_artifact(ckpt.directory, config, model_config, tokenizer_file, pipeline)
    writer = metrics_lib.MetricsWriter(workdir)

    # The newest checkpoint that restores and matches its fingerprint; corrupt newer ones are
    # moved to checkpoints.corrupt/ and named. metrics.jsonl is rewritten from the restored step
    # (0 for a fresh start: rows of a run killed before its first checkpoint are redone).
    state, meta, latest, skipped = ckpt.restore_latest(trainer.abstract_state())
    for msg in skipped:
        _say(msg)
    writer.truncate_after(latest or 0)
    if latest is not None:
        if meta.get("data_state") is not None and hasattr(pipeline, "restore"):
            pipeline.restore(meta["data_state"])
        _say(f"resumed from {ckpt.directory}/{latest}")
    else:
        if skipped:
            _say(f"no usable checkpoint in {ckpt.directory}; starting from scratch")
        state = trainer.init_state(int(config.seed))

    total = int(config.train.steps)
    start = int(jax.device_get(state.step))
    names = list(pipeline.source_names)
    eval_sets = {n: None for n in names}  # filled lazily at the first evaluation
    # data/<source>/tokens: loss tokens seen since step 0 = the checkpoint's count + this run's
    # (per process, summed over processes at log and checkpoint steps).
    seen = {"base": tokens_seen_from_meta(meta if latest is not None else None, names),
            "local": np.zeros(len(names) + 1, np.int64)}
    stages = getattr(pipeline, "stages", None) or []
    peak = metrics_lib.resolve_peak_tflops(float(config.hardware.peak_tflops))
    flops_tok = metrics_lib.flops_per_token(model_config, seq_len)
    tokens_per_step = int(config.train.global_batch_size) * seq_len
    log_every = max(int(config.train.log_every), 1)
    ckpt_every = int(config.train.checkpoint_every)
    eval_every = int(config.train.eval_every)
    delay = float(config.train.get("debug_step_delay_s", 0.0))

    def data_meta() -> dict:
        tokens = seen["base"] + global_counts(seen["local"])[:-1]
        return {"data_state": pipeline.state() if hasattr(pipeline, "state") else None,
                "mesh": dict(mesh.shape), "process_count": jax.process_count(),
                "source_tokens": {n: int(t) for n, t in zip(names, tokens)}}

    def evaluate(step: int) -> dict:
        out = {}
        for n in names:
            if eval_sets[n] is None:
                eval_sets[n] = pipeline.eval_batches(n, int(config.train.eval_batches))
            nll = weight = 0.0
            for local in eval_sets[n]:
                sums = jax.device_get(trainer.eval_step(state.params, trainer.global_batch(local)))
                nll, weight = nll + float(sums.nll), weight + float(sums.weight)
            out[f"eval/{n}/loss"] = nll / max(weight, 1.0)
            out[f"eval/{n}/perplexity"] = math.exp(min(out[f"eval/{n}/loss"], 700.0))
        _say(f"eval @ step {step}: " + ", ".join(f"{k.split('/')[1]} {v:.4f}"
                                                    for k, v in out.items() if k.endswith("/loss")))
        return out

    preempt = _Preemption()
    last: dict = {}
    window = {"steps": 0, "excluded": 0.0, "tokens": np.zeros(len(names) + 1, np.int64)}
    timer = metrics_lib.StepTimer()
    pending = None  # (step, device metrics) of the step in flight, resolved one step later

    def resolve(done: int, device_metrics: dict, source_tokens: np.ndarray, force_log: bool = False) -> None:
        nonlocal last
        values = {k: float(v) for k, v in jax.device_get(device_metrics).items()}
        _check_finite(done, values, lambda: _last_good(ckpt))
        window["steps"] += 1
        window["tokens"] += source_tokens
        seen["local"] += source_tokens
        if not (done % log_every == 0 or done == total or force_log):
            return
        dt = max(timer.lap() - window["excluded"], 1e-9)  # eval / checkpoint time excluded
        window["excluded"] = 0.0
        tps = window["steps"] * tokens_per_step / max(dt, 1e-9)
        record = {
            "loss": values["loss"], "learning_rate": values["learning_rate"],
            "grad_norm": values["grad_norm"], "tokens_per_second": tps,
            "step_time": dt / window["steps"],
            "mfu": metrics_lib.mfu(tps, model_config, seq_len, jax.device_count(), peak),
            "tflops_per_device": tps * flops_tok / jax.device_count() / 1e12,
        }
        if float(config.train.z_loss):
            record["z_loss"] = values["z_loss"]
        for n, f in global_source_fractions(window["tokens"], names).items():
            record[f"data/{n}/fraction"] = f
        for n, t in zip(names, seen["base"] + global_counts(seen["local"])[:-1]):
            record[f"data/{n}/tokens"] = int(t)
        if len(stages) > 1:  # mixture schedule: the stage and its realised row shares so far
            stage, rows = pipeline.stage_row_counts(done)
            record["data/stage"] = stage
            for n, f in global_source_fractions(rows, names).items():
                record[f"data/{n}/stage_fraction"] = f
        window["steps"] = 0
        window["tokens"] = np.zeros(len(names) + 1, np.int64)
        writer.write(done, record)
        _say(metrics_lib.console_line(done, total, record))
        last = {"step": done, **record}

    stopped_early = False
    try:
        for step in range(start, total):
            local = pipeline.batch(step)
            state, device_metrics = trainer.train_step(state, trainer.global_batch(local))
            done = step + 1
            if pending is not None:
                resolve(*pending)
            pending = (done, device_metrics, source_token_counts(local, names))
            if delay:
                time.sleep(delay)
            preempted = preempt.any_process()
            due_ckpt = (ckpt_every > 0 and done % ckpt_every == 0) or done == total or preempted
            due_eval = (eval_every > 0 and done % eval_every == 0) or done == total
            if due_ckpt or due_eval:
                resolve(*pending, force_log=preempted)  # never checkpoint a non-finite state
                pending = None
            t_aside = time.perf_counter()
            if due_eval:
                ev = evaluate(done)
                writer.write(done, ev)
                last.update(ev)
            if due_ckpt:
                try:
                    ckpt.save(state, data_meta())  # checks the updated state finite first
                except NonFiniteStateError as err:
                    raise NonFiniteLossError(
                        f"step {done}: the updated state is not finite ({err}); not saved. "
                        f"{_last_good(ckpt)}Lower config.optim.learning_rate or check the data."
                    ) from None
            window["excluded"] += time.perf_counter() - t_aside if (due_eval or due_ckpt) else 0.0
            if preempted:
                _say(f"SIGTERM: checkpointed step {done} to {ckpt.directory}; exiting")
                stopped_early = True
                break
        if pending is not None:
            resolve(*pending)
    finally:
        preempt.restore()
        ckpt.close()  # waits for the last async save
        writer.close()
    if not stopped_early and start >= total:
        _say(f"nothing to do: checkpoint step {start} >= config.train.steps={total}")
    stats = pipeline.stats() if hasattr(pipeline, "stats") else {}
    if stats and jax.process_index() == 0:
        log.info("data pipeline stats: %s", stats)
    return last
