"""Ahead-of-time compile of the real train step for a TPU topology, from a CPU host.

The step compiled here is the one ``launch.py`` runs: ``train.loop.Trainer`` builds the shardings
from ``config.sharding.rules`` and jits ``train.step.make_train_step`` (LoRA and SFT included);
only the devices differ (``jax.experimental.topologies`` gives the TPU slice's devices without a
TPU, through libtpu). XLA's memory analysis then says what one chip holds, and the compiled HLO
says how many FLOPs and which collectives one step costs.
"""
from __future__ import annotations

import dataclasses
import glob
import os
import tempfile
import time
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding

from mellama_jax import sharding as shd
from mellama_jax.model.config import LlamaConfig
from mellama_jax.plan import hlo as hlo_lib
from mellama_jax.plan.hardware import TpuTopology, parse_tpu_topology
from mellama_jax.train import metrics as metrics_lib

# dtypes of the batch arrays the pipelines produce (train/synthetic.py, data/pipeline.py).
BATCH_DTYPES = {"inputs": jnp.int32, "targets": jnp.int32, "positions": jnp.int32,
                "segment_ids": jnp.int32, "loss_mask": jnp.float32}


@dataclasses.dataclass
class Roofline:
    """Per-device time bounds of one step; ``step_s`` assumes perfect overlap (optimistic)."""

    compute_s: float
    hbm_s: float
    collective_s: float

    @property
    def step_s(self) -> float:
        return max(self.compute_s, self.hbm_s, self.collective_s)

    @property
    def bound(self) -> str:
        return max((self.compute_s, "compute"), (self.hbm_s, "HBM"),
                   (self.collective_s, "collectives"))[1]


@dataclasses.dataclass
class AotPlan:
    """Everything one ahead-of-time compile says about a config on a topology (per device)."""

    topology: str
    device_kind: str
    num_devices: int
    mesh: dict
    model_config: LlamaConfig
    seq_len: int
    global_batch_size: int
    micro_batches: int
    lora: bool
    argument_bytes: int
    output_bytes: int
    alias_bytes: int
    temp_bytes: int
    code_bytes: int
    hbm_bytes: int  # per device
    xla_flops: float  # XLA cost analysis (loop bodies once)
    flops: float  # loop-corrected
    hbm_traffic_bytes: float  # counted per instruction, loop trip counts applied (plan.hlo.traffic)
    model_flops_per_step: float  # 6N + 12LHS per token x tokens, whole step, all devices
    peak_flops: float  # per device
    loops: list
    collectives: list
    roofline: Roofline | None  # None when the compiler refused the program (out of memory)
    compile_s: float
    notes: list
    param_specs: Any = None  # tree of PartitionSpecs of the compiled step's params input
    # The TPU compiler refuses a program that cannot fit (RESOURCE_EXHAUSTED); its message, if so.
    oom_message: str = ""
    kernels: list = dataclasses.field(default_factory=list)  # [hlo.Kernel]: Pallas custom calls
    links: str = ""  # the slice's wiring the compile assumed (hardware.TpuTopology.links)

    @property
    def total_bytes(self) -> int:
        """Peak HBM per device: live arguments + outputs not aliased to them + temporaries + code."""
        return (self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes
                + self.code_bytes)

    @property
    def fits(self) -> bool:
        return not self.oom_message and self.total_bytes <= self.hbm_bytes

    @property
    def tokens_per_step(self) -> int:
        return self.global_batch_size * self.seq_len

    @property
    def mfu(self) -> float | None:
        if self.roofline is None or not self.roofline.step_s:
            return None
        return self.model_flops_per_step / (self.num_devices * self.peak_flops * self.roofline.step_s)

    @property
    def causal_mfu(self) -> float | None:
        """``mfu`` with causal attention counted as half (6N + 6LHS, what a causal kernel must
        compute): ``mfu`` keeps the non-causal 12LHS of every reported figure, and passes 100% when
        the kernel skips the masked blocks and attention is a large share (metrics module doc)."""
        if self.mfu is None:
            return None
        full = metrics_lib.flops_per_token(self.model_config, self.seq_len)
        return self.mfu * metrics_lib.flops_per_token(self.model_config, self.seq_len, causal=True) / full

    def to_dict(self) -> dict:
        out = {k: v for k, v in dataclasses.asdict(self).items()
               if k not in ("model_config", "param_specs", "roofline", "collectives", "kernels")}
        roofline = self.roofline
        out.update(model=self.model_config.to_dict(), total_bytes=self.total_bytes, fits=self.fits,
                   step_s=roofline.step_s if roofline else None,
                   bound=roofline.bound if roofline else None, mfu=self.mfu, causal_mfu=self.causal_mfu,
                   roofline=dataclasses.asdict(roofline) if roofline else None,
                   collectives=[dataclasses.asdict(c) for c in self.collectives],
                   kernels=[dataclasses.asdict(k) for k in self.kernels])
        return out


