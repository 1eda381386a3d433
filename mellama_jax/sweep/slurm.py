"""`emit=slurm`: one sbatch script per sweep point running the same launch.py commands, and a
submit_all.sh. Multi-node points need nothing more: launch.py detects SLURM and initialises
jax.distributed itself (one task per node)."""
from __future__ import annotations

import os
import stat
from typing import Any

from mellama_jax.sweep.commands import REPO_ROOT, shell_line

__all__ = ["job_script", "write_scripts", "submit_all"]


def _lines(text: str) -> list[str]:
    return [x.strip() for x in str(text or "").split(";") if x.strip()]


def job_script(slurm_cfg: Any, entry: dict, workdir: str) -> str:
    name = entry["point"].name
    sb = [f"#SBATCH --job-name=sweep-{name}",
          # SLURM opens the output file before the job runs, so it goes into workdir/slurm/ (written
          # with the scripts), not the point's directory (created by the job).
          f"#SBATCH --output={os.path.join(workdir, 'slurm', name + '-%j.out')}",
          f"#SBATCH --nodes={int(slurm_cfg.nodes)}",
          "#SBATCH --ntasks-per-node=1",
          f"#SBATCH --time={slurm_cfg.time}"]
    if int(slurm_cfg.gpus_per_node):
        sb.append(f"#SBATCH --gpus-per-node={int(slurm_cfg.gpus_per_node)}")
    if int(slurm_cfg.cpus_per_task):
        sb.append(f"#SBATCH --cpus-per-task={int(slurm_cfg.cpus_per_task)}")
    if slurm_cfg.partition:
        sb.append(f"#SBATCH --partition={slurm_cfg.partition}")
    if slurm_cfg.account:
        sb.append(f"#SBATCH --account={slurm_cfg.account}")
    sb += [x if x.startswith("#SBATCH") else f"#SBATCH {x}" for x in _lines(slurm_cfg.extra_sbatch)]
    body = ["set -euo pipefail", f"cd {shell_line([REPO_ROOT])}", f"mkdir -p {shell_line([entry['workdir']])}",
            *_lines(slurm_cfg.setup),
            f"srun {shell_line(entry['train'])}"]
    if entry["eval"] is not None:
        body.append(shell_line(entry["eval"]))
    return "#!/bin/bash\n" + "\n".join(sb) + "\n\n" + "\n".join(body) + "\n"


def write_scripts(slurm_cfg: Any, entries: list[dict], workdir: str) -> list[str]:
    out_dir = os.path.join(workdir, "slurm")
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for e in entries:
        path = os.path.join(out_dir, f"{e['point'].name}.sbatch")
        with open(path, "w", encoding="utf-8") as f:
            f.write(job_script(slurm_cfg, e, workdir))
        paths.append(path)
    return paths


def submit_all(workdir: str, scripts: list[str]) -> str:
    path = os.path.join(workdir, "slurm", "submit_all.sh")
    with open(path, "w", encoding="utf-8") as f:
        f.write("#!/bin/bash\nset -euo pipefail\n" + "".join(f"sbatch {shell_line([s])}\n" for s in scripts))
    os.chmod(path, os.stat(path).st_mode | stat.S_IXUSR)
    return path
