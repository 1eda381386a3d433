"""Benchmarks scored inside training, for forgetting / specialisation curves without a separate
evaluation per checkpoint.

Every `config.train.bench_every` steps (and at the last step) the tasks of `config.bench.tasks` are
scored on the training mesh from the live parameters (no reload, no copy to the host) and logged as
`bench/<task>/<metric>` (e.g. `bench/pubmedqa/accuracy`) in metrics.jsonl and TensorBoard, with
`bench/seconds` for the whole call. `config.bench` holds configs/eval.py's keys with its defaults
(protocol, prompt set, few-shot, chat template, data_dir, task_paths, max_examples, ...), so a number
here is the one `launch.py --config configs/eval.py --config.checkpoint=W/checkpoints/<step>` with
the same keys prints for that step's checkpoint: the tasks are prepared by the same code
(runner.prepare_task), scored by the same code (runner's per-task evaluation, eval/engine.py) over the
same parameters with the same shardings. A LoRA run scores base + adapters merged, as the
evaluation of its checkpoint does. `chat_template=auto` means the template the run's checkpoints
carry: an SFT run's `data.chat_template`, else init_from's.

train/ must not import eval/ (evaluation sits above training), so launch.py composes them:
`prepare(config, workdir)` reads and checks every task file and renders its prompts before anything
is compiled (a missing file or an unknown task fails at once, naming it), and returns the
`BenchHooks` factory that `train.loop.run(..., make_hooks=...)` calls once its Trainer exists.
"""
from __future__ import annotations

import logging
import math
import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import jax
import ml_collections

from mellama_jax.checkpoint import model_spec
from mellama_jax.config_validation import ConfigError
from mellama_jax.eval import runner, session
from mellama_jax.eval.engine import Engine
from mellama_jax.eval.runner import PreparedTask
from mellama_jax.eval.tasks import get_task
from mellama_jax.model import lora as lora_lib
from mellama_jax.tokenizer import load_tokenizer
from mellama_jax.tokenizer.chat_templates import hf_chat_template, template_name_for_jinja, template_names
from mellama_jax.train.checkpointing import checkpoint_dir
from mellama_jax.train.hooks import StepInfo
from mellama_jax.train.metrics import say

log = logging.getLogger(__name__)

__all__ = ["BenchConfigError", "BenchHooks", "BenchHook", "prepare", "eval_view", "bench_chat_template",
           "bench_tokenizer_file"]


class BenchConfigError(ConfigError):
    """config.bench / config.train.bench_every cannot run; raised before the first step."""


def _bench_error(err: Exception) -> BenchConfigError:
    # runner's messages name eval's keys (config.task_paths.X); here they live under config.bench.
    return BenchConfigError("in-training benchmarks: " + re.sub(r"\bconfig\.(?!bench\.)", "config.bench.", str(err)))


def bench_chat_template(config: Any) -> str:
    """config.bench.chat_template, with "auto" resolved to the template the run's checkpoints carry
    (what the standalone evaluation of a checkpoint reads): the SFT pipeline's, else init_from's."""
    name = config.bench.chat_template or "none"
    if name != "auto":
        if name not in template_names():
            raise BenchConfigError(f"config.bench.chat_template={name!r}: expected auto or one of {list(template_names())}")
        return name
    jinja = hf_chat_template(config.data.chat_template) if config.get("task") == "sft" else None
    artifact = model_spec.init_artifact(config.model)
    jinja = jinja or (artifact.chat_template if artifact is not None else None)
    found = template_name_for_jinja(jinja)
    if found is None:
        raise BenchConfigError("config.bench.chat_template=auto: config.model.init_from carries a chat template "
                               "that is none of ours; set config.bench.chat_template explicitly")
    return found


def bench_tokenizer_file(config: Any) -> str:
    """The tokenizer the run's checkpoints carry (train.loop writes it): the training tokenizer,
    or for synthetic data init_from's."""
    if not config.data.get("synthetic", False):
        return model_spec.training_tokenizer_file(config)
    artifact = model_spec.init_artifact(config.model)
    if artifact is None or not artifact.tokenizer_file:
        raise BenchConfigError("config.train.bench_every>0 needs a tokenizer, and a synthetic-data run has one only "
                               "from config.model.init_from (an artifact with tokenizer.model)")
    return artifact.tokenizer_file


def eval_view(config: Any, workdir: str) -> ml_collections.ConfigDict:
    """config.bench as the evaluation config the runner's functions read: chat template resolved,
    no progress bars, no bootstrap intervals and no published columns (neither is logged)."""
    view = ml_collections.ConfigDict(config.bench.to_dict())
    view.chat_template = bench_chat_template(config)
    view.checkpoint = checkpoint_dir(workdir)  # what the standalone evaluation names; never opened here
    view.show_progress = False
    view.bootstrap = ml_collections.ConfigDict(dict(iterations=0, seed=0, confidence=0.95))
    view.published = ml_collections.ConfigDict(dict(model=""))
    return view


