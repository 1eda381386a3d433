"""The CPU train step's optimized HLO moves no weight-gradient data around: no transpose (a `transpose`
op, or a `copy` that changes the layout) of a weight-sized tensor or of a [tokens, features] operand
of the weight-gradient GEMMs. On XLA:CPU those transposing copies were 20% of the step
(BENCHMARKS.md "Train step on CPU: where the time goes"); the model writes every projection as a
2-D matmul and attention in the [b * kv, g * t, d] row layout so that none is needed."""
from __future__ import annotations

import math
import os
import re
import sys
import types

import jax
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

# `f32[688,1024]{0,1} copy(f32[688,1024]{1,0} %x)`: result type, op, then the operand types.
_INSTR = re.compile(r"=\s*(\w+)\[([\d,]*)\](\{[\d,]*\})?\s+(transpose|copy)\((.*)\)")
_OPERAND = re.compile(r"\w+\[([\d,]*)\](\{[\d,]*\})?")


def transposes(hlo_text: str) -> list[tuple[str, tuple[int, ...]]]:
    """(op, result dims) of every transpose and layout-changing copy, fused computations included."""
    found = []
    for line in hlo_text.splitlines():
        m = _INSTR.search(line)
        if not m:
            continue
        dims = tuple(int(d) for d in m.group(2).split(",") if d)
        if m.group(4) == "transpose":
            found.append(("transpose", dims))
            continue
        operand = _OPERAND.search(m.group(5))
        if operand and operand.group(2) and m.group(3) and operand.group(2) != m.group(3):
            found.append(("copy", dims))
    return found


def weight_shapes(shape: tuple[int, ...]) -> set[tuple[int, ...]]:
    """Sorted dims of a stacked [L, in..., out...] weight, of one layer's slice, and of each 2-D
    [in, out] grouping of either: the shapes a transposed weight (or its gradient) can take."""
    out = set()
    for s in (tuple(shape), tuple(shape[1:])):
        out.add(tuple(sorted(s)))
        for i in range(1, len(s)):
            out.add(tuple(sorted((math.prod(s[:i]), math.prod(s[i:])))))
    return out


def offending(found, weights: set[tuple[int, ...]], token_operands: set[tuple[int, int]]) -> list:
    """The weight-shaped ones (dims in any order) and the transposed 2-D [tokens, features] GEMM
    operands (the weight gradient's inputs)."""
    return [(op, dims) for op, dims in found
            if tuple(sorted(dims)) in weights or (len(dims) == 2 and tuple(sorted(dims)) in token_operands)]


def test_classifier_sees_transposing_copies_and_skips_plain_ones():
    hlo = """
  %a = f32[688,1024]{0,1} copy(f32[688,1024]{1,0} %x)
  %b = f32[4,256,688]{2,1,0} copy(f32[4,256,688]{2,1,0} %y)
  %c = f32[8,32,256]{2,1,0} transpose(f32[256,8,32]{2,1,0} %z), dimensions={1,2,0}
  %d = f32[8,128,4,2,32]{4,3,2,1,0} transpose(f32[8,128,8,32]{3,2,1,0} %q), dimensions={0,1,2,3,4}
"""
    found = transposes(hlo)
    assert found == [("copy", (688, 1024)), ("transpose", (8, 32, 256)), ("transpose", (8, 128, 4, 2, 32))]
    bad = offending(found, weights=weight_shapes((4, 256, 8, 32)), token_operands={(688, 1024)})
    assert bad == [("copy", (688, 1024)), ("transpose", (8, 32, 256))]


@pytest.mark.parametrize("attention_impl", ["xla"])
def test_train_step_has_no_weight_gradient_transposes(attention_impl):
    import profile_train_step as prof

    from mellama_jax import sharding as shd

    args = types.SimpleNamespace(preset="small", attention_impl=attention_impl, remat_policy="none",
                                 seq_len=128, batch=8, loss_impl="vocab_parallel")
    config = prof.model_config(args)
    trainer, host_params, state, batch = prof.project_setup(args, config)
    with shd.mesh_context(trainer.mesh, trainer.rules):
        hlo = trainer.jitted_train_step.inner.lower(state, batch).compile().as_text()
    layers = config.num_hidden_layers
    weights = set()
    for leaf in jax.tree.leaves(host_params):
        if leaf.ndim >= 3 and leaf.shape[0] == layers:  # scanned per-layer weights: [L, ...]
            weights |= weight_shapes(leaf.shape)
    assert (256, 688) in weights and (128, 256) in weights, weights  # MLP and k/v really stacked
    tokens = args.batch * args.seq_len
    head_dim = config.hidden_size // config.num_attention_heads
    features = {config.hidden_size, config.intermediate_size, config.num_key_value_heads * head_dim}
    token_operands = {tuple(sorted((tokens, f))) for f in features}
    found = transposes(hlo)
    assert found, "no transpose or copy parsed at all: the HLO format changed"
    assert offending(found, weights, token_operands) == []
