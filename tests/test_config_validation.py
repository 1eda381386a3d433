"""config_validation: one validate_config for every task, named choices as enums, errors name the key;
old model_config.json files (with the retired scan_layers field) still load."""
from __future__ import annotations

import json
import os
import sys
from types import SimpleNamespace

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from configs.pretrain import get_config  # noqa: E402
from configs.sft import get_config as get_sft_config  # noqa: E402
from mellama_jax.checkpoint.orbax_io import read_model_config  # noqa: E402
from mellama_jax.config_validation import (ArtifactLookup, ConfigError, LossImpl, Packing, Schedule,  # noqa: E402
                                           Task, validate_config)
from mellama_jax.model.config import PROJECTIONS, LlamaConfig  # noqa: E402
from mellama_jax.model.presets import get_preset  # noqa: E402


def test_choices_compare_as_strings_and_parse_names_the_key():
    assert Schedule.COSINE == "cosine" and Schedule.parse("linear", "optim.schedule") is Schedule.LINEAR
    with pytest.raises(ConfigError, match=r"config.optim.schedule='cosinus': expected cosine, linear, constant, wsd or cyclic_cosine"):
        Schedule.parse("cosinus", "optim.schedule")
    with pytest.raises(ConfigError, match=r"config.train.loss_impl='sparse': expected vocab_parallel or dense"):
        LossImpl.parse("sparse", "train.loss_impl")
    assert issubclass(ConfigError, ValueError)


@pytest.mark.parametrize("section,key,value,expect", [
    (None, "task", "finetune", "config.task='finetune': expected pretrain, sft, eval or sweep"),
    ("optim", "schedule", "cosinus", "config.optim.schedule='cosinus'"),
    ("train", "loss_impl", "sparse", "config.train.loss_impl='sparse'"),
    ("model", "preset", "llama9", "config.model.preset='llama9'"),
    ("data", "packing", "pad", "config.data.packing='pad': a pretrain run expects concat or pack"),
    ("data", "packing", "zip", "config.data.packing='zip'"),
])
def test_validate_config_names_the_key(section, key, value, expect):
    c = get_config("tiny")
    (c[section] if section else c)[key] = value
    with pytest.raises(ConfigError) as err:
        validate_config(c)
    assert expect in str(err.value)


def test_sft_checks_chat_template_lora_and_packing():
    c = get_sft_config("tiny")
    validate_config(c)
    c.data.packing = "concat"
    with pytest.raises(ConfigError, match="config.data.packing='concat': a sft run expects pack or pad"):
        validate_config(c)
    c = get_sft_config("tiny")
    c.data.chat_template = "chatml9"
    with pytest.raises(ConfigError, match="config.data.chat_template='chatml9'"):
        validate_config(c)
    c = get_sft_config("tiny")
    c.lora.targets = "q,x"
    with pytest.raises(ConfigError, match="config.lora.targets"):
        validate_config(c)


def test_on_disk_checks_run_only_with_an_artifact_lookup(tmp_path):
    c = get_config("tiny")
    c.model.init_from = str(tmp_path / "missing")
    validate_config(c)  # static checks only: a shipped config naming ~/models/... stays valid
    seen = []
    lookup = ArtifactLookup(resolve_artifact=lambda path: seen.append(path),
                            init_artifact=lambda model: seen.append(model.init_from),
                            training_tokenizer_file=lambda config: seen.append("tokenizer"))
    with pytest.raises(ConfigError, match="config.model.init_from=.*missing.*: no such path"):
        validate_config(c, lookup)
    c.model.init_from = str(tmp_path)
    validate_config(c, lookup)
    assert seen == [str(tmp_path)]  # synthetic data: no tokenizer needed


def test_launch_dispatches_every_task():
    import launch

    assert set(launch.TASKS) == set(Task)


def test_make_schedule_refuses_an_unknown_schedule_naming_the_key():
    from mellama_jax.train.optim import make_schedule

    cfg = SimpleNamespace(learning_rate=1.0, min_lr_ratio=0.1, warmup_steps=0, warmup_fraction=0.0, schedule="cosinus")
    with pytest.raises(ValueError, match="config.optim.schedule='cosinus'"):
        make_schedule(cfg, 10)


def test_old_model_config_with_scan_layers_still_loads(tmp_path):
    config = get_preset("tiny")
    body = {**config.to_dict(), "scan_layers": True}  # what earlier versions wrote
    (tmp_path / "model_config.json").write_text(json.dumps(body))
    assert read_model_config(str(tmp_path)) == config
    assert "scan_layers" not in config.to_dict()
    with pytest.raises(ValueError, match="unknown LlamaConfig field"):
        LlamaConfig.from_dict({**config.to_dict(), "scan_layerz": True})


def test_one_projection_list_feeds_model_lora_and_hf_names():
    from mellama_jax.checkpoint import hf
    from mellama_jax.model import lora
    from mellama_jax.model.llama import param_shapes

    config = get_preset("tiny")
    shapes = param_shapes(config)
    assert list(lora.TARGETS) == ["q", "k", "v", "o", "gate", "up", "down"]
    for p in PROJECTIONS:
        group, name = p.module
        kernel = shapes["layers"][group][name]
        assert kernel.shape == (config.num_hidden_layers,) + p.in_shape(config) + p.out_shape(config)
        assert hf.export_names(config, p.path)[0] == f"model.layers.0.{p.hf}.weight"
