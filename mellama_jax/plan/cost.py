"""What a whole run costs on the planned machine: steps x the planner's step time -> wall-clock,
accelerator-hours and dollars at recorded on-demand prices (prices.json, dated).

The roofline step time is a lower bound (perfect overlap of compute, HBM and collectives), so the
hours it gives are lower bounds too; `assumed_mfu` adds the same run at a stated model-FLOPs
utilisation, which is what a real run is planned with.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any

PRICES_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "prices.json")
# Me-LLaMA's instruction-tuning set (its paper: 214k instruction examples).
ME_LLAMA_SFT_EXAMPLES = 214_000


@dataclasses.dataclass(frozen=True)
class Price:
    per_chip_hour: float
    offer: str
    source: str
    as_of: str
    currency: str


def load_price(chip_key: str, path: str = PRICES_FILE) -> Price:
    """The recorded on-demand price of one chip; the error names the file and the missing key."""
    with open(path) as f:
        try:
            table = json.load(f)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not a prices file (JSON): line {err.lineno}: {err.msg}") from None
    chips = table.get("chips", {})
    if chip_key not in chips:
        raise KeyError(f"{path}: no price for chip {chip_key!r} under 'chips' (have {sorted(chips)})")
    row = chips[chip_key]
    return Price(float(row["per_chip_hour"]), row.get("offer", ""), row.get("source", ""),
                 str(table.get("as_of", "?")), str(table.get("currency", "USD")))


def run_steps(config: Any, examples: int = ME_LLAMA_SFT_EXAMPLES) -> tuple[int, str]:
    """Optimizer steps of the whole run and how they were counted. Pretraining: config.train.steps.
    Epoch-based runs (SFT): ceil(epochs x examples / global batch), one example per row (rows are
    not packed across examples), so the count is the run launch.py makes over `examples` rows."""
    epochs = float(config.train.get("epochs", 0) or 0)
    batch = int(config.train.global_batch_size)
    if epochs > 0:
        steps = math.ceil(epochs * examples / batch)
        return steps, f"{epochs:g} epochs x {examples:,} examples / {batch} rows per step"
    steps = int(config.train.steps)
    tokens = steps * batch * int(config.data.seq_len)
    return steps, f"config.train.steps = {steps:,} ({tokens / 1e9:.1f}B tokens)"


@dataclasses.dataclass(frozen=True)
class RunCost:
    steps: int
    step_s: float
    chips: int
    price: Price

    @property
    def wall_hours(self) -> float:
        return self.steps * self.step_s / 3600

    @property
    def chip_hours(self) -> float:
        return self.wall_hours * self.chips

    @property
    def cost(self) -> float:
        return self.chip_hours * self.price.per_chip_hour


def run_cost(steps: int, step_s: float, chips: int, price: Price) -> RunCost:
    if step_s <= 0 or chips <= 0 or steps <= 0:
        raise ValueError(f"run_cost needs positive steps, step time and chips, got {steps}, {step_s}, {chips}")
    return RunCost(steps, step_s, chips, price)


def step_seconds_at_mfu(model_flops_per_step: float, chips: int, peak_flops: float, mfu: float) -> float:
    """The step time at a given model-FLOPs utilisation: model FLOPs / (chips x peak x MFU)."""
    if not 0 < mfu <= 1:
        raise ValueError(f"assumed MFU must be in (0, 1], got {mfu}")
    return model_flops_per_step / (chips * peak_flops * mfu)


def format_costs(bound: RunCost, at_mfu: RunCost | None, mfu: float, how: str) -> str:
    p = bound.price
    lines = [f"run cost: {bound.steps:,} steps ({how}) on {bound.chips} chips at "
             f"{p.per_chip_hour:.2f} {p.currency}/chip-hour ({p.offer}; as of {p.as_of}, {p.source})"]
    rows = [("roofline bound (lower bound)", bound)] + ([(f"at {mfu:.0%} MFU", at_mfu)] if at_mfu else [])
    for label, c in rows:
        lines.append(f"  {label:<30} step {c.step_s:7.2f} s  wall {c.wall_hours / 24:7.1f} days  "
                     f"{c.chip_hours:12,.0f} chip-hours  {c.cost:14,.0f} {p.currency}")
    return "\n".join(lines)
