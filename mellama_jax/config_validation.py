"""Every check an experiment config gets, run once by launch.py before any device, compile or data read.

``validate_config(config)`` is the one entry point: ranges for every numeric key, the named choices
(``Task``, ``Schedule``, ``LossImpl``, ``Packing``; the model's ``DType``, ``AttentionImpl``,
``RematPolicy`` from model/config.py), relations between keys, and the task's own checks (model
preset and overrides, chat template, LoRA spec). Checks that open a model artifact on disk (the
eval checkpoint, config.model.init_from, the training tokenizer) need checkpoint/, which sits above
this module, so the caller passes them in as ``ArtifactLookup`` (launch.py does); without it they
are skipped. Code deeper down that meets a choice converts it with the same enum
(``Schedule.parse(value, "optim.schedule")``), so the rule and its message live here.

ml_collections type-checks overrides (``--config.train.steps=abc`` fails) but accepts any value of
the right type, so ``optim.learning_rate=-3e-4`` or ``data.seq_len=0`` used to train silently.
Ranges are data: ``RULES`` maps dotted-key patterns (fnmatch, first match wins) to a ``Range``;
keys no explicit pattern names fall back to rules by their last component (``*_fraction``,
``*dropout``...), so configs added later (SFT, sweeps) are covered by name.
``uncovered_numeric_keys(config)`` lists numeric keys that no rule covers; the tests require it to
be empty for every shipped config.

Works on any nested mapping (ml_collections.ConfigDict, dict); never imports ml_collections.
"""
from __future__ import annotations

import fnmatch
import math
import os
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Callable, Iterator, Mapping

from mellama_jax.model.config import AttentionImpl, DType, RematPolicy, model_overrides
from mellama_jax.model.lora import spec_from_config
from mellama_jax.model.presets import PRESETS
from mellama_jax.tokenizer.chat_templates import template_names

__all__ = ["ConfigError", "ConfigRangeError", "ConfigChoice", "Task", "Schedule", "DecayShape", "RewarmFrom",
           "LossImpl", "Packing",
           "DType", "AttentionImpl", "RematPolicy", "ArtifactLookup", "Range", "RULES", "validate_config",
           "numeric_items", "uncovered_numeric_keys", "rule_for"]


class ConfigError(ValueError):
    """An experiment config that cannot run; the message names the key."""


class ConfigRangeError(ConfigError):
    """A config value outside its range; the message names the key, the value and the range."""


class ConfigChoice(StrEnum):
    """A config key with a fixed set of string values (members compare equal to their strings)."""

    @classmethod
    def describe(cls) -> str:
        values = [m.value for m in cls]
        return values[0] if len(values) == 1 else ", ".join(values[:-1]) + " or " + values[-1]

    @classmethod
    def parse(cls, value: Any, key: str) -> "ConfigChoice":
        """The member for `value`; ConfigError naming config.<key> otherwise."""
        try:
            return cls(value)
        except ValueError:
            raise ConfigError(f"config.{key}={value!r}: expected {cls.describe()}") from None


class Task(ConfigChoice):
    """config.task: what launch.py runs."""
    PRETRAIN = "pretrain"
    SFT = "sft"
    EVAL = "eval"
    SWEEP = "sweep"


class Schedule(ConfigChoice):
    """config.optim.schedule: the decay after linear warmup (train/optim.py)."""
    COSINE = "cosine"
    LINEAR = "linear"
    CONSTANT = "constant"
    WSD = "wsd"                      # warmup-stable-decay: the last optim.decay_fraction decays
    CYCLIC_COSINE = "cyclic_cosine"  # optim.cycles cycles of warmup + cosine decay


class DecayShape(ConfigChoice):
    """config.optim.decay_shape: the curve of the wsd schedule's final decay."""
    LINEAR = "linear"
    COSINE = "cosine"
    ONE_MINUS_SQRT = "1-sqrt"


class RewarmFrom(ConfigChoice):
    """config.optim.rewarm_from: where a re-warmed continued run's warmup starts."""
    ZERO = "zero"
    CHECKPOINT = "checkpoint"  # the learning rate the init_from training run ended at