def _unlocked_copy(config: Any) -> Any:
    copy = config.copy_and_resolve_references()
    if hasattr(copy, "unlock"):
        copy.unlock()
    return copy


def plan_model_config(config: Any) -> tuple[Any, LlamaConfig, list[str]]:
    """(config to build with, LlamaConfig, notes) without reading any weights or training data.

    A missing ``config.model.init_from`` (the usual case on a planning host) falls back to the
    preset's shapes, and says so. When the run would take the vocabulary from the training
    tokenizer (no init_from, real data), the tokenizer file is read for its size only.
    """
    from mellama_jax.train import loop

    notes: list[str] = []
    init_from = os.path.expanduser(config.model.get("init_from", "") or "")
    if init_from and not os.path.exists(init_from):
        notes.append(f"config.model.init_from={config.model.init_from!r} is not on this host: "
                     f"shapes from preset {config.model.preset!r} (+ config.model overrides)")
        config = _unlocked_copy(config)
        config.model.init_from = ""
        return config, loop.resolve_model_config(config), notes
    vocab = None
    if not init_from and not config.data.get("synthetic", False):
        try:
            from mellama_jax.checkpoint.model_spec import training_tokenizer_file
            from mellama_jax.tokenizer import load_tokenizer
            vocab = load_tokenizer(training_tokenizer_file(config)).vocab_size
        except Exception as err:  # planning should not need the data; say what was assumed
            notes.append(f"vocab_size from the preset (training tokenizer not readable: {err})")
    return config, loop.resolve_model_config(config, vocab), notes


def topology_devices(topology: TpuTopology) -> list:
    """The devices of a TPU slice, for compiling only (needs libtpu, not a TPU)."""
    from jax.experimental import topologies
    # libtpu takes a host-wide lock meant for processes that drive a real TPU; compiling touches
    # none, so let several planners (parallel sweeps, test runs) share the host.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    try:
        # The slice's wiring as the real one has it (hardware.TpuTopology.wrap): libtpu picks its
        # collectives by it, and assumes no wraparound unless told.
        desc = topologies.get_topology_desc(platform="tpu", topology_name=topology.name,
                                            chip_config_name=topology.chip_config_name,
                                            wrap=topology.wrap)
    except Exception as err:
        try:
            import libtpu  # noqa: F401
            hint = ("name a slice that exists, e.g. v5e:2x2, v5e:4x4, v5p:2x2x1, v5p:4x4x4, "
                    "v4:2x2x1, v6e:2x2")
        except ImportError:
            hint = "ahead-of-time TPU compiles need libtpu: pip install -r requirements-dev.txt"
        raise ValueError(f"--topology={topology.name}: cannot describe this TPU slice "
                         f"({str(err).splitlines()[0]}); {hint}") from err
    return list(desc.devices)


