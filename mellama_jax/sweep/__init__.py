"""Data-mixture sweeps: `run(config, workdir)` is what launch.py calls for config.task == "sweep".

Each grid point is its own launch.py process in `<workdir>/points/<name>`: the same code and the
same command a user would run for that experiment, a fresh JAX runtime per point (no compile caches,
device memory or XLA flags leak between points, a crash ends one point, not the sweep), and exactly
what `emit=slurm` writes into each job script. Points run one after another; a point whose final
evaluation is already in its metrics.jsonl is skipped, and an interrupted one resumes from its last
checkpoint (launch.py's own resume), so rerunning the sweep command continues it. A point that ran
before is reused only if its saved experiment_config.json equals the point's effective config now
(the base with the point's grid values) in every key except IGNORED_KEYS; otherwise the rerun is
refused naming the keys. Every point's effective config is validated (config_validation) before
the first point runs; launch.py does it before it writes anything into the workdir. The table
(sweep.csv, sweep.md) and plot (sweep.png) are rebuilt from the points' files every time.
"""
from __future__ import annotations

import json
import os
import subprocess
from typing import Any

from mellama_jax import fs
from mellama_jax.config_validation import ConfigRangeError, validate_config
from mellama_jax.sweep import commands, mixing_law, slurm
from mellama_jax.sweep.grid import Point, config_value, parse_grid
from mellama_jax.sweep.table import is_finished, point_row, write_table

__all__ = ["run", "plan", "check_points", "point_config", "config_differences", "IGNORED_KEYS", "Point"]

EMIT = ("run", "slurm")
EXPERIMENT_CONFIGS = ("experiment_config.json", "config.json")  # new name first, older workdirs after


# Keys of a point's experiment config that cannot change its numbers (the final train loss, the
# held-out evaluation, the benchmark scores), with the reason; a point that ran with other values of
# these is still the same experiment. Everything else is compared.
IGNORED_KEYS = {
    "train.log_every": "logging cadence; the last step is always logged",
    "train.eval_every": "evaluations before the last step read the parameters only; the final one always runs",
    "train.checkpoint_every": "when checkpoints are written; resume from any of them is exact",
    "train.keep_checkpoints": "how many checkpoints are kept on disk",
    "train.async_checkpointing": "how checkpoints are written",
    "train.debug_step_delay_s": "a sleep after each step (test hook)",
    "hardware.peak_tflops": "the chip peak for the MFU estimate only",
    "distributed.coordinator_address": "where the processes meet; differs between allocations",
    "distributed.process_id": "which process this is; differs between the processes of one run",
}


def _eval_tasks(config: Any) -> list[str]:
    tasks = str(config.eval.get("tasks", "") or "")
    return [t.strip() for t in tasks.split(",") if t.strip()]


def point_config(base: Any, point: Point) -> Any:
    """The experiment config point `point` runs: a copy of `base` with the point's grid values."""
    cfg = base.copy_and_resolve_references()
    with cfg.unlocked():
        for key, value, _ in point.values:
            parent_key, _, leaf = key.rpartition(".")
            (config_value(cfg, parent_key) if parent_key else cfg)[leaf] = value
    return cfg


def check_points(config: Any, workdir: str | None = None) -> list[Point]:
    """Parses the grid and validates every point's effective config (ValueError naming the point
    and the key), before anything runs or is written."""
    if config.emit not in EMIT:
        raise ValueError(f"config.emit={config.emit!r}: expected one of {EMIT}")
    # The proposal point of a fitted sweep exists only once the workdir holds a finished fit.
    points = parse_grid(config.grid, config.base) + (mixing_law.proposal_points(config, workdir) if workdir else [])
    mixing_law.check_fit_config(config.get("fit"))
    for p in points:
        cfg = point_config(config.base, p)
        if not any(float(w) > 0 for w in cfg.data.mixture.values()):  # something to train on
            raise ValueError(f"config.grid point {p.name}: every data.mixture weight is 0")
        try:
            validate_config(cfg)
        except ConfigRangeError as err:
            raise ValueError(f"config.grid point {p.name}: {err}") from None
    return points


