"""Will this config fit, and how fast could it go? Checked from a CPU host.

    python -m mellama_jax.cli.plan --config configs/pretrain.py:llama2_70b --topology v5p:4x4x4
    python -m mellama_jax.cli.plan --config configs/pretrain.py:llama2_13b --topology v5p:2x2x4 --sweep
    python -m mellama_jax.cli.plan --config configs/pretrain.py:llama2_70b --gpus 64xH100 \\
        --config.train.micro_batches=16

--topology compiles the real train step ahead of time for that TPU slice (needs libtpu, not a
TPU); --gpus gives the analytic estimate for a GPU cluster. --config.* overrides work as in
launch.py. Exit status: 0 fits, 1 does not fit (a sweep: no row fits), 2 bad flags or config
(a config file that does not load, a task without a train step, a batch launch.py would refuse).
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys

from absl import app, flags

from mellama_jax.cli.config_flags import define_config_flag, parse_flags
from mellama_jax.config_validation import Task, validate_config
from mellama_jax.model.attention import resolve_attention_impl
from mellama_jax.plan import aot, estimate as est_lib, report
from mellama_jax.plan import cost as cost_lib
from mellama_jax.plan.hardware import GPU_CHIPS, TPU_CHIPS, parse_gpu_cluster, parse_tpu_topology

PROG = "mellama_jax.cli.plan"
# The same --config flag as launch.py's: comma-separated tuples and data.sources_spec expansion too.
_CONFIG = define_config_flag("config", "Experiment config, e.g. configs/pretrain.py:llama2_70b")
_TOPOLOGY = flags.DEFINE_string("topology", None, "TPU slice to compile for, e.g. v5p:4x4x4, v5e:2x2")
_GPUS = flags.DEFINE_string("gpus", None, "GPU cluster for the analytic estimate, e.g. 8xH100, 64xH200")
_SWEEP = flags.DEFINE_bool("sweep", False, "Try several meshes x remat policies; print one table.")
_SWEEP_TENSOR = flags.DEFINE_list("sweep_tensor", ["1", "4", "8"],
                                  "--sweep: tensor-parallel sizes (data=1, fsdp=the rest)")
_SWEEP_MESHES = flags.DEFINE_string("sweep_meshes", "", "--sweep: explicit meshes 'data,fsdp,tensor;...'"
                                    " (-1 fills), instead of --sweep_tensor")
_SWEEP_REMAT = flags.DEFINE_list("sweep_remat", ["full", "dots_with_no_batch_dims_saveable", "dots_saveable"],
                                 "--sweep: remat policies")
_ESTIMATE = flags.DEFINE_bool("estimate", True, "With --topology: also print the analytic estimate.")
_JSON = flags.DEFINE_string("json", "", "Also write the results as JSON to this file.")
_COST = flags.DEFINE_bool("cost", False, "Also project the whole run: wall-clock, accelerator-hours and cost at "
                          "the on-demand prices in --prices (the roofline bound, and at --cost_mfu).")
_COST_MFU = flags.DEFINE_float("cost_mfu", 0.5, "--cost: the model-FLOPs utilisation of the second projection.")
_COST_EXAMPLES = flags.DEFINE_integer("cost_examples", cost_lib.ME_LLAMA_SFT_EXAMPLES,
                                      "--cost, epoch-based (SFT) configs: examples per epoch.")
_PRICES = flags.DEFINE_string("prices", cost_lib.PRICES_FILE, "--cost: the dated prices file (JSON).")

FITS, DOES_NOT_FIT, USAGE = 0, 1, 2


def _fail(msg: str) -> None:
    print(f"{PROG}: {msg}", file=sys.stderr)
    sys.exit(USAGE)


def _variant(config, mesh: tuple, remat: str):
    c = aot._unlocked_copy(config)
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = mesh
    c.model.remat_policy = remat
    return c


def sweep_meshes(num_devices: int) -> list[tuple]:
    if _SWEEP_MESHES.value:
        try:
            return [tuple(int(x) for x in m.split(",")) for m in _SWEEP_MESHES.value.split(";") if m]
        except ValueError:
            _fail(f"--sweep_meshes={_SWEEP_MESHES.value!r}: expected 'data,fsdp,tensor;...'")
    sizes = [int(t) for t in _SWEEP_TENSOR.value]
    return [(1, -1, t) for t in sizes if t <= num_devices and num_devices % t == 0]


def _attention_kernel(mc, platform: str) -> str:
    return resolve_attention_impl(mc.attention_impl, mc.dtype, mc.head_dim, platform)


def _fused_attention(mc, platform: str) -> bool:
    """Whether the run's attention kernel on `platform` keeps the [seq, seq] scores out of HBM."""
    return _attention_kernel(mc, platform) in ("cudnn", "splash")