def abstract_batch(config: Any, mesh: jax.sharding.Mesh) -> dict:
    from mellama_jax.train import step as step_lib
    shape = (int(config.train.global_batch_size), int(config.data.seq_len))
    sharding = step_lib.batch_shardings(mesh)
    return {k: jax.ShapeDtypeStruct(shape, BATCH_DTYPES[k], sharding=sharding[k])
            for k in step_lib.BATCH_KEYS}


def _with_sharding(shapes: Any, shardings: Any) -> Any:
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        shapes, shardings)


def lower_train_step(config: Any, model_config: LlamaConfig, devices: list):
    """(Trainer, jax.stages.Lowered) of the real train step on ``devices`` (no device memory used)."""
    from mellama_jax.train import loop
    from mellama_jax.train import step as step_lib

    mesh = shd.make_mesh(config.mesh, devices=devices)
    loop.validate_batch_layout(config, mesh)
    trainer = loop.Trainer(config, model_config, mesh)
    args = [trainer.abstract_state(), abstract_batch(config, mesh)]
    if trainer.lora is not None:  # the frozen base is the step's third argument
        args.append(_with_sharding(trainer.frozen_shapes, trainer.frozen_shardings))
    lower = step_lib.with_mesh_context(trainer.jitted_train_step.inner.lower, mesh, trainer.rules)
    return trainer, lower(*args)


@dataclasses.dataclass
class CompiledCost:
    """Per-device FLOPs, HBM traffic and roofline of one compiled program (any program: ours or
    another framework's, e.g. benchmarks/compare_maxtext.py), all from the same formulas."""

    xla_flops: float  # XLA cost analysis (loop bodies once)
    flops: float  # loop-corrected, Pallas kernels included
    hbm_traffic_bytes: float  # counted per instruction, loop trip counts applied
    stats: hlo_lib.HloStats
    roofline: Roofline
    xla_bytes: float = 0.0  # XLA's bytes accessed (loop bodies once)
    traffic: hlo_lib.Traffic | None = None  # the count behind hbm_traffic_bytes, by scope and kind


def analyze_compiled(compiled: Any, num_devices: int, chip: Any, per_chip: int = 1,
                     text: str | None = None) -> CompiledCost:
    """FLOPs, HBM bytes and roofline of a ``jax.stages.Compiled`` for ``chip`` (hardware.Chip);
    ``text``: its HLO text when the caller already has it (see ``hlo_text``)."""
    cost = compiled.cost_analysis() or {}
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else {}
    text = compiled.as_text() if text is None else text
    stats = hlo_lib.analyze(text, num_devices)
    xla_flops = float(cost.get("flops", 0.0))
    looped = xla_flops + stats.dot_flops - stats.dot_flops_once
    # HBM traffic: each executed instruction's bytes times its computation's trip count. Loop
    # bodies once, this count reads 0.81-0.91x XLA's own bytes accessed on the LLaMA-2 13B and 70B
    # programs (ours and MaxText's, BENCHMARKS.md); scaling XLA's figure by the FLOPs' loop factor
    # instead, as this planner did before, also multiplied the optimizer update and everything
    # else that runs once per step by the layers x micro-batches factor (2.2x the counted bytes
    # for the 13B recipe, 1.14x for MaxText's).
    xla_bytes = float(cost.get("bytes accessed", 0.0))
    counted = hlo_lib.traffic(text)
    # Pallas kernels (splash attention): XLA counts no FLOPs inside them; counted from their shapes.
    flops = looped + stats.kernel_flops
    wire = sum(c.wire_bytes for c in stats.collectives)
    roofline = Roofline(flops / (chip.peak_flops / per_chip),
                        counted.bytes / (chip.hbm_bandwidth / per_chip),
                        wire / (chip.interconnect_bandwidth / per_chip))
    return CompiledCost(xla_flops, flops, counted.bytes, stats, roofline, xla_bytes, counted)


def _hlo_dump_options(path: str) -> dict:
    return {"xla_dump_to": path, "xla_dump_hlo_as_text": True, "xla_dump_hlo_module_re": "jit_train_step"}


