"""benchmarks/compare_torch.py's PyTorch train step takes the forward it is given, as is."""
from __future__ import annotations

import os
import sys

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
import compare_torch as ct  # noqa: E402


class _NoTruthValue:
    """Like a torch.compile'd module: callable, but asking for its truth value raises (len())."""

    def __init__(self, model):
        self.model, self.calls = model, 0

    def __len__(self):
        raise TypeError("does not support len()")

    def __call__(self, **kwargs):
        self.calls += 1
        return self.model(**kwargs)


def test_train_step_runs_the_given_forward_and_updates_the_weights():
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32,
                                      num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config)
    before = model.lm_head.weight.detach().clone()
    forward = _NoTruthValue(model)
    step = ct.torch_train_step(model, torch.randint(0, 64, (2, 8)), forward)
    step()
    assert forward.calls == 1
    assert not torch.equal(before, model.lm_head.weight)