class LossImpl(ConfigChoice):
    """config.train.loss_impl: "vocab_parallel" never gathers the full logits; "dense" is the reference."""
    VOCAB_PARALLEL = "vocab_parallel"
    DENSE = "dense"


class Packing(ConfigChoice):
    """config.data.packing: concat (pretraining windows), pack (documents / examples packed with
    segment ids), pad (SFT: one example per row)."""
    CONCAT = "concat"
    PACK = "pack"
    PAD = "pad"


# Which packings each training task's pipeline implements.
_PACKINGS = {Task.PRETRAIN: (Packing.CONCAT, Packing.PACK), Task.SFT: (Packing.PACK, Packing.PAD)}


@dataclass(frozen=True)
class ArtifactLookup:
    """What the on-disk checks need from checkpoint/ (checkpoint.artifact.resolve_artifact and
    checkpoint.model_spec's init_artifact / training_tokenizer_file); passed in because checkpoint/
    sits above this module."""

    resolve_artifact: Callable[[str], Any]
    init_artifact: Callable[[Any], Any]
    training_tokenizer_file: Callable[[Any], str]


@dataclass(frozen=True)
class Range:
    """lo/hi bounds (None = unbounded), open or closed; `special` values are allowed besides."""
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    integer: bool = False
    special: tuple = ()
    why: str = ""

    def contains(self, v: float) -> bool:
        if v in self.special:
            return True
        if isinstance(v, float) and not math.isfinite(v):
            return False
        if self.integer and float(v) != int(v):
            return False
        if self.lo is not None and (v < self.lo or (self.lo_open and v == self.lo)):
            return False
        if self.hi is not None and (v > self.hi or (self.hi_open and v == self.hi)):
            return False
        return True

    def describe(self) -> str:
        def num(x: float) -> str:  # integer bounds in full (2**32 - 1, not 4.29497e+09)
            return str(int(x)) if self.integer else f"{x:g}"

        if self.lo is not None and self.hi is not None:
            text = f"in {'(' if self.lo_open else '['}{num(self.lo)}, {num(self.hi)}{')' if self.hi_open else ']'}"
        elif self.lo is not None:
            text = f"{'>' if self.lo_open else '>='} {num(self.lo)}"
        elif self.hi is not None:
            text = f"{'<' if self.hi_open else '<='} {num(self.hi)}"
        else:
            text = "finite"
        if self.special:
            text += " or " + " or ".join(repr(s) for s in self.special)
        return text + (f" ({self.why})" if self.why else "")


POSITIVE_INT = Range(lo=1, integer=True)
NON_NEGATIVE_INT = Range(lo=0, integer=True)
NON_NEGATIVE = Range(lo=0.0)
POSITIVE = Range(lo=0.0, lo_open=True)
FRACTION = Range(lo=0.0, hi=1.0)
ANY_FINITE = Range()
# jax.random.PRNGKey keeps only the low 32 bits without jax_enable_x64 (2**32 would be seed 0, and
# 2**64 an OverflowError), and numpy's seeds stop at 2**32 - 1.
SEED = Range(lo=0, hi=2**32 - 1, integer=True, why="a 32-bit PRNG seed")
MESH_AXIS = Range(lo=1, integer=True, special=(-1,), why="-1 = all remaining devices")

