"""The README's "Corpora in buckets and token stores" section: its commands run as written (a demo store
built on Beam's DirectRunner with two workers, a run from it and a run from the files with identical
losses, the cost projection), and its cluster commands' Beam options are options Beam knows."""
import json
import os
import re
import shlex

import pytest
from readme_commands import ROOT, run_as_written, section_commands

SECTION = "## Corpora in buckets and token stores"


def _losses(path):
    with open(path) as f:
        return {r["step"]: r["loss"] for r in map(json.loads, f) if "loss" in r}


@pytest.mark.slow
def test_readme_token_store_commands(tmp_path):
    for name in ("launch.py", "configs", "benchmarks"):
        os.symlink(os.path.join(ROOT, name), tmp_path / name)
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu", TMPDIR=str(tmp_path))
    commands = section_commands(SECTION)
    assert len(commands) == 4 and "tokenize_beam" in commands[0] and "--direct_num_workers 2" in commands[0]
    run_as_written(commands, tmp_path, env)

    manifest = json.loads((tmp_path / "stores" / "demo" / "MANIFEST.json").read_text())
    assert manifest["builder"]["workers"] == 2 and set(manifest["sources"]) == {"biomedical", "clinical", "general"}
    from_store = _losses(tmp_path / "runs" / "from_store" / "metrics.jsonl")
    from_files = _losses(tmp_path / "runs" / "from_files" / "metrics.jsonl")
    assert from_store and max(from_store) == 20 and from_store == from_files


def _console_commands() -> list[str]:
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    start = text.index(SECTION + "\n")
    section = text[start:text.find("\n## ", start + 1)]
    block = "\n".join(re.findall(r"```console\n(.*?)```", section, flags=re.S)).replace("\\\n", " ")
    return [line.split("#")[0].strip() for line in block.splitlines() if line.strip()]


def test_readme_cluster_commands_use_options_beam_knows():
    from apache_beam.options.pipeline_options import PipelineOptions

    commands = _console_commands()
    assert len(commands) == 2
    runners = set()
    for cmd in commands:
        args = shlex.split(cmd)
        assert args[:3] == ["python", "-m", "mellama_jax.cli.tokenize_beam"] and "--" in args
        beam_args = args[args.index("--") + 1:]
        known = PipelineOptions(beam_args).get_all_options(retain_unknown_options=True)
        options = PipelineOptions(beam_args).get_all_options()
        unknown = set(known) - set(options)
        assert not unknown, f"{cmd}: options Beam does not know: {sorted(unknown)}"
        runners.add(options["runner"])
        if options["runner"] == "DataflowRunner":
            assert options["setup_file"] == "./setup.py" and os.path.isfile(os.path.join(ROOT, "setup.py"))
    assert runners == {"DataflowRunner", "SparkRunner"}
