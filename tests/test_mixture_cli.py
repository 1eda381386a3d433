"""Every documented data override works from the command line: source paths as a tuple literal or a
comma-separated string, data.sources_spec (add / replace / remove sources, formats, weights), weights
of new sources, per-source keys of new sources, mixture stages, the perplexity text set."""
import json
import os
import subprocess
import sys

import pytest
from absl import flags

from mellama_jax.cli.config_flags import CommaTupleParser, define_config_flag
from mellama_jax.data.config import (SAMPLES_DIR, apply_sources_spec, demo_data_config, parse_mixture_stages,
                                     parse_sources_spec, split_globs)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRETRAIN = os.path.join(ROOT, "configs", "pretrain.py")
PUBMED = os.path.join(SAMPLES_DIR, "pubmed", "*.xml*")
PMC_JSONL = os.path.join(SAMPLES_DIR, "pmc", "*.jsonl")
PMC_TXT = os.path.join(SAMPLES_DIR, "pmc", "*.txt")
GENERAL = os.path.join(SAMPLES_DIR, "general", "*.jsonl")
NOTES = os.path.join(SAMPLES_DIR, "clinical", "NOTEEVENTS_sample.csv")


def parse(*overrides, variant="demo"):
    """The config launch.py would run with these overrides (same flag definition, in process)."""
    argv = ["launch.py", "--config", f"{PRETRAIN}:{variant}", *overrides]
    fv = flags.FlagValues()
    holder = define_config_flag("config", flag_values=fv, argv=argv)
    fv(argv)
    return holder.value


def test_paths_tuple_literal_and_comma_separated_string():
    c = parse("--config.data.sources.biomedical.paths=('/corpora/pubmed/*.xml.gz',)", variant="llama2_7b")
    assert c.data.sources.biomedical.paths == ("/corpora/pubmed/*.xml.gz",)
    c = parse("--config.data.sources.biomedical.paths=/c/pubmed/*.xml.gz,/c/pmc/*.jsonl", variant="llama2_7b")
    assert c.data.sources.biomedical.paths == ("/c/pubmed/*.xml.gz", "/c/pmc/*.jsonl")
    c = parse("--config.data.sources.general.paths=/c/general/*.jsonl")  # one glob, no comma
    assert c.data.sources.general.paths == ("/c/general/*.jsonl",)
    # Numeric tuples still parse as numbers; the parser only adds the comma-string fallback.
    assert CommaTupleParser().parse("1,2") == (1, 2)
    assert CommaTupleParser().parse("a.jsonl,b.jsonl") == ("a.jsonl", "b.jsonl")
    assert split_globs("('/a', '/b')") == ("/a", "/b") == split_globs(["/a", " /b "]) == split_globs("/a, /b")


def test_sources_spec_replaces_the_set_and_later_overrides_name_new_sources():
    c = parse("--config.data.sources_spec=bio=jsonl:/c/bio/*.jsonl;clin=prepared_clinical:/c/mimic;general",
              "--config.data.mixture.bio=15", "--config.data.sources.bio.text_field=body",
              "--config.data.sources.clin.eval_fraction=0.02")
    assert list(c.data.sources.keys()) == ["bio", "clin", "general"]
    assert dict(c.data.mixture) == {"bio": 15.0, "clin": 1.0, "general": 4.0}  # general keeps its weight
    assert c.data.sources.bio.format == "jsonl" and c.data.sources.bio.paths == ("/c/bio/*.jsonl",)
    assert c.data.sources.bio.text_field == "body" and c.data.sources.clin.eval_fraction == 0.02
    assert c.data.sources.general.eval_fraction == 0.05  # a kept source keeps its settings
    # Type checks still apply to the new keys, and unknown keys are still refused.
    with pytest.raises(flags.IllegalFlagValueError):
        parse("--config.data.sources_spec=bio=jsonl:/c/x.jsonl", "--config.data.mixture.bio=lots")
    with pytest.raises(Exception, match="biomedical"):
        parse("--config.data.sources_spec=bio=jsonl:/c/x.jsonl", "--config.data.mixture.biomedical=1")


def test_sources_spec_grammar_weights_formats_and_errors():
    spec = parse_sources_spec("a=jsonl:/x/*.jsonl,/y/*.jsonl:3;b=gs://bucket/t/*.txt;clinical:0.5")
    assert [(s.name, s.format, s.paths, s.weight) for s in spec] == [
        ("a", "jsonl", ("/x/*.jsonl", "/y/*.jsonl"), 3.0),
        ("b", None, ("gs://bucket/t/*.txt",), None),  # 'gs' is no format: the colon stays in the path
        ("clinical", None, None, 0.5)]
    c = demo_data_config()
    apply_sources_spec(c, "notes=mimic_csv:/n.csv;biomedical:2")
    assert dict(c.mixture) == {"notes": 1.0, "biomedical": 2.0}
    assert c.sources.notes.require_prepared  # raw clinical input is refused unless prepared or scrubbed
    for bad, msg in [("a=jsonl:", "no paths"), ("x y=jsonl:/a", "identifier"), ("a=/x;a=/y", "twice"),
                     ("nosuch", "not a configured source"), ("a=/x:-1", "finite number >= 0")]:
        with pytest.raises(ValueError, match=msg):
            apply_sources_spec(demo_data_config(), bad)