# Explicit keys first (first match wins), then name-based fallbacks for keys added later.
RULES: tuple[tuple[str, Range], ...] = (
    ("seed", SEED),
    ("*.seed", SEED),
    # model overrides (None = from the preset; checked only when set)
    ("model.rms_norm_eps", POSITIVE),
    ("model.rope_theta", POSITIVE),
    ("model.*", POSITIVE_INT),
    # optimizer
    ("optim.learning_rate", POSITIVE),
    ("optim.b1", Range(lo=0.0, hi=1.0, hi_open=True)),
    ("optim.b2", Range(lo=0.0, hi=1.0, hi_open=True)),
    ("optim.eps", NON_NEGATIVE),
    ("optim.weight_decay", NON_NEGATIVE),
    ("optim.warmup_fraction", FRACTION),
    ("optim.warmup_steps", Range(lo=0, integer=True, special=(-1,), why="-1 = use warmup_fraction")),
    ("optim.min_lr_ratio", FRACTION),
    ("optim.grad_clip_norm", Range(lo=0.0, why="0 = no clipping")),
    ("optim.decay_fraction", Range(lo=0.0, hi=1.0, lo_open=True, why="share of train.steps that decays (wsd)")),
    ("optim.cycles", POSITIVE_INT),
    # training loop
    ("train.steps", POSITIVE_INT),
    ("train.global_batch_size", POSITIVE_INT),
    ("train.micro_batches", POSITIVE_INT),
    ("train.z_loss", NON_NEGATIVE),
    ("train.log_every", POSITIVE_INT),
    ("train.eval_every", Range(lo=0, integer=True, why="0 = only at the end")),
    ("train.eval_batches", POSITIVE_INT),
    ("train.checkpoint_every", Range(lo=0, integer=True, why="0 = only at the end")),
    ("train.keep_checkpoints", Range(lo=1, integer=True, why="at least the newest checkpoint is kept")),
    ("train.debug_step_delay_s", NON_NEGATIVE),
    ("train.bench_every", Range(lo=0, integer=True, why="0 = no benchmarks during training")),
    # data
    ("data.seq_len", Range(lo=2, integer=True, why="next-token targets need 2 tokens")),
    ("data.max_bad_fraction", FRACTION),
    ("data.tokenize_threads", NON_NEGATIVE_INT),
    ("data.max_docs_per_source", Range(lo=0, integer=True, why="0 = all")),
    ("data.sources.*.eval_fraction", Range(lo=0.0, hi=1.0, hi_open=True)),
    ("data.mixture.*", NON_NEGATIVE),
    ("data.target_budget_tokens", Range(lo=0.0, why="0 = off")),
    ("data.store_cache_mb", Range(lo=1, integer=True, why="MiB of remote token-store blocks per host")),
    # mesh / distributed / hardware
    ("mesh.*", MESH_AXIS),
    ("distributed.num_processes", Range(lo=1, integer=True, special=(-1,), why="-1 = auto")),
    ("distributed.process_id", Range(lo=0, integer=True, special=(-1,), why="-1 = auto")),
    ("hardware.peak_tflops", Range(lo=0.0, why="0 = from the chip table")),
    # evaluation (configs/eval.py)
    ("max_examples", Range(lo=0, integer=True, why="0 = all")),
    ("max_new_tokens", POSITIVE_INT),
    ("batch_size", POSITIVE_INT),
    ("few_shot", NON_NEGATIVE_INT),
    ("bertscore_layer", Range(integer=True, why="-1 = last layer")),
    ("lm_eval_bootstrap_iters", Range(lo=0, integer=True, why="0 = no bootstrap")),
    ("bootstrap.iterations", Range(lo=0, integer=True, why="0 = no intervals")),
    ("bootstrap.confidence", Range(lo=0.0, hi=1.0, lo_open=True, hi_open=True)),
    ("decoding.temperature", Range(lo=0.0, why="0 = greedy")),
    ("decoding.top_p", Range(lo=0.0, hi=1.0, lo_open=True, why="1 = no nucleus cut")),
    ("decoding.samples", Range(lo=1, integer=True, why="1 = one continuation per example")),
    # sweeps (configs/sweep.py): SLURM resources
    ("slurm.gpus_per_node", NON_NEGATIVE_INT),
    ("slurm.*", POSITIVE_INT),
    # sweeps: the mixing-law fit (fit.seed is a *.seed)
    ("fit.candidates", POSITIVE_INT),
    ("fit.starts", POSITIVE_INT),
    ("fit.*", NON_NEGATIVE),
    # name-based fallbacks (any depth)
    ("*learning_rate", POSITIVE),
    ("*.lr", POSITIVE),
    ("*dropout", Range(lo=0.0, hi=1.0, hi_open=True)),
    ("*_fraction", FRACTION),
    ("*_ratio", FRACTION),
    ("*_prob", FRACTION),
    ("*.rank", POSITIVE_INT),
    ("*.alpha", POSITIVE),
    ("*weight_decay", NON_NEGATIVE),
    ("*warmup_steps", Range(lo=0, integer=True, special=(-1,), why="-1 = use the fraction")),
    ("*.steps", POSITIVE_INT),
    ("train.epochs", Range(lo=0.0, why="0 = train for train.steps (SFT)")),
    ("*.epochs", POSITIVE),
    ("*batch_size", POSITIVE_INT),
    ("*seq_len", Range(lo=2, integer=True)),
    ("*max_len*", POSITIVE_INT),
    ("*_every", NON_NEGATIVE_INT),
    ("*num_*", POSITIVE_INT),
    ("*max_*", NON_NEGATIVE),
    ("*min_*", NON_NEGATIVE),
    ("*_s", NON_NEGATIVE),
    ("*weight", NON_NEGATIVE),
    ("*.weights.*", NON_NEGATIVE),
)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _children(node: Any) -> Iterator[tuple[str, Any]]:
    if isinstance(node, Mapping):
        yield from node.items()
    elif hasattr(node, "items") and callable(node.items):  # ConfigDict
        yield from node.items()