def print_cost(config, chip, chips: int, step_s: float | None, model_flops_per_step: float) -> dict | None:
    """--cost: the run's projected hours and cost on this machine (nothing when it does not fit)."""
    if not _COST.value or not step_s:
        return None
    key = next(k for k, c in {**TPU_CHIPS, **GPU_CHIPS}.items() if c is chip)
    price = cost_lib.load_price(key, _PRICES.value)
    steps, how = cost_lib.run_steps(config, _COST_EXAMPLES.value)
    bound = cost_lib.run_cost(steps, step_s, chips, price)
    at = cost_lib.run_cost(steps, cost_lib.step_seconds_at_mfu(model_flops_per_step, chips, chip.peak_flops,
                                                               _COST_MFU.value), chips, price)
    print(cost_lib.format_costs(bound, at, _COST_MFU.value, how))
    return {"steps": steps, "counted": how, "chips": chips, "price": dataclasses.asdict(price),
            "bound": {"step_s": bound.step_s, "wall_hours": bound.wall_hours, "chip_hours": bound.chip_hours,
                      "cost": bound.cost},
            "at_mfu": {"mfu": _COST_MFU.value, "step_s": at.step_s, "wall_hours": at.wall_hours,
                       "chip_hours": at.chip_hours, "cost": at.cost}}