def plan(config: Any, workdir: str) -> dict:
    """Points, their commands and directories, all checked before anything runs."""
    points = check_points(config, workdir)
    base_overrides = commands.config_overrides(config.base, commands.load_config_file(config.base_config))
    tasks = _eval_tasks(config)
    eval_overrides = []
    if tasks:
        eval_reference = commands.load_config_file(os.path.join(commands.REPO_ROOT, "configs", "eval.py"))
        eval_overrides = commands.config_overrides(config.eval, eval_reference, skip=("checkpoint",))
    python = str(config.python or "")
    out = []
    for p in points:
        pdir = os.path.join(workdir, "points", p.name)
        out.append({
            "point": p, "workdir": pdir,
            "train": commands.train_command(python, config.base_config, base_overrides, p, pdir),
            "eval": (commands.eval_command(python, eval_overrides, pdir, os.path.join(pdir, "eval"))
                     if tasks else None),
        })
    return {"points": out, "base_overrides": base_overrides, "eval_tasks": tasks}


def _experiment_config(pdir: str) -> dict | None:
    for name in EXPERIMENT_CONFIGS:
        path = fs.join(pdir, name)
        if fs.isfile(path):
            return json.loads(fs.read_text(path))
    return None


def _flat(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool) \
            and not isinstance(b, bool):
        return float(a) == float(b)
    return type(a) is type(b) and a == b


_MISSING = object()


def config_differences(saved: dict, expected: dict) -> list[str]:
    """`key=saved (now expected)` for every key outside IGNORED_KEYS where two experiment configs
    (as JSON, the form of experiment_config.json) differ, sorted by key."""
    a, b = _flat(saved), _flat(expected)
    out = []
    for key in sorted(set(a) | set(b)):
        if key in IGNORED_KEYS:
            continue
        old, new = a.get(key, _MISSING), b.get(key, _MISSING)
        if old is _MISSING or new is _MISSING or not _same(old, new):
            out.append(f"{key}={_show(old)} (now {_show(new)})")
    return out


def _show(value: Any) -> str:
    return "(not set)" if value is _MISSING else repr(value)


def _check_same_point(entry: dict, expected: dict) -> None:
    """A point that ran before must have been run with this point's whole effective config (else its
    numbers would be reported under the wrong settings)."""
    saved = _experiment_config(entry["workdir"])
    if saved is None:
        raise RuntimeError(f"{entry['workdir']}: metrics but no experiment config; not a sweep point")
    diff = config_differences(saved, expected)
    if diff:
        raise RuntimeError(f"{entry['workdir']} was run with other settings: {'; '.join(diff)}. Use a new "
                           "--workdir for a different experiment (not compared, as they cannot change "
                           f"results: {', '.join(sorted(IGNORED_KEYS))})")


def _run_logged(argv: list[str], log_path: str, tag: str) -> int:
    """Run one launch.py process; all its output goes to log_path, progress lines also here."""
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    with open(log_path, "a", encoding="utf-8") as log:
        log.write(f"$ {commands.shell_line(argv)}\n")
        log.flush()
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                cwd=commands.REPO_ROOT)
        for line in proc.stdout:
            log.write(line)
            if line.startswith(("step ", "eval @", "resumed", "launch.py:")):
                print(f"[{tag}] {line.rstrip()}", flush=True)
        return proc.wait()


def _rows(config: Any, entries: list[dict], tasks: list[str], steps: int) -> list[dict]:
    rows = []
    for e in entries:
        if not is_finished(e["workdir"], steps, tasks):
            continue
        saved = _experiment_config(e["workdir"]) or {}
        weights = {k: float(v) for k, v in saved.get("data", {}).get("mixture", {}).items()}
        grid = {k: v for k, v, _ in e["point"].values}
        rows.append(point_row(e["point"].name, grid, weights, e["workdir"], steps, tasks))
    return rows


