"""The training loop: build mesh, model, data and state, then step; hooks log, evaluate, checkpoint.

``run(config, workdir)`` is what ``launch.py`` calls for ``config.task == "pretrain"`` (and, with the
SFT pipeline, ``mellama_jax.sft.run`` for ``"sft"``). Rerunning with the same workdir resumes from
the latest complete checkpoint (params, optimizer state, step, PRNG key, data position); the resumed
run is step-for-step identical to an uninterrupted one because every batch is a function of the step
(or of the saved data state).

The loop itself (`TrainLoop`) only steps and calls hooks (train/hooks.py): metrics with the NaN
guard, evaluation and checkpoints, as Levanter's ``trainer.add_hook(fn, every=N)``.
"""
from __future__ import annotations

import logging
import os
import signal
import time
from typing import Any, Callable, Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils

from mellama_jax import sharding as shd
from mellama_jax.checkpoint import model_spec
from mellama_jax.checkpoint.artifact import write_artifact_files
from mellama_jax.checkpoint.lora_io import ADAPTERS_ITEM
from mellama_jax.data import pipeline as data_pipeline
from mellama_jax.data.batch_source import BatchSource
from mellama_jax.tokenizer import load_tokenizer
from mellama_jax.model import lora as lora_lib
from mellama_jax.model.config import LlamaConfig
from mellama_jax.model.llama import init_params, param_logical_axes, param_shapes
from mellama_jax.train import hooks
from mellama_jax.train import metrics as metrics_lib
from mellama_jax.train import optim
from mellama_jax.train import state as state_lib
from mellama_jax.train import step as step_lib
from mellama_jax.train.checkpointing import Checkpointer
from mellama_jax.train.hooks import StepInfo
from mellama_jax.train.metrics import say
from mellama_jax.train.synthetic import SyntheticPipeline

__all__ = ["run", "Trainer", "TrainLoop", "build_pipeline", "resolve_model_config", "validate_batch_layout",
           "write_artifact"]

log = logging.getLogger(__name__)

# (data_config, *, global_batch_size, process_index, process_count, tokenizer) -> the run's pipeline
PipelineFactory = Callable[..., BatchSource]


# --------------------------------------------------------------------------------------------
# Building blocks (also used by the benchmark, the planner and the tests)
# --------------------------------------------------------------------------------------------
def resolve_model_config(config: Any, data_vocab_size: int | None = None) -> LlamaConfig:
    """LlamaConfig from config.model: the preset (or the init_from checkpoint's shapes) + overrides."""
    return model_spec.resolve_model_config(config.model, data_vocab_size)


def build_pipeline(config: Any, vocab_size: int | None, tokenizer: Any = None,
                   make_pipeline: PipelineFactory | None = None) -> BatchSource:
    """The synthetic pipeline when config.data.synthetic is set, else `make_pipeline`'s over
    config.data (default: pretraining documents, data.pipeline.build_train_pipeline; the SFT task
    passes its own)."""
    data = config.data
    gbs = int(config.train.global_batch_size)
    if data.get("synthetic", False):
        for key in ("mixture_stages", "perplexity_texts", "target_budget_tokens", "token_store"):  # real-data features: refuse, never ignore
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
    make = make_pipeline or data_pipeline.build_train_pipeline
    # Only a budget-faithful run needs its step count in the pipeline (its own token budget).
    budget = {"train_steps": int(config.train.steps)} if data.get("target_budget_tokens", 0) else {}
    return make(data, global_batch_size=gbs, process_index=jax.process_index(),
                process_count=jax.process_count(), tokenizer=tokenizer, **budget)


def _init_tokenizer_file(config: Any) -> str | None:
    """Synthetic runs encode nothing; their checkpoints still carry init_from's tokenizer, if any."""
    artifact = model_spec.init_artifact(config.model)
    return artifact.tokenizer_file if artifact is not None else None