def run_topology(config, config_name: str) -> tuple[int, dict]:
    topo = parse_tpu_topology(_TOPOLOGY.value)
    if not _SWEEP.value:
        plan = aot.compile_plan(config, topo)
        est = None
        if _ESTIMATE.value:
            cfg, mc, _ = aot.plan_model_config(config)
            est = est_lib.estimate(cfg, mc, plan.num_devices, topo.chip, topo.name,
                                   max(1, plan.num_devices // topo.num_chips),
                                   fused_attention=_fused_attention(mc, "tpu"),
                                   kernel_residuals=_attention_kernel(mc, "tpu") == "splash")
        print(f"{config_name}\n" + report.format_aot(plan, est))
        if not plan.fits:
            print(f"\nDOES NOT FIT: {config_name} on {topo.name}. Try a larger slice, more tensor "
                  "parallelism (--config.mesh.tensor), --config.model.remat_policy=full, or more "
                  "--config.train.micro_batches (or --sweep).", file=sys.stderr)
        cost = print_cost(config, topo.chip, topo.num_chips, plan.roofline.step_s if plan.fits and plan.roofline
                          else None, plan.model_flops_per_step)
        return (FITS if plan.fits else DOES_NOT_FIT), {
            "config": config_name, "aot": plan.to_dict(), "estimate": est.to_dict() if est else None,
            "cost": cost}
    rows = []
    for mesh in sweep_meshes(topo.num_chips):
        for remat in _SWEEP_REMAT.value:
            row = {"mesh": mesh, "remat": remat}
            try:
                plan = aot.compile_plan(_variant(config, mesh, remat), topo)
            except ValueError as err:
                rows.append({**row, "error": str(err).splitlines()[0][:90]})
                continue
            rows.append({**row, "mesh": tuple(plan.mesh.values()), "fits": plan.fits,
                         "total": 0 if plan.oom_message else plan.total_bytes,
                         "temp": None if plan.oom_message else plan.temp_bytes,
                         "step_s": plan.roofline.step_s if plan.roofline else None, "mfu": plan.mfu,
                         "compile_s": plan.compile_s})
            print(f"  compiled mesh {rows[-1]['mesh']} remat {remat} in {plan.compile_s:.0f} s",
                  file=sys.stderr, flush=True)
    print(report.format_sweep(f"{config_name} on TPU {topo.name} (ahead-of-time compiles)", rows))
    return (FITS if any(r.get("fits") for r in rows) else DOES_NOT_FIT), {"config": config_name, "sweep": rows}


def run_gpus(config, config_name: str) -> tuple[int, dict]:
    cluster = parse_gpu_cluster(_GPUS.value)
    variants = ([(m, r) for m in sweep_meshes(cluster.num_gpus) for r in _SWEEP_REMAT.value]
                if _SWEEP.value else [(None, None)])
    rows, outputs, code = [], [], DOES_NOT_FIT
    for mesh, remat in variants:
        cfg = config if mesh is None else _variant(config, mesh, remat)
        try:
            cfg, mc, notes = aot.plan_model_config(cfg)
            est = est_lib.estimate(cfg, mc, cluster.num_gpus, cluster.chip, cluster.name,
                                   fused_attention=_fused_attention(mc, "gpu"))
        except ValueError as err:
            if mesh is None:
                raise
            rows.append({"mesh": mesh, "remat": remat, "error": str(err).splitlines()[0][:90]})
            continue
        code = FITS if est.fits or code == FITS else DOES_NOT_FIT
        rows.append({"mesh": tuple(est.mesh.values()), "remat": remat, "fits": est.fits,
                     "total": est.total_bytes, "temp": est.transient_bytes, "step_s": est.step_s,
                     "mfu": est.mfu})
        outputs.append(est.to_dict())
        if mesh is None:
            print(f"{config_name}\n" + report.format_estimate(
                est, mc, int(cfg.train.global_batch_size), int(cfg.train.micro_batches),
                cfg.get("lora") is not None and bool(cfg.lora.get("enabled", False)), notes))
            cost = print_cost(cfg, cluster.chip, cluster.num_gpus, est.step_s if est.fits else None,
                              est.model_flops_per_step)
            if cost:
                outputs[-1]["cost"] = cost
            if not est.fits:
                print(f"\nDOES NOT FIT (estimate): {config_name} on {cluster.name}. Try more GPUs, "
                      "--config.mesh.tensor, --config.model.remat_policy=full or more "
                      "--config.train.micro_batches (or --sweep).", file=sys.stderr)
    if _SWEEP.value:
        print(report.format_sweep(f"{config_name} on {cluster.name} (analytic estimates)", rows))
    return code, {"config": config_name, "gpus": cluster.name, "estimates": outputs}


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        _fail(f"unexpected arguments: {argv[1:]}")
    config = _CONFIG.value
    if config is None:
        _fail("--config is required, e.g. --config configs/pretrain.py:llama2_70b")
    try:  # a config file that failed to load is a stand-in that raises on first use
        task = config.get("task", Task.PRETRAIN)
    except Exception as err:  # noqa: BLE001 - loading a config file runs its code: any failure is bad input
        _fail(f"--config: {' '.join(str(err).split()) or type(err).__name__}")
    if not _TOPOLOGY.value and not _GPUS.value:
        _fail("name a TPU slice (--topology v5p:4x4x4) or a GPU cluster (--gpus 8xH100)")
    if _TOPOLOGY.value and _GPUS.value:
        _fail("--topology and --gpus exclude each other: plan one machine per run (a TPU slice compiled "
              "ahead of time, or a GPU cluster estimated)")
    if task not in (Task.PRETRAIN, Task.SFT):
        _fail(f"config.task={task!r}: the planner sizes a train step (a pretrain or sft config); "
              + ("plan a sweep's points with its base config, e.g. --config configs/pretrain.py:tiny"
                 if task == Task.SWEEP else "an eval config has no train step to plan"))
    try:  # the ranges and named choices launch.py checks, before any compile
        validate_config(config)
    except ValueError as err:
        _fail(str(err))
    config_name = next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--config=")), None) or \
        next((sys.argv[i + 1] for i, a in enumerate(sys.argv[:-1]) if a == "--config"), "config")
    overrides = [a for a in sys.argv[1:] if a.startswith("--config.")]
    config_name = " ".join([config_name] + overrides)
    try:
        code, payload = FITS, {}
        if _TOPOLOGY.value:
            code, payload = run_topology(config, config_name)
        else:
            code, payload = run_gpus(config, config_name)
    except (ValueError, KeyError, FileNotFoundError) as err:
        _fail(str(err))
    if _JSON.value:
        os.makedirs(os.path.dirname(os.path.abspath(_JSON.value)), exist_ok=True)
        with open(_JSON.value, "w") as f:
            json.dump(payload, f, indent=2, default=str)
    sys.exit(code)


if __name__ == "__main__":
    app.run(main, flags_parser=lambda argv: parse_flags(argv, PROG))