def hlo_text(compiled: Any, dump: tempfile.TemporaryDirectory) -> str:
    """The compiled HLO as text. jaxlib 0.10.2 cannot read back some programs libtpu 0.0.46.3 emits
    ("async-update instruction should have 1 operands but sees 4", e.g. LLaMA-3 8B with
    8 micro-batches); then the text libtpu printed itself into ``dump`` is used (the same parse:
    tests/test_plan.py). The directory is removed either way."""
    try:
        return compiled.as_text()
    except jax.errors.JaxRuntimeError as err:
        if "async-update" not in str(err):
            raise
        paths = sorted(glob.glob(os.path.join(dump.name, "*jit_train_step*after_optimizations.txt")))
        if not paths:
            raise
        with open(paths[-1]) as f:
            return f.read()
    finally:
        dump.cleanup()


def compile_plan(config: Any, topology: str | TpuTopology) -> AotPlan:
    """Compile ``config``'s train step for ``topology`` (e.g. "v5p:4x4x4") and analyse it."""
    topo = parse_tpu_topology(topology) if isinstance(topology, str) else topology
    config, model_config, notes = plan_model_config(config)
    devices = topology_devices(topo)
    per_chip = max(1, len(devices) // topo.num_chips)  # TensorCores exposed as devices per chip
    t0 = time.perf_counter()
    trainer, lowered = lower_train_step(config, model_config, devices)
    seq, gbs = int(config.data.seq_len), int(config.train.global_batch_size)
    common = dict(
        topology=topo.name, links=topo.links, device_kind=devices[0].device_kind, num_devices=len(devices),
        mesh=dict(trainer.mesh.shape), model_config=model_config, seq_len=seq,
        global_batch_size=gbs, micro_batches=int(config.train.micro_batches),
        lora=trainer.lora is not None, hbm_bytes=topo.chip.hbm_bytes // per_chip,
        model_flops_per_step=metrics_lib.flops_per_token(model_config, seq) * gbs * seq,
        peak_flops=topo.chip.peak_flops / per_chip, notes=notes)
    dump = tempfile.TemporaryDirectory(prefix="mellama_plan_hlo_")
    try:
        compiled = lowered.compile(compiler_options=_hlo_dump_options(dump.name))
    except jax.errors.JaxRuntimeError as err:
        dump.cleanup()
        if "RESOURCE_EXHAUSTED" not in str(err):
            raise
        message = str(err).split("RESOURCE_EXHAUSTED:", 1)[-1].strip().splitlines()[0]
        return AotPlan(**common, argument_bytes=0, output_bytes=0, alias_bytes=0, temp_bytes=0,
                       code_bytes=0, xla_flops=0.0, flops=0.0, hbm_traffic_bytes=0.0, loops=[],
                       collectives=[], roofline=None, compile_s=time.perf_counter() - t0,
                       oom_message=message)
    compile_s = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    cost = analyze_compiled(compiled, len(devices), topo.chip, per_chip, text=hlo_text(compiled, dump))
    state_in = compiled.input_shardings[0][0]
    param_specs = jax.tree.map(lambda s: s.spec, state_in.params,
                               is_leaf=lambda x: isinstance(x, NamedSharding))
    return AotPlan(
        **common, argument_bytes=int(mem.argument_size_in_bytes), output_bytes=int(mem.output_size_in_bytes),
        alias_bytes=int(mem.alias_size_in_bytes), temp_bytes=int(mem.temp_size_in_bytes),
        code_bytes=int(mem.generated_code_size_in_bytes),
        xla_flops=cost.xla_flops, flops=cost.flops, hbm_traffic_bytes=cost.hbm_traffic_bytes,
        loops=cost.stats.loops, collectives=cost.stats.collectives, kernels=cost.stats.kernels,
        roofline=cost.roofline,
        compile_s=compile_s, param_specs=param_specs)