def write_artifact(directory: str, config: Any, model_config: LlamaConfig, tokenizer_file: str | None,
                   pipeline: BatchSource) -> None:
    """Make <workdir>/checkpoints a model artifact: model config, tokenizer files, provenance.

    A resumed run must encode with the tokenizer its checkpoints were trained with.
    """
    if jax.process_index() != 0:
        return
    # A resumed run with another tokenizer (either backend) is refused by write_artifact_files.
    artifact = model_spec.init_artifact(config.model)
    source = ({"init_from": artifact.path, "kind": artifact.kind, "step": artifact.step,
               "provenance": artifact.provenance} if artifact is not None
              else {"init_from": "", "preset": config.model.preset})
    provenance = {"created_by": "mellama_jax.train.loop", "task": config.get("task", "pretrain"),
                  "source": source, "tokenizer": tokenizer_file,
                  "tokenizer_sha256": load_tokenizer(tokenizer_file).fingerprint() if tokenizer_file else None,
                  "data_fingerprint": pipeline.fingerprint()}
    # An instruction-tuning pipeline names the template it trained with; else init_from's travels on.
    chat_template = pipeline.chat_template_jinja or (artifact.chat_template if artifact is not None else None)
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
        self.schedule = optim.schedule_for(config)  # re-warm start resolved from init_from
        self.optimizer = optim.make_optimizer(config.optim, total, self.schedule)
        self.abstract_params = param_shapes(model_config)
        self.param_shardings = shd.logical_to_sharding(
            param_logical_axes(model_config), mesh, self.rules, self.abstract_params)
        # LoRA (config.lora.enabled): the state's params are the adapters; the base is frozen, an
        # argument of the step outside the state (no gradient, no optimizer state, never saved again).
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
            artifact = model_spec.init_artifact(self.config.model)
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
        if self.lora is not None:
            lora_key = jax.random.fold_in(init_key, 0x10A)
            return state_lib.create_state(lambda: lora_lib.init_adapters(self.model_config, self.lora, lora_key),
                                          self.optimizer, state_key, self.shardings)
        artifact = model_spec.init_artifact(self.config.model)
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
        flags = multihost_utils.process_allgather(np.asarray(self.requested, np.int32))
        return bool(np.any(flags))

    def restore(self) -> None:
        if self._old is not None:
            signal.signal(signal.SIGTERM, self._old)


Hook = Callable[[StepInfo], None]
# (trainer, write(step, values)) -> [(state hook, every)]: state hooks built by a layer above train/
# once the Trainer exists, before the first step (eval/in_training.py: benchmarks on the live params).
HookFactory = Callable[[Trainer, Callable[[int, dict], None]], Sequence[tuple[Hook, int]]]


class TrainLoop:
    """Steps a state over a pipeline's batches and calls the hooks (see train/hooks.py).

    `add_metrics_hook(fn)`: fn(info) for every step, in order, with its metrics on the host; one step
    late (the device runs ahead), except at a step where a state hook is due.
    `add_hook(fn, every=N)`: fn(info) with the state after every N-th step (N = 0: never on a cadence)
    and after the last one; with on_preemption=True also after the step at which SIGTERM arrived.
    The time spent in state hooks is set aside from the throughput (`timer`).
    """

    def __init__(self, trainer: Trainer, pipeline: BatchSource, total: int, *,
                 timer: metrics_lib.StepTimer | None = None, step_delay_s: float = 0.0):
        self.trainer, self.pipeline, self.total = trainer, pipeline, int(total)
        self.timer = timer or metrics_lib.StepTimer()
        self.step_delay_s = float(step_delay_s)  # tests: slow the loop down to preempt it mid-run
        self._metrics_hooks: list[Hook] = []
        self._hooks: list[tuple[Hook, int, bool]] = []

    def add_metrics_hook(self, hook: Hook) -> None:
        self._metrics_hooks.append(hook)

    def add_hook(self, hook: Hook, every: int, *, on_preemption: bool = False) -> None:
        self._hooks.append((hook, int(every), on_preemption))

    def _due(self, info: StepInfo) -> list[Hook]:
        return [hook for hook, every, on_preemption in self._hooks
                if (every > 0 and info.step % every == 0) or info.is_last or (on_preemption and info.preempted)]

    def _metrics(self, info: StepInfo) -> None:
        for hook in self._metrics_hooks:
            hook(info)

    def run(self, state: state_lib.TrainState, start: int,
            preempted: Callable[[], bool] = lambda: False) -> state_lib.TrainState:
        """Steps start..total-1 (stopping early after a step at which `preempted()`); the last state."""
        names = list(self.pipeline.source_names)
        pending = None  # the step whose metrics are still on the device
        for step in range(start, self.total):
            local = self.pipeline.batch(step)
            state, device_metrics = self.trainer.train_step(state, self.trainer.global_batch(local))
            info = StepInfo(step + 1, self.total, None, device_metrics, hooks.source_token_counts(local, names))
            if pending is not None:
                self._metrics(pending)
            pending = info
            if self.step_delay_s:
                time.sleep(self.step_delay_s)
            info.preempted = preempted()
            due = self._due(info)
            if due:
                info.state = state
                self._metrics(info)  # never evaluate or checkpoint a step not checked finite
                pending = None
                with self.timer.aside():
                    for hook in due:
                        hook(info)
            if info.preempted:
                break
        if pending is not None:
            self._metrics(pending)
        return state