def run(config: Any, workdir: str) -> dict:
    """Runs (or, with emit=slurm, writes job scripts for) every point, then writes the table."""
    workdir = os.path.abspath(workdir)
    p = plan(config, workdir)
    entries, tasks = p["points"], p["eval_tasks"]
    steps = int(config.base.train.steps)
    expected = {e["point"].name: json.loads(point_config(config.base, e["point"]).to_json_best_effort(sort_keys=True))
                for e in entries}
    os.makedirs(os.path.join(workdir, "points"), exist_ok=True)
    manifest = {"grid": config.grid, "base_config": config.base_config, "base_overrides": p["base_overrides"],
                "eval_tasks": tasks, "steps": steps,
                "points": [{"name": e["point"].name, "values": e["point"].as_dict(), "workdir": e["workdir"],
                            "train_command": commands.shell_line(e["train"]),
                            "eval_command": commands.shell_line(e["eval"]) if e["eval"] else None}
                           for e in entries]}
    with open(os.path.join(workdir, "sweep.json.tmp"), "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=1)
    os.replace(os.path.join(workdir, "sweep.json.tmp"), os.path.join(workdir, "sweep.json"))

    if config.emit == "slurm":
        scripts = slurm.write_scripts(config.slurm, entries, workdir)
        print(f"sweep: wrote {len(scripts)} job scripts; submit them with: bash {slurm.submit_all(workdir, scripts)}"
              f"\nthen rerun this command to collect the table (finished points are skipped)", flush=True)
    else:
        for i, e in enumerate(entries, 1):
            name = e["point"].name
            if is_finished(e["workdir"], steps, tasks):
                _check_same_point(e, expected[name])
                print(f"sweep: point {i}/{len(entries)} {name}: finished, skipped", flush=True)
                continue
            print(f"sweep: point {i}/{len(entries)} {name}", flush=True)
            if _experiment_config(e["workdir"]) is not None:  # started before: same settings only
                _check_same_point(e, expected[name])
            if not is_finished(e["workdir"], steps, []):
                rc = _run_logged(e["train"], os.path.join(e["workdir"], "launch.log"), name)
                if rc != 0:
                    raise RuntimeError(f"sweep point {name}: training exited with {rc}; see "
                                       f"{os.path.join(e['workdir'], 'launch.log')} (rerun the sweep to resume)")
            _check_same_point(e, expected[name])
            if e["eval"] is not None:
                rc = _run_logged(e["eval"], os.path.join(e["workdir"], "eval", "launch.log"), name)
                if rc != 0:
                    raise RuntimeError(f"sweep point {name}: evaluation exited with {rc}; see "
                                       f"{os.path.join(e['workdir'], 'eval', 'launch.log')}")
            if not is_finished(e["workdir"], steps, tasks):
                raise RuntimeError(f"sweep point {name}: finished without its final evaluation at step "
                                   f"{steps} in {e['workdir']}/metrics.jsonl")

    rows = _rows(config, entries, tasks, steps)
    out = {"rows": rows, "table_csv": None, "table_md": None, "plot": None}
    if rows:
        out["table_csv"], out["table_md"] = os.path.join(workdir, "sweep.csv"), os.path.join(workdir, "sweep.md")
        write_table(rows, out["table_csv"], out["table_md"])
        grid_keys = [k for k, _, _ in entries[0]["point"].values]
        if config.plot:
            from mellama_jax.sweep.plot import plot_sweep
            out["plot"] = plot_sweep([r for r in rows if r["point"] != mixing_law.PROPOSAL], grid_keys,
                                     os.path.join(workdir, "sweep.png"))
        print(f"sweep: {len(rows)}/{len(entries)} points in {out['table_md']}", flush=True)
    out["fit"] = mixing_law.sweep_stage(config, workdir, entries, rows)
    if out["fit"] and out["fit"].get("rerun"):  # the proposal is now a point of the plan: run it like any
        return run(config, workdir)
    return out
