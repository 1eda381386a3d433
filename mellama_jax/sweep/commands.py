"""The launch.py command lines of a sweep point: the base experiment's differences from its config
file (so a sweep over one's own corpora needs no config file) plus the point's grid values."""
from __future__ import annotations

import os
import shlex
import sys
from typing import Any

from mellama_jax.sweep.grid import Point, cli_value

__all__ = ["REPO_ROOT", "load_config_file", "config_overrides", "train_command", "eval_command",
           "shell_line"]

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LAUNCH = os.path.join(REPO_ROOT, "launch.py")


def load_config_file(spec: str) -> Any:
    """`path.py[:arg]` -> get_config(arg), loaded as launch.py loads it (before any override)."""
    from ml_collections.config_flags.config_flags import ConfigFileFlagParser

    return ConfigFileFlagParser(name="config", lock_config=False).parse(spec)


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def config_overrides(config: Any, reference: Any, skip: tuple[str, ...] = ()) -> list[str]:
    """`--config.key=value` for every leaf of `config` that differs from `reference` (both
    ConfigDicts of the same experiment). data.sources_spec goes first: it creates the sources the
    other overrides may name."""
    from mellama_jax.data.config import apply_sources_spec

    spec = str(config.get("data", {}).get("sources_spec", "") or "") if "data" in config else ""
    reference = type(reference)(reference.to_dict())  # unlocked copy
    if spec:
        apply_sources_spec(reference.data, spec)
    new, old = _flatten(config.to_dict()), _flatten(reference.to_dict())
    out = [f"--config.data.sources_spec={spec}"] if spec else []
    for key, value in new.items():
        if key == "data.sources_spec" or any(key == s or key.startswith(s + ".") for s in skip):
            continue
        if key in old and _same(old[key], value):
            continue
        if value is None:
            raise ValueError(f"config.base.{key} is None but the experiment's default is {old.get(key)!r}; "
                             "a None cannot be passed on the command line")
        out.append(f"--config.{key}={cli_value(value)}")
    return out


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b or (isinstance(a, (int, float)) and isinstance(b, (int, float))
                                              and not isinstance(a, bool) and float(a) == float(b))


def train_command(python: str, base_config: str, base_overrides: list[str], point: Point,
                  workdir: str) -> list[str]:
    return [python or sys.executable, LAUNCH, "--config", base_config, "--workdir", workdir,
            *base_overrides, *point.overrides()]


def eval_command(python: str, eval_overrides: list[str], checkpoint: str, workdir: str) -> list[str]:
    return [python or sys.executable, LAUNCH, "--config", os.path.join(REPO_ROOT, "configs", "eval.py"),
            "--workdir", workdir, *eval_overrides, f"--config.checkpoint={checkpoint}"]


def shell_line(argv: list[str]) -> str:
    return " ".join(shlex.quote(a) for a in argv)