def run(config: Any, workdir: str, *, make_pipeline: PipelineFactory | None = None,
        make_hooks: HookFactory | None = None) -> dict:
    """Trains per ``config`` in ``workdir``; returns the last logged metrics.

    The caller has validated the config and holds the workdir lock: launch.py does both, once;
    a Python caller takes the lock with ``train.workdir_lock.acquire(workdir)``. `make_pipeline`
    builds the real-data pipeline (see build_pipeline; the SFT task passes its own); `make_hooks`
    adds state hooks, run after the checkpoint of their step has been handed to the writer (launch.py
    passes the in-training benchmarks of eval/in_training.py).
    """
    workdir = os.path.abspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    mesh = shd.make_mesh(config.mesh)
    validate_batch_layout(config, mesh)
    say(f"mesh {dict(mesh.shape)} on {jax.device_count()} x {jax.devices()[0].device_kind} "
        f"({jax.process_count()} process(es))")

    if config.data.get("synthetic", False):
        model_config = resolve_model_config(config)
        tokenizer_file = _init_tokenizer_file(config)
        pipeline = build_pipeline(config, model_config.vocab_size)
    else:
        # The tokenizer (config.data.tokenizer_path, else init_from's) is checked against the model
        # before any data is read.
        tokenizer_file = os.path.abspath(model_spec.training_tokenizer_file(config))
        tokenizer = load_tokenizer(tokenizer_file)
        model_config = resolve_model_config(config, tokenizer.vocab_size)
        model_spec.check_training_tokenizer(config, tokenizer, tokenizer_file, model_config)
        pipeline = build_pipeline(config, None, tokenizer, make_pipeline)
        if float(config.train.get("epochs", 0) or 0) > 0:
            rows = int(hooks.global_counts(np.asarray([pipeline.epoch_rows()], np.int64))[0])
            config.train.steps = pipeline.steps_for_epochs(float(config.train.epochs), rows)
            say(f"{float(config.train.epochs):g} epochs of {rows} rows = {config.train.steps} steps")
    seq_len = int(config.data.seq_len)
    say(f"model: {model_config.num_params() / 1e6:.2f}M params, vocab {model_config.vocab_size}, "
        f"dtype {model_config.dtype}, attention {model_config.attention_impl}")

    trainer = Trainer(config, model_config, mesh)
    ckpt = Checkpointer(workdir, keep=int(config.train.keep_checkpoints),
                        async_save=bool(config.train.async_checkpointing),
                        params_item=ADAPTERS_ITEM if trainer.lora is not None else "params")
    write_artifact(ckpt.directory, config, model_config, tokenizer_file, pipeline)
    writer = metrics_lib.MetricsWriter(workdir)

    # The newest checkpoint that restores and matches its fingerprint; corrupt newer ones are
    # moved to checkpoints.corrupt/ and named. metrics.jsonl is rewritten from the restored step
    # (0 for a fresh start: rows of a run killed before its first checkpoint are redone).
    state, meta, latest, skipped = ckpt.restore_latest(trainer.abstract_state())
    for msg in skipped:
        say(msg)
    writer.truncate_after(latest or 0)
    if latest is not None:
        if meta.get("data_state") is not None:
            pipeline.restore(meta["data_state"])
        say(f"resumed from {ckpt.directory}/{latest}")
    else:
        if skipped:
            say(f"no usable checkpoint in {ckpt.directory}; starting from scratch")
        state = trainer.init_state(int(config.seed))

    total = int(config.train.steps)
    start = int(jax.device_get(state.step))
    # data/<source>/tokens: loss tokens seen since step 0 = the checkpoint's count + this run's.
    tokens = hooks.SourceTokens(pipeline.source_names, meta if latest is not None else None)
    preempt = _Preemption()
    timer = metrics_lib.StepTimer()
    logger = hooks.MetricsLogger(
        writer, log_every=int(config.train.log_every), model_config=model_config, seq_len=seq_len,
        global_batch_size=int(config.train.global_batch_size),
        peak_tflops=metrics_lib.resolve_peak_tflops(float(config.hardware.peak_tflops)),
        z_loss=bool(float(config.train.z_loss)), pipeline=pipeline, tokens=tokens, timer=timer)
    loop = TrainLoop(trainer, pipeline, total, timer=timer,
                     step_delay_s=float(config.train.get("debug_step_delay_s", 0.0)))
    loop.add_metrics_hook(hooks.NonFiniteGuard(ckpt))
    loop.add_metrics_hook(tokens)
    loop.add_metrics_hook(logger)
    loop.add_hook(hooks.Evaluator(trainer, pipeline, int(config.train.eval_batches), logger.add),
                  every=int(config.train.eval_every))
    loop.add_hook(hooks.CheckpointSaver(ckpt, pipeline, mesh, tokens),
                  every=int(config.train.checkpoint_every), on_preemption=True)
    for hook, every in (make_hooks(trainer, logger.add) if make_hooks is not None else ()):
        loop.add_hook(hook, every=every)
    try:
        loop.run(state, start, preempt.any_process)
    finally:
        preempt.restore()
        ckpt.close()  # waits for the last async save
        writer.close()
    if start >= total:
        say(f"nothing to do: checkpoint step {start} >= config.train.steps={total}")
    stats = pipeline.stats()
    if stats and jax.process_index() == 0:
        log.info("data pipeline stats: %s", stats)
    return logger.last