def numeric_items(config: Any, prefix: str = "") -> Iterator[tuple[str, float]]:
    """(dotted key, value) for every int/float leaf (bools and None skipped); lists by index."""
    for key, value in _children(config):
        path = f"{prefix}{key}"
        if _is_number(value):
            yield path, value
        elif isinstance(value, (list, tuple)):
            for i, item in enumerate(value):
                if _is_number(item):
                    yield f"{path}.{i}", item
                else:
                    yield from numeric_items(item, f"{path}.{i}.")
        else:
            yield from numeric_items(value, f"{path}.")


def rule_for(key: str) -> Range | None:
    """First rule whose pattern matches the key or a suffix of it: a config nested in another
    (a sweep's ``base.optim.b1``, ``eval.few_shot``) is checked by the same rules."""
    parts = key.split(".")
    suffixes = [".".join(parts[i:]) for i in range(len(parts))]
    for pattern, rng in RULES:
        if any(fnmatch.fnmatchcase(k, pattern) for k in suffixes):
            return rng
    return None


def uncovered_numeric_keys(config: Any) -> list[str]:
    """Numeric keys of `config` that no rule covers (should be empty: add a rule)."""
    return [k for k, _ in numeric_items(config) if rule_for(k) is None]


def _get(config: Any, dotted: str, default: Any = None) -> Any:
    node = config
    for part in dotted.split("."):
        try:
            node = node[part]
        except (KeyError, TypeError, AttributeError, IndexError):
            return default
    return node


def validate_config(config: Any, artifacts: ArtifactLookup | None = None) -> None:
    """Raises ConfigError naming the first key that is wrong (ConfigRangeError for a range).

    Order: config.task, ranges and relations between keys (any task), then the task's own checks;
    with `artifacts`, also the model artifacts and tokenizer the config names on disk.
    Unknown numeric keys are not errors here (``uncovered_numeric_keys`` is the test-time check);
    non-finite floats are refused everywhere.
    """
    task = Task.parse(_get(config, "task"), "task")
    check_ranges(config)
    _TASK_CHECKS[task](config, artifacts)


def check_ranges(config: Any) -> None:
    """Raises ConfigRangeError naming the first numeric key out of its range, or a bad relation."""
    nested = _nested_experiments(config)
    for name, sub in nested.items():  # a sweep's base / eval configs: checked as experiments of their own
        try:
            check_ranges(sub)
        except ConfigRangeError as err:
            raise ConfigRangeError(str(err).replace("config.", f"config.{name}.", 1)) from None
    for key, value in numeric_items(config):
        if key.split(".", 1)[0] in nested:
            continue
        rng = rule_for(key)
        if rng is None:
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigRangeError(f"config.{key}={value!r}: must be finite")
            continue
        if not rng.contains(value):
            raise ConfigRangeError(f"config.{key}={value!r}: must be {rng.describe()}")
    _cross_checks(config)


def _nested_experiments(config: Any) -> dict[str, Any]:
    """Sub-configs that are whole experiments (configs/sweep.py: base = a pretrain config, eval = an
    eval config); their keys are validated without the prefix."""
    if _get(config, "task") != "sweep":
        return {}
    return {k: config[k] for k in ("base", "eval") if _get(config, k) is not None}


