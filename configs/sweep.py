"""Data-mixture sweeps: one training run (and optionally one benchmark evaluation) per grid point.

    python launch.py --config configs/sweep.py:mixture --workdir runs/sweep \
        --config.grid='data.mixture.clinical=0,1,4;data.mixture.general=0,4'

Variants: `mixture` (base experiment configs/pretrain.py:demo) or `mixture:<pretrain variant>`
(e.g. `mixture:llama2_7b`). `config.base` is that experiment's whole config, so every key it has is
settable as `--config.base.<key>=...` (including `--config.base.data.sources_spec=...` and source
`paths`); each point runs `launch.py --config configs/pretrain.py:<variant>` with the base's
differences from the variant and the point's grid values as `--config.*` overrides, in
`<workdir>/points/<name>`. `--config.emit=slurm` writes one job script per point instead of running.
Once every point is finished, `config.fit` fits a data-mixing law to the table and proposes the next
weights (fit.json, fit.md, fit.png; `--config.fit.run_proposal=True` runs them as `points/proposal`).
"""
from __future__ import annotations

import os
import sys

import ml_collections

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from configs import eval as eval_configs  # noqa: E402
from configs import pretrain  # noqa: E402

KINDS = ("mixture",)


def get_config(arg: str = "mixture") -> ml_collections.ConfigDict:
    kind, _, variant = arg.partition(":")
    if kind not in KINDS:
        raise ValueError(f"configs/sweep.py: unknown sweep {kind!r}; expected one of {KINDS} "
                         f"(optionally with a base variant: mixture:tiny)")
    variant = variant or "demo"
    c = ml_collections.ConfigDict()
    c.task = "sweep"
    # The experiment every point runs (a launch.py --config argument) and its resolved config.
    c.base_config = f"{os.path.join(ROOT, 'configs', 'pretrain.py')}:{variant}"
    c.base = pretrain.get_config(variant)
    # Cartesian grid: "key=v1,v2;key2=v3,v4" over keys of config.base (values typed like them).
    c.grid = "data.mixture.clinical=0,1,4;data.mixture.general=0,4"
    c.emit = "run"          # run: points one after another here | slurm: write job scripts only
    c.python = ""           # interpreter for the points ("" = this one)
    c.plot = True           # sweep.png beside the table (matplotlib)

    # Benchmarks after each point's training (configs/eval.py keys; tasks "" = none).
    c.eval = eval_configs.get_config()
    c.eval.tasks = ""

    # The mixing law fitted once every point is finished (fit.json, fit.md, fit.png; see
    # mellama_jax/sweep/mixing_law.py): one law per held-out loss / benchmark column of the table.
    c.fit = ml_collections.ConfigDict()
    c.fit.law = "ye"                      # ye: c + k exp(t.r) (Ye et al. 2024) | linear (ridge) | loglinear | none
    c.fit.domain = "biomedical,clinical"  # domain loss = sum of these held-out losses ("name:weight"; bench/... columns count negatively)
    c.fit.general = "general"             # general-domain (forgetting) loss, same syntax (e.g. general_text)
    c.fit.objective = "constrained"       # constrained: min domain s.t. general <= baseline + max_general_increase
    #                                       weighted: min domain + general_weight * general
    c.fit.max_general_increase = 0.0      # nats of general loss the proposal may add over the baseline
    c.fit.general_weight = 1.0
    c.fit.baseline = "base"               # "base" (config.base.data.mixture) or a point name
    c.fit.candidates = 20000              # Dirichlet samples of the simplex scored under the law
    c.fit.starts = 8                      # nonlinear least-squares starts per target (ye)
    c.fit.ridge = 1e-6                    # linear / loglinear: ridge penalty on the weights' coefficients
    c.fit.seed = 0
    c.fit.run_proposal = False            # run the proposed weights as the next point, points/proposal

    c.slurm = ml_collections.ConfigDict()
    c.slurm.partition = ""
    c.slurm.account = ""
    c.slurm.time = "24:00:00"
    c.slurm.nodes = 1
    c.slurm.gpus_per_node = 8
    c.slurm.cpus_per_task = 16
    c.slurm.extra_sbatch = ""   # more "#SBATCH ..." lines, separated by ';'
    c.slurm.setup = ""          # shell lines run before the point (module load ...), separated by ';'
    return c
