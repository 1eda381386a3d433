"""Every command of the README's "Confidence intervals, paired comparisons and published figures"
section, run as written on stand-ins at the paths it uses (two tiny random HF LLaMAs as
Llama-2-13b-hf and Me-LLaMA-13b, the eval fixtures as benchmarks/)."""
from __future__ import annotations

import json
import os

import eval_fixtures as F
from readme_commands import run_as_written, section_commands

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TITLE = "Confidence intervals, paired comparisons and published figures"


def test_readme_commands_run_as_written(tmp_path):
    cwd = str(tmp_path)
    env = F.write_readme_workspace(cwd, {"Llama-2-13b-hf": 0, "Me-LLaMA-13b": 1}, ROOT)
    commands = section_commands(f"## {TITLE}")
    assert len(commands) == 4, commands
    run_as_written(commands, cwd, env)
    mellama = json.load(open(os.path.join(cwd, "runs", "eval_mellama", "results.json")))
    assert mellama["tasks"]["pubmedqa"]["published"]["model"] == "me_llama_13b"
    assert set(mellama["tasks"]["medqa"]["intervals"]["metrics"]) == {"accuracy", "macro_f1", "weighted_f1",
                                                                      "missing_rate"}
    cmp = json.load(open(os.path.join(cwd, "runs", "llama2_vs_mellama", "comparison.json")))
    assert sorted(cmp["tasks"]) == ["mednli", "medqa", "pubmedqa"]
    assert "mcnemar" in cmp["tasks"]["medqa"]["metrics"]["accuracy"]
    assert os.path.isfile(os.path.join(cwd, "runs", "llama2_vs_mellama", "comparison.md"))