def _cross_checks(config: Any) -> None:
    """Relations between keys that single ranges cannot express."""
    steps = _get(config, "train.steps")
    warm = _get(config, "optim.warmup_steps")
    if _is_number(steps) and _is_number(warm) and warm > steps:
        raise ConfigRangeError(f"config.optim.warmup_steps={warm} exceeds config.train.steps={steps}: the "
                               "peak learning rate would never be reached")
    cycles = _get(config, "optim.cycles")
    if _get(config, "optim.schedule") == Schedule.CYCLIC_COSINE and _is_number(steps) and _is_number(cycles) \
            and cycles > steps:
        raise ConfigRangeError(f"config.optim.cycles={cycles} exceeds config.train.steps={steps}: a cycle "
                               "needs at least one step")
    _check_budget(config)
    gbs, k = _get(config, "train.global_batch_size"), _get(config, "train.micro_batches")
    if _is_number(gbs) and _is_number(k) and k >= 1 and gbs % k:
        raise ConfigRangeError(f"config.train.global_batch_size={gbs} is not divisible by "
                               f"config.train.micro_batches={k}")
    bench_every, bench_tasks = _get(config, "train.bench_every"), _get(config, "bench.tasks")
    if _is_number(bench_every) and bench_every > 0 and not str(bench_tasks or "").strip(" ,"):
        raise ConfigRangeError(f"config.train.bench_every={bench_every} but config.bench.tasks is empty; name "
                               "the benchmarks to score, e.g. --config.bench.tasks=pubmedqa,medqa")
    samples, temperature = _get(config, "decoding.samples"), _get(config, "decoding.temperature")
    if _is_number(samples) and _is_number(temperature) and samples > 1 and temperature == 0:
        raise ConfigRangeError(f"config.decoding.samples={samples} with config.decoding.temperature=0: greedy "
                               "decoding gives the same continuation every time; set a temperature > 0")
    mixture = _get(config, "data.mixture")
    if mixture is not None and hasattr(mixture, "items"):
        weights = [v for _, v in mixture.items() if _is_number(v)]
        if weights and sum(weights) <= 0:
            raise ConfigRangeError(f"config.data.mixture={dict(mixture.items())}: at least one weight must be > 0")


def _check_budget(config: Any) -> None:
    """data.target_budget_tokens (the full run a short run stands for) holds at least one batch and
    at least this run's own budget (train.steps x global_batch_size x seq_len): the short run keeps a
    budget/target share of each source, which cannot exceed all of it."""
    target = _get(config, "data.target_budget_tokens")
    if not _is_number(target) or target <= 0:
        return
    steps, gbs, seq = (_get(config, k) for k in ("train.steps", "train.global_batch_size", "data.seq_len"))
    if not all(_is_number(v) for v in (steps, gbs, seq)):
        return
    batch = int(gbs) * int(seq)
    if target < batch:
        raise ConfigRangeError(f"config.data.target_budget_tokens={target:g} is smaller than one batch "
                               f"(train.global_batch_size x data.seq_len = {batch} tokens)")
    if target < int(steps) * batch:
        raise ConfigRangeError(f"config.data.target_budget_tokens={target:g} is smaller than this run's own "
                               f"budget (train.steps x global_batch_size x seq_len = {int(steps) * batch} "
                               "tokens): a short run stands for a longer one")


# ------------------------------------------------------------------------------ per task
def _check_eval(config: Any, artifacts: ArtifactLookup | None) -> None:
    """config.checkpoint must be a model artifact with a tokenizer (its own or config.tokenizer_path)."""
    checkpoint = _get(config, "checkpoint")
    if not checkpoint or artifacts is None:
        return
    try:
        artifact = artifacts.resolve_artifact(checkpoint)
    except (FileNotFoundError, ValueError) as err:
        raise ConfigError(f"config.checkpoint={checkpoint!r}: {err}") from err
    if not artifact.tokenizer_file and not _get(config, "tokenizer_path"):
        raise ConfigError(f"config.checkpoint={checkpoint!r}: no tokenizer files (tokenizer.model or "
                          "tokenizer.json) travel with it "
                          f"({artifact.root}); set config.tokenizer_path")


