"""The README's shell commands, read from one section and run as written (the tests that back its claims)."""
from __future__ import annotations

import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def section_commands(heading: str) -> list[str]:
    """Each command of the ```bash blocks under `heading` (e.g. "## Title"), continuation lines joined,
    comments dropped. The section ends at the next heading of level two."""
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    start = text.index(heading + "\n")
    section = text[start:text.find("\n## ", start + 1)]
    joined = "\n".join(re.findall(r"```bash\n(.*?)```", section, flags=re.S)).replace("\\\n", " ")
    return [" ".join(line.split()) for line in joined.splitlines() if line.strip() and not line.startswith("#")]


def run_as_written(commands: list[str], cwd, env: dict, timeout: int = 900) -> None:
    """Run each `python ...` command in `cwd` with this interpreter; a failure names the command."""
    for cmd in commands:
        assert cmd.startswith("python "), cmd
        r = subprocess.run(f"{sys.executable} {cmd[len('python '):]}", shell=True, cwd=cwd, env=env,
                           capture_output=True, text=True, timeout=timeout)
        assert r.returncode == 0, f"{cmd}\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
