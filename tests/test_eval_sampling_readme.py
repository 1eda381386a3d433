"""Every command of the README's "Sampled protocols, chain of thought and protocol sensitivity" section,
run as written on stand-ins at the paths it uses (a tiny random HF LLaMA as Me-LLaMA-13b, the eval
fixtures as benchmarks/)."""
from __future__ import annotations

import json
import os

import pytest

import eval_fixtures as F
from readme_commands import run_as_written, section_commands

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TITLE = "Sampled protocols, chain of thought and protocol sensitivity"


@pytest.mark.slow  # four evaluations of the sensitivity command plus two runs (~2-4 min on 2 cores)
def test_readme_commands_run_as_written(tmp_path):
    cwd = str(tmp_path)
    env = F.write_readme_workspace(cwd, {"Me-LLaMA-13b": 1}, ROOT)
    commands = section_commands(f"## {TITLE}")
    assert len(commands) == 3, commands
    run_as_written(commands, cwd, env)
    sc = json.load(open(os.path.join(cwd, "runs", "eval_mellama_sc", "results.json")))
    dec = sc["tasks"]["pubmedqa"]["decoding"]
    assert (dec["strategy"], dec["samples"], dec["temperature"], dec["seed"]) == ("self-consistency", 5, 0.7, 0)
    with open(os.path.join(cwd, "runs", "eval_mellama_sc", "predictions", "medqa.jsonl")) as f:
        assert all(len(json.loads(line)["samples"]) == 5 for line in f)
    cot = json.load(open(os.path.join(cwd, "runs", "eval_mellama_cot", "results.json")))
    assert cot["tasks"]["medqa"]["decoding"]["cot"] is True
    out = os.path.join(cwd, "runs", "sensitivity_mellama")
    report = json.load(open(os.path.join(out, "sensitivity.json")))
    names = [v["name"] for v in report["variants"]]
    assert names == ["mellama-release__greedy", "mellama-release__sc", "mellama-v1__greedy", "mellama-v1__sc"]
    for name in names:
        assert os.path.isfile(os.path.join(out, "runs", name, "results.json"))
    acc = report["tasks"]["medqa"]["metrics"]["accuracy"]
    values = [acc["runs"][n]["value"] for n in names]
    assert acc["min"] == min(values) and acc["max"] == max(values) and acc["range"] == max(values) - min(values)
    assert all(len(acc["runs"][n]["interval"]) == 2 for n in names)
    # same references (PubMedQA): a paired difference with the protocol differences named; MedQA's
    # letter vs option-text answers: skipped, saying why
    assert "decoding" in " ".join(report["paired"]["mellama-release__sc"]["pubmedqa"]["protocol_differences"])
    assert "different answer forms" in report["paired"]["mellama-v1__greedy"]["medqa"]["skipped"]
    md = open(os.path.join(out, "sensitivity.md")).read()
    assert "| MedQA | accuracy |" in md and "range" in md