def _check_sft(config: Any, artifacts: ArtifactLookup | None) -> None:
    chat_template = config.data.chat_template
    if chat_template not in template_names():
        raise ConfigError(f"config.data.chat_template={chat_template!r}: expected one of "
                          f"{list(template_names())}")
    try:
        spec_from_config(config.get("lora"))
    except ValueError as err:
        raise ConfigError(str(err)) from err
    _check_training(config, artifacts, Task.SFT)


def _check_pretrain(config: Any, artifacts: ArtifactLookup | None) -> None:
    _check_training(config, artifacts, Task.PRETRAIN)


def _check_training(config: Any, artifacts: ArtifactLookup | None, task: Task) -> None:
    """The model (preset + overrides), the choices of the training loop, and with `artifacts` the
    init_from artifact and the tokenizer a real-data run encodes with."""
    preset = config.model.preset
    if preset not in PRESETS:
        raise ConfigError(f"config.model.preset={preset!r}: expected one of {sorted(PRESETS)}")
    try:
        PRESETS[preset].replace(**model_overrides(config.model))
    except ValueError as err:
        raise ConfigError(f"config.model: {err}") from err
    Schedule.parse(config.optim.schedule, "optim.schedule")
    DecayShape.parse(_get(config, "optim.decay_shape", "linear"), "optim.decay_shape")
    rewarm_from = RewarmFrom.parse(_get(config, "optim.rewarm_from", "zero"), "optim.rewarm_from")
    rewarm = bool(_get(config, "optim.rewarm", False))
    if rewarm and not config.model.init_from:
        raise ConfigError("config.optim.rewarm=True re-warms a continued run: set config.model.init_from")
    if _get(config, "data.target_budget_tokens", 0) and task is not Task.PRETRAIN:
        raise ConfigError(f"config.data.target_budget_tokens is a pretraining setting; a {task} run "
                          "keeps it 0")
    token_store = _get(config, "data.token_store", "")
    if not isinstance(token_store, str):
        raise ConfigError(f"config.data.token_store={token_store!r}: expected '' or a directory / gs:// / "
                          "s3:// URL of a token store")
    if token_store and task is not Task.PRETRAIN:
        raise ConfigError(f"config.data.token_store={token_store!r} is a pretraining setting (a store of "
                          f"documents); a {task} run keeps it ''")
    if token_store and _get(config, "data.synthetic", False):
        raise ConfigError("config.data.token_store is set but config.data.synthetic=True generates tokens "
                          "without sources; set one of them off")
    LossImpl.parse(config.train.loss_impl, "train.loss_impl")
    packing = _get(config, "data.packing")
    if packing is not None and Packing.parse(packing, "data.packing") not in _PACKINGS[task]:
        raise ConfigError(f"config.data.packing={packing!r}: a {task} run expects "
                          + " or ".join(p.value for p in _PACKINGS[task]))
    if artifacts is None:
        return
    init_from = config.model.init_from
    if init_from and not os.path.exists(os.path.expanduser(init_from)):
        raise ConfigError(f"config.model.init_from={init_from!r}: no such path")
    try:
        init = artifacts.init_artifact(config.model)
        if rewarm and rewarm_from is RewarmFrom.CHECKPOINT and init is not None and init.kind != "training":
            raise ConfigError(f"config.optim.rewarm_from='checkpoint': model.init_from={init_from!r} is a "
                              f"{init.kind} model with no last learning rate (only a training workdir has "
                              "one); use config.optim.rewarm_from=zero")
        if not config.data.get("synthetic", False):
            artifacts.training_tokenizer_file(config)
    except (FileNotFoundError, ValueError) as err:
        raise ConfigError(str(err)) from err


def _check_sweep(config: Any, artifacts: ArtifactLookup | None) -> None:
    """A sweep's base and eval configs are checked by range here; each point is validated in full
    when launch.py starts it."""


_TASK_CHECKS: dict[Task, Callable[[Any, ArtifactLookup | None], None]] = {
    Task.PRETRAIN: _check_pretrain, Task.SFT: _check_sft, Task.EVAL: _check_eval, Task.SWEEP: _check_sweep}