def test_mixture_stages_grammar():
    st = parse_mixture_stages("100:clinical=4,general=0;300:general=8", {"b": 15.0, "clinical": 1.0, "general": 4.0})
    assert [(s.start_step, s.weights) for s in st] == [
        (0, {"b": 15.0, "clinical": 1.0, "general": 4.0}), (100, {"b": 15.0, "clinical": 4.0, "general": 0.0}),
        (300, {"b": 15.0, "clinical": 1.0, "general": 8.0})]
    for bad, msg in [("5:x=1", "not in data.mixture"), ("5:clinical=1;5:clinical=2", "strictly increasing"),
                     ("5:b=0,clinical=0,general=0", "every weight is zero"), ("x:b=1", "not an integer")]:
        with pytest.raises(ValueError, match=msg):
            parse_mixture_stages(bad, {"b": 15.0, "clinical": 1.0, "general": 4.0})


def launch(workdir, *args, variant="demo"):
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1")
    return subprocess.run([sys.executable, os.path.join(ROOT, "launch.py"), "--config", f"{PRETRAIN}:{variant}",
                           "--workdir", str(workdir), *args], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=600)


TINY = ["--config.model.preset=tiny", "--config.model.num_hidden_layers=1", "--config.data.seq_len=32",
        "--config.train.global_batch_size=4", "--config.train.steps=4", "--config.optim.warmup_steps=1",
        "--config.train.log_every=2", "--config.train.eval_every=0", "--config.train.checkpoint_every=0",
        "--config.train.eval_batches=1", "--config.data.reader=direct"]


def test_launch_trains_on_sources_given_only_on_the_command_line(tmp_path):
    """One real run with every documented data override at once (a few seconds of training)."""
    w = tmp_path / "w"
    r = launch(w, *TINY, f"--config.data.data_dir={tmp_path / 'data'}",
               f"--config.data.sources_spec=bio=auto:{PUBMED},{PMC_JSONL};notes=mimic_csv:{NOTES};general",
               f"--config.data.sources.general.paths={GENERAL},{PMC_TXT}",
               "--config.data.sources.general.format=auto",
               "--config.data.sources.notes.scrub_inline=true", "--config.data.sources.notes.eval_fraction=0.1",
               "--config.data.mixture.bio=3", "--config.data.mixture.notes=0",
               "--config.data.mixture_stages=2:notes=5,general=0",
               "--config.data.sources.bio.dedup=near",
               f"--config.data.perplexity_texts=('{PMC_TXT}',)", "--config.data.perplexity_name=wiki")
    assert r.returncode == 0, r.stderr[-3000:]
    saved = json.loads((w / "experiment_config.json").read_text())
    assert sorted(saved["data"]["sources"]) == ["bio", "general", "notes"]  # saved with sorted keys
    assert saved["data"]["mixture"] == {"bio": 3.0, "notes": 0.0, "general": 4.0}
    assert saved["data"]["sources"]["general"]["paths"] == [GENERAL, PMC_TXT]
    recs = [json.loads(x) for x in (w / "metrics.jsonl").read_text().splitlines()]
    train = [x for x in recs if "loss" in x]
    # Stage 0 (steps 1-2): notes weight 0, never drawn; stage 1 (steps 3-4): general weight 0.
    assert train[0]["data/notes/fraction"] == 0 and train[0]["data/stage"] == 0
    assert train[1]["data/general/fraction"] == 0 and train[1]["data/stage"] == 1
    assert train[1]["data/notes/stage_fraction"] > 0
    final = [x for x in recs if "eval/bio/loss" in x][-1]
    for s in ("bio", "notes", "general", "wiki"):  # zero-weight sources and the text set are evaluated
        assert final[f"eval/{s}/loss"] > 0 and final[f"eval/{s}/perplexity"] > 1
    # Tokens seen per source add up to every loss token of the run.
    assert sum(train[-1][f"data/{s}/tokens"] for s in ("bio", "notes", "general", "wiki")) == 4 * 4 * 32


def test_bad_spec_on_the_command_line_exits_2_naming_the_key(tmp_path):
    r = launch(tmp_path / "w", "--config.data.sources_spec=bio=jsonl:")
    assert r.returncode == 2 and "data.sources_spec" in r.stderr and "no paths" in r.stderr, r.stderr[-2000:]
    r = launch(tmp_path / "w", "--config.data.sources_spec=bio=jsonl:/x.jsonl", "--config.data.mixture.bio=x")
    assert r.returncode == 2 and "config.data.mixture.bio" in r.stderr, r.stderr[-2000:]
    assert not (tmp_path / "w").exists()
