"""Sweep grids: parse `key=v1,v2;key2=v3` into points, type each value like its config key, name points."""
from __future__ import annotations

import dataclasses
import itertools
import re
from typing import Any

__all__ = ["Point", "parse_grid", "config_value", "cli_value"]


@dataclasses.dataclass(frozen=True)
class Point:
    """One grid point: its directory name and the (key, typed value, text) of each grid axis."""

    name: str
    values: tuple[tuple[str, Any, str], ...]

    def overrides(self) -> list[str]:
        return [f"--config.{key}={cli_value(value)}" for key, value, _ in self.values]

    def as_dict(self) -> dict[str, Any]:
        return {key: value for key, value, _ in self.values}


def config_value(config: Any, key: str) -> Any:
    node = config
    for part in key.split("."):
        if not hasattr(node, "keys") or part not in node:
            raise KeyError(part)
        node = node[part]
    return node


def _typed(config: Any, key: str, text: str) -> Any:
    """`text` as the type of config[key] (ConfigDict's own type check decides), else ValueError."""
    try:
        current = config_value(config, key)
    except KeyError as err:
        raise ValueError(f"config.grid: {key!r} is not a key of the base experiment config "
                         f"(no {err.args[0]!r})") from None
    parent_key, _, leaf = key.rpartition(".")
    parent = config_value(config, parent_key) if parent_key else config
    typ = parent.get_type(leaf) if hasattr(parent, "get_type") else type(current)
    try:
        if typ is bool:
            low = text.strip().lower()
            if low not in ("true", "false", "1", "0"):
                raise ValueError(text)
            return low in ("true", "1")
        if typ in (int, float, str):
            return typ(text.strip())
    except ValueError:
        raise ValueError(f"config.grid: {key}={text!r} is not a {typ.__name__}") from None
    raise ValueError(f"config.grid: {key} has type {typ.__name__}; only int, float, bool and str keys "
                     "can be swept")


def cli_value(value: Any) -> str:
    """A value as launch.py's --config.key=VALUE parses it back."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (tuple, list)):
        return repr(tuple(value))
    return str(value)


def _short(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]", "-", text)


def parse_grid(grid: str, base: Any) -> list[Point]:
    """Cartesian product of the axes, in the order written (the last axis varies fastest)."""
    axes: list[tuple[str, list[tuple[Any, str]]]] = []
    for raw in str(grid).split(";"):
        entry = raw.strip()
        if not entry:
            continue
        if "=" not in entry:
            raise ValueError(f"config.grid: {entry!r} is not key=v1,v2,...")
        key, values = (x.strip() for x in entry.split("=", 1))
        if any(k == key for k, _ in axes):
            raise ValueError(f"config.grid: {key!r} appears twice")
        texts = [v.strip() for v in values.split(",") if v.strip()]
        if not texts:
            raise ValueError(f"config.grid: {key!r} has no values")
        typed = [(_typed(base, key, t), t) for t in texts]
        if len({repr(v) for v, _ in typed}) != len(typed):
            raise ValueError(f"config.grid: {key!r} repeats a value ({values})")
        axes.append((key, typed))
    if not axes:
        raise ValueError("config.grid is empty; e.g. --config.grid='data.mixture.clinical=0,1,4'")
    leaves = [k.rsplit(".", 1)[-1] for k, _ in axes]
    labels = [leaf if leaves.count(leaf) == 1 else k for leaf, (k, _) in zip(leaves, axes)]
    points = []
    for combo in itertools.product(*[vals for _, vals in axes]):
        values = tuple((key, v, t) for (key, _), (v, t) in zip(axes, combo))
        name = "_".join(f"{_short(label)}={_short(t)}" for label, (_, t) in zip(labels, combo))
        points.append(Point(name, values))
    return points