def _numbers(metrics: dict) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))}


@dataclass
class BenchHook:
    """The state hook: scores the prepared tasks on `state.params` and writes bench/<task>/<metric>."""

    tasks: dict[str, PreparedTask]
    view: ml_collections.ConfigDict
    tokenizer: Any
    trainer: Any
    write: Callable[[int, dict], None]
    last: dict = field(default_factory=dict)  # task -> (result, records) of the newest call (tests)

    def __post_init__(self) -> None:
        model_config = self.trainer.model_config
        if self.view.dtype:
            model_config = model_config.replace(dtype=self.view.dtype)
        self.model_config = model_config
        self._merge = None
        if self.trainer.lora is not None:  # base + (alpha / r) A B, on the base's shardings
            spec = self.trainer.lora
            self._merge = jax.jit(lambda base, adapters: lora_lib.merge(base, adapters, spec),
                                  out_shardings=self.trainer.frozen_shardings)

    def params(self, live: Any) -> Any:
        """The model the checkpoint of this step evaluates as: the live params, or base + adapters merged."""
        return live if self._merge is None else self._merge(self.trainer.frozen_params(), live)

    def score(self, live_params: Any) -> dict[str, float]:
        """bench/<task>/<metric> for every task, and bench/seconds."""
        t0 = time.perf_counter()
        engine = Engine(self.model_config, self.params(live_params), self.tokenizer,
                        batch_size=int(self.view.batch_size), mesh=self.trainer.mesh, rules=self.trainer.rules,
                        show_progress=False)
        out: dict[str, float] = {}
        for name, task in self.tasks.items():
            result, records = runner.evaluate_task(engine, task, self.view)
            self.last[name] = (result, records)
            out.update({f"bench/{name}/{k}": v for k, v in _numbers(result["metrics"]).items()})
        out["bench/seconds"] = time.perf_counter() - t0
        return out

    def __call__(self, info: StepInfo) -> None:
        out = self.score(info.state.params)
        say(f"bench @ step {info.step}: " + ", ".join(
            f"{name} {out.get(f'bench/{name}/{task.spec.headline}', float('nan')):.4f}"
            for name, task in self.tasks.items()) + f" ({out['bench/seconds']:.1f}s)")
        self.write(info.step, out)


@dataclass
class BenchHooks:
    """What train.loop.run's `make_hooks` gets: prepared tasks and the tokenizer, turned into the
    BenchHook once the Trainer (model config, mesh, rules, LoRA base) exists."""

    tasks: dict[str, PreparedTask]
    view: ml_collections.ConfigDict
    tokenizer: Any
    every: int
    hooks: list = field(default_factory=list)  # the BenchHook(s) built (tests read .last)

    def __call__(self, trainer: Any, write: Callable[[int, dict], None]) -> list[tuple[BenchHook, int]]:
        vocab = int(trainer.model_config.vocab_size)
        if self.tokenizer.vocab_size > vocab:
            raise BenchConfigError(f"in-training benchmarks: tokenizer {self.tokenizer.model_path} has "
                                   f"{self.tokenizer.vocab_size} pieces, more than the model's vocab_size={vocab}")
        hook = BenchHook(self.tasks, self.view, self.tokenizer, trainer, write)
        self.hooks.append(hook)
        return [(hook, self.every)]


def prepare(config: Any, workdir: str) -> BenchHooks | None:
    """None when config.train.bench_every is 0; else every task of config.bench.tasks read,
    validated and rendered (BenchConfigError naming the task and path otherwise), ready for the loop."""
    every = int(config.train.get("bench_every", 0) or 0)
    if every <= 0:
        return None
    try:
        names = session.task_names(config.bench.tasks, "config.train.bench_every>0 but config.bench.tasks is "
                                                        "empty; e.g. --config.bench.tasks=pubmedqa,medqa")
        if names == ["all"]:
            names = list(runner.MELLAMA_TASKS)
        specs = [get_task(n) for n in names]
        view = eval_view(config, workdir)
        runner.validate_eval_config(view)  # protocol, prompt set, normalisation: eval's own checks
        tasks = {}
        for spec in specs:
            tasks[spec.name] = runner.prepare_task(spec, view)
            log.info("bench %s: %d examples from %s", spec.name, len(tasks[spec.name].examples), tasks[spec.name].path)
    except BenchConfigError:
        raise
    except (ValueError, FileNotFoundError) as err:
        raise _bench_error(err) from None
    tokenizer = load_tokenizer(bench_tokenizer_file(config))
    say(f"benchmarks every {every} steps: " + ", ".join(f"{n} ({len(t.examples)})" for n, t in tasks.items()))
    return BenchHooks(tasks, view, tokenizer, every)
