"""Attention kernels against the reference: splash (Pallas interpret mode on CPU), cuDNN's call, the
platform dispatch of attention_impl="auto", and 16-bit scores on the XLA paths (compiled HLO).

Splash differs from the reference only on padding queries (segment 0; see model/splash.py), so
outputs are compared on real rows and gradients with a zero cotangent on padding rows, as the
loss_mask makes them in training.
"""
from __future__ import annotations

import logging
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from mellama_jax import Llama, get_preset
from mellama_jax import sharding as shd
from mellama_jax.model import attention as attn
from mellama_jax.model import splash
from mellama_jax.model.attention import make_attention_mask, xla_attention
from mellama_jax.model.llama import init_params, param_shapes

BLOCKS = dict(block_q=128, block_kv=128, block_kv_compute=128)  # 2 blocks at t=256: block skipping runs


def qkv(b, t, heads, kv, d=16, seed=0, dtype=jnp.float32):
    rng = np.random.RandomState(seed)
    return tuple(jnp.asarray(rng.randn(b, t, n, d), dtype) for n in (heads, kv, kv))


def packed_segments(b, t):
    """Row 0: two documents then right padding; row 1: left padding then one document."""
    seg = np.ones((b, t), np.int32)
    seg[0, t // 4: t // 2] = 2
    seg[0, 3 * t // 4:] = 0
    seg[1, :t // 8] = 0
    seg[1, t // 8:] = 3
    return jnp.asarray(seg)


def reference(q, k, v, seg, window=None):
    mask = make_attention_mask(seg, seg, sliding_window=window)
    return xla_attention(q, k, v, mask)


def value_and_grads(fn, q, k, v, seg):
    """fn's output and the gradients wrt q, k, v of a loss that weighs only real rows."""
    rng = np.random.RandomState(1)
    weight = jnp.asarray(rng.randn(*q.shape), jnp.float32) * (seg != 0)[:, :, None, None]
    loss = lambda q, k, v: jnp.sum(fn(q, k, v).astype(jnp.float32) * weight)
    return jax.jit(fn)(q, k, v), jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(q, k, v)


def assert_close_on_real_rows(got, want, seg, atol, rtol=0.0):
    (out, grads), (ref_out, ref_grads) = got, want
    real = np.asarray(seg != 0)[:, :, None, None]
    np.testing.assert_allclose(np.where(real, out, 0), np.where(real, ref_out, 0), atol=atol, rtol=rtol)
    for name, g, r in zip("qkv", grads, ref_grads):
        np.testing.assert_allclose(np.asarray(g, np.float32), np.asarray(r, np.float32), atol=atol, rtol=rtol,
                                   err_msg=f"d loss / d {name}")


# -- splash on one device ------------------------------------------------------------------------
@pytest.mark.parametrize("heads,kv,packed,window,t", [
    (4, 4, False, None, 256),  # causal, multi-head
    (4, 2, True, None, 256),   # GQA 2, packed rows with left and right padding
    (4, 1, True, None, 256),   # GQA 4 (multi-query)
    (4, 2, True, 40, 200),     # Mistral's sliding window; 200 slots padded to whole blocks
])
def test_splash_equals_reference_f32(heads, kv, packed, window, t):
    b = 2
    q, k, v = qkv(b, t, heads, kv)
    seg = packed_segments(b, t) if packed else jnp.ones((b, t), jnp.int32)
    got = value_and_grads(lambda q, k, v: splash.splash_attention(
        q, k, v, seg if packed else None, sliding_window=window, interpret=True, **BLOCKS), q, k, v, seg)
    want = value_and_grads(lambda q, k, v: reference(q, k, v, seg, window), q, k, v, seg)
    assert_close_on_real_rows(got, want, seg, atol=1e-5, rtol=1e-5)
    # padding rows (every row of segment 0) stay finite, forward and backward
    assert all(bool(jnp.isfinite(x).all()) for x in (got[0], *got[1]))


def test_splash_equals_reference_bf16():
    """bfloat16 splash against the float32 reference on the same (rounded) inputs."""
    b, t = 2, 256
    q, k, v = (x.astype(jnp.bfloat16) for x in qkv(b, t, 4, 2))
    seg = packed_segments(b, t)
    got = value_and_grads(lambda q, k, v: splash.splash_attention(q, k, v, seg, interpret=True, **BLOCKS),
                          q, k, v, seg)
    f32 = [x.astype(jnp.float32) for x in (q, k, v)]
    want = value_and_grads(lambda q, k, v: reference(q, k, v, seg), *f32, seg)
    assert got[0].dtype == jnp.bfloat16
    assert_close_on_real_rows(got, want, seg, atol=3e-2, rtol=3e-2)


def test_block_sizes_clamp_to_the_sequence_and_pad_to_whole_blocks():
    sizes, padded = splash.block_sizes(200, 512, 512, 512)
    assert (sizes.block_q, sizes.block_kv, sizes.block_kv_compute, padded) == (256, 256, 256, 256)
    sizes, padded = splash.block_sizes(384, 512, 512, 256)  # kv clamped to 384: compute tile 128
    assert (sizes.block_q, sizes.block_kv, sizes.block_kv_compute, padded) == (384, 384, 128, 384)
    sizes, padded = splash.block_sizes(4096, 512, 1024, 512)
    assert (sizes.block_q, sizes.block_kv, sizes.block_kv_dkv, sizes.block_q_dq, padded) == (512, 1024, 1024, 512, 4096)
    sizes, padded = splash.block_sizes(600, 256, 256, 128)
    assert padded == 768


@pytest.mark.parametrize("field,value,match", [
    ("splash_block_q", 100, "splash_block_q=100: must be a positive multiple of 128"),
    ("splash_block_kv_compute", 0, "splash_block_kv_compute=0"),
    ("splash_block_kv", 256, "splash_block_kv=256: must be a multiple of splash_block_kv_compute=512"),
])
def test_bad_splash_block_size_names_the_key(field, value, match):
    with pytest.raises(ValueError, match=match):
        get_preset("tiny", **{field: value})


# -- splash over a mesh --------------------------------------------------------------------------
@pytest.mark.parametrize("heads,kv", [
    (4, 2),  # kv heads split like the query heads
    pytest.param(4, 1, marks=pytest.mark.slow),  # one kv head for 2 head shards: each takes it
    pytest.param(6, 3, marks=pytest.mark.slow),  # groups of 2 straddle 2 shards of 3 heads
])
def test_sharded_splash_equals_unsharded(heads, kv):
    b, t = 4, 256
    mesh = shd.make_mesh(shd_ns(data=2, fsdp=1, tensor=2), jax.devices()[:4])
    q, k, v = qkv(b, t, heads, kv)
    seg = jnp.concatenate([packed_segments(2, t)] * 2)
    one = lambda q, k, v: splash.splash_attention(q, k, v, seg, interpret=True, **BLOCKS)
    many = lambda q, k, v: splash.sharded_splash_attention(q, k, v, seg, mesh, ("data", "fsdp"), ("tensor",),
                                                           interpret=True, **BLOCKS)
    assert_close_on_real_rows(value_and_grads(many, q, k, v, seg), value_and_grads(one, q, k, v, seg), seg,
                              atol=1e-6, rtol=1e-6)


def shd_ns(**kw):
    import types
    return types.SimpleNamespace(**kw)


def test_usable_axes_drop_what_does_not_divide():
    mesh = shd.make_mesh(shd_ns(data=2, fsdp=2, tensor=2))
    assert splash.usable_axes(mesh, ("data", "fsdp"), 8) == ("data", "fsdp")
    assert splash.usable_axes(mesh, ("data", "fsdp"), 6) == ()
    assert splash.usable_axes(mesh, ("tensor",), 3) == ()
    one = shd.make_mesh(shd_ns(data=1, fsdp=2, tensor=1), jax.devices()[:2])
    assert splash.usable_axes(one, ("data", "fsdp"), 2) == ("fsdp",)


# -- the whole model -----------------------------------------------------------------------------
TINY = dict(vocab_size=128, max_position_embeddings=256, splash_block_q=128, splash_block_kv=128,
            splash_block_kv_compute=128)


def model_loss_and_grads(config, params, tokens, seg):
    # A target counts when it and the token predicting it are in the same document (not padding).
    weights = ((seg[:, :-1] == seg[:, 1:]) & (seg[:, 1:] != 0)).astype(jnp.float32)

    def loss(p):
        logits = Llama(config).apply({"params": p}, tokens, segment_ids=seg)
        logp = jax.nn.log_softmax(logits, axis=-1)
        nll = -jnp.take_along_axis(logp[:, :-1], tokens[:, 1:, None], axis=-1)[..., 0]
        return jnp.sum(nll * weights) / jnp.sum(weights)

    return jax.jit(jax.value_and_grad(loss))(params)


@pytest.mark.parametrize("policy", ["full", "dots_with_no_batch_dims_saveable", "save_attention", "save_attention_out"])
def test_llama_forward_and_loss_gradient_splash_equals_xla(policy):
    """Also with the kernel's own residuals kept (the saving policies) instead of recomputed."""
    config = get_preset("tiny", **TINY)
    params = init_params(config, jax.random.key(0))
    tokens = jax.random.randint(jax.random.key(1), (2, 256), 0, config.vocab_size)
    seg = packed_segments(2, 256)
    want = model_loss_and_grads(config, params, tokens, seg)
    got = model_loss_and_grads(config.replace(attention_impl="splash", remat_policy=policy), params, tokens, seg)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5)
    jax.tree.map(lambda g, r: np.testing.assert_allclose(g, r, atol=1e-5, rtol=1e-4), got[1], want[1])


def _kept_per_layer(config, tokens, capsys) -> list[str]:
    """print_saved_residuals' lines for the per-layer arrays the layer scan keeps for backward."""
    from jax.ad_checkpoint import print_saved_residuals
    params = init_params(config, jax.random.key(0))
    capsys.readouterr()
    print_saved_residuals(lambda p: Llama(config).apply({"params": p}, tokens).sum(), params)
    layers = f"[{config.num_hidden_layers},"
    return [line for line in capsys.readouterr().out.splitlines()
            if "output of scan" in line and line.split(" ", 1)[0].split("[", 1)[-1].startswith(layers[1:])]


def test_saving_policies_keep_the_splash_residuals(capsys):
    """Under a policy that keeps attention, the backward reads the splash kernel's inputs in its
    layout and its forward's output and log-sum-exp instead of running the kernel's forward again
    (or RoPE and the transposes into its layout); full remat keeps none of them, save_attention_out
    only the output and log-sum-exp, and nothing is kept twice."""
    c = get_preset("tiny", attention_impl="splash", **TINY)
    L, b, t = c.num_hidden_layers, 2, 256
    h, kv, d = c.num_attention_heads, c.num_key_value_heads, c.head_dim
    tokens = jnp.zeros((b, t), jnp.int32)
    heads_first = f"[{L},{b},{h},{t},{d}]"  # the kernel's q and its output
    kv_heads_first, lse, model_layout_q = f"[{L},{b},{kv},{t},{d}]", f"[{L},{b},{h},{t}]", f"[{L},{b},{t},{h},{d}]"

    def kept(policy):
        arrays = [line.split(" ", 1)[0] for line in _kept_per_layer(c.replace(remat_policy=policy), tokens, capsys)]
        return arrays, {shape: sum(a.endswith(shape) for a in arrays)
                        for shape in (heads_first, kv_heads_first, lse, model_layout_q)}

    full, n_full = kept("full")
    assert n_full[lse] == n_full[heads_first] == 0
    for policy in ("dots_with_no_batch_dims_saveable", "save_attention"):
        arrays, n = kept(policy)
        assert (n[heads_first], n[kv_heads_first], n[lse], n[model_layout_q]) == (2, 2, 1, 0), (policy, arrays)
    assert len(kept("save_attention")[0]) == len(full) + 5  # q, k, v, output, log-sum-exp
    arrays, n = kept("save_attention_out")
    assert (n[heads_first], n[lse], len(arrays)) == (1, 1, len(full) + 2), arrays


@pytest.mark.slow
def test_llama_splash_under_the_training_mesh_equals_xla():
    """Under the mesh and the default logical-axis rules, as the train step traces it."""
    config = get_preset("tiny", **TINY)
    mesh = shd.make_mesh(shd_ns(data=2, fsdp=2, tensor=2))
    params = init_params(config, jax.random.key(0))
    tokens = jax.random.randint(jax.random.key(1), (4, 256), 0, config.vocab_size)
    seg = jnp.concatenate([packed_segments(2, 256)] * 2)
    want = model_loss_and_grads(config, params, tokens, seg)
    with shd.mesh_context(mesh, shd.DEFAULT_RULES):
        tokens, seg = (jax.device_put(x, shd.batch_sharding(mesh)) for x in (tokens, seg))
        got = model_loss_and_grads(config.replace(attention_impl="splash"), params, tokens, seg)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5)
    jax.tree.map(lambda g, r: np.testing.assert_allclose(g, r, atol=1e-5, rtol=1e-4), got[1], want[1])


# -- cuDNN's call (run through jax's XLA implementation: no GPU here) -----------------------------
@pytest.mark.parametrize("window", [None, 40])
def test_cudnn_call_with_segment_mask_equals_reference(window):
    b, t = 2, 64
    q, k, v = qkv(b, t, 4, 2)
    seg = packed_segments(b, t)
    mask = make_attention_mask(seg, seg, sliding_window=window)
    got = value_and_grads(lambda q, k, v: attn.cudnn_attention(q, k, v, mask, window, implementation="xla"),
                          q, k, v, seg)
    want = value_and_grads(lambda q, k, v: reference(q, k, v, seg, window), q, k, v, seg)
    assert_close_on_real_rows(got, want, seg, atol=1e-5, rtol=1e-5)


# -- dispatch ------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend,dtype,head_dim,chosen", [
    ("tpu", "bfloat16", 128, "splash"),
    ("tpu", "float32", 64, "splash"),
    ("gpu", "bfloat16", 128, "cudnn"),
    ("gpu", "float16", 64, "cudnn"),
    ("gpu", "float32", 128, "xla"),    # cuDNN flash attention is 16-bit only
    ("gpu", "bfloat16", 160, "xla"),   # head_dim beyond cuDNN's bound
    ("gpu", "bfloat16", 36, "xla"),    # not a multiple of 8
    ("cpu", "bfloat16", 128, "xla"),
])
def test_auto_picks_the_platform_kernel(monkeypatch, backend, dtype, head_dim, chosen):
    monkeypatch.setattr(jax, "default_backend", lambda: backend)
    assert attn.resolve_attention_impl("auto", jnp.dtype(dtype), head_dim) == chosen
    assert attn.resolve_attention_impl("xla", jnp.dtype(dtype), head_dim) == "xla"  # explicit stays


def test_splash_off_tpu_and_cpu_is_refused(monkeypatch):
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    q, k, v = qkv(1, 128, 4, 2)
    with pytest.raises(ValueError, match="attention_impl='splash' is a TPU kernel"):
        attn.attention(q, k, v, jnp.ones((1, 128), jnp.int32), "splash")


def test_auto_choice_is_logged_once(monkeypatch, caplog):
    monkeypatch.setattr(jax, "default_backend", lambda: "tpu")
    attn._log_choice.cache_clear()
    with caplog.at_level(logging.INFO, logger=attn.__name__):
        for _ in range(3):
            attn.resolve_attention_impl("auto", jnp.bfloat16, 128)
    assert [r.getMessage() for r in caplog.records] == ["attention_impl=auto on tpu (dtype bfloat16, head_dim 128): splash"]


def test_auto_on_cpu_is_the_xla_reference():
    config = get_preset("tiny", **TINY)
    params = init_params(config, jax.random.key(0))
    tokens = jax.random.randint(jax.random.key(1), (2, 32), 0, config.vocab_size)
    seg = packed_segments(2, 32)
    forward = lambda c: jax.jit(Llama(c).apply)({"params": params}, tokens, segment_ids=seg)
    np.testing.assert_array_equal(forward(config.replace(attention_impl="auto")), forward(config))


# -- 16-bit scores in the HLO --------------------------------------------------------------------
T = 256  # no other dim of the tiny model is 256, so a [.., T, T] tensor is attention scores


def score_tensors(hlo: str, dtype: str = "f32", op: str = "") -> list[str]:
    """Shapes of `dtype` tensors with two T-sized dims (or [.., group * T, T] rows, the grouped
    layout of xla_attention's scores) that an HLO module writes to memory: the
    results of instructions outside fusion bodies (a fusion's inner values never reach memory);
    with `op`, only the results of that instruction (e.g. "dot")."""
    fused = set(re.findall(r"calls=%([\w.\-]+)", hlo)) if "fusion(" in hlo else set()
    found, comp = [], None
    for line in hlo.splitlines():
        head = re.match(r"^(?:ENTRY )?%?([\w.\-]+) .*\{\s*$", line)
        if head:
            comp = head.group(1)
            continue
        if comp in fused or " = " not in line:
            continue
        rhs = line.split(" = ", 1)[1]
        if op and not re.match(rf"^\S+(?:\{{[^}}]*\}})? {op}\(", rhs):
            continue
        result = rhs.split(")")[0] if rhs.startswith("(") else rhs.split(" ")[0]
        for dims in re.findall(rf"\b{dtype}\[([\d,]+)\]", result):
            shape = [int(x) for x in dims.split(",")]
            grouped = len(shape) >= 2 and T in shape[-2:] and shape[-2] % T == 0 and shape[-1] % T == 0
            if shape.count(T) >= 2 or grouped:
                found.append(f"{dtype}[{dims}]")
    return found


def bf16_train_hlo(impl: str, mesh: Mesh | None = None, compile: bool = True) -> str:
    config = get_preset("tiny", dtype="bfloat16", vocab_size=128, attention_impl=impl)
    tokens = jnp.zeros((1, T), jnp.int32)

    def loss(p, tokens, seg):
        return Llama(config).apply({"params": p}, tokens, segment_ids=seg).sum()

    fn = jax.jit(jax.value_and_grad(loss))
    if mesh is None:
        lowered = fn.lower(param_shapes(config), tokens, tokens)
        return lowered.compile().as_text() if compile else lowered.as_text(dialect="hlo")
    rep = NamedSharding(mesh, P())
    spec = lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=rep)
    params = jax.tree.map(spec, param_shapes(config))  # outside the TPU mesh: no TPU runs anything
    with shd.mesh_context(mesh):
        return fn.lower(params, spec(tokens), spec(tokens)).compile().as_text()


@pytest.mark.parametrize("impl", ["xla", "dot_product"])
def test_bf16_score_matmuls_are_bf16(impl):
    """The traced program (before optimisation): every matmul with a [t, s] result, forward and
    backward, writes bf16. (Compiled CPU HLO cannot show the memory: XLA's CPU backend widens
    16-bit elementwise maths to float32; the TPU compile below does.)"""
    hlo = bf16_train_hlo(impl, compile=False)
    assert score_tensors(hlo, "bf16", op="dot"), "the check found no bf16 score matmul: it checks nothing"
    assert score_tensors(hlo, op="dot") == []


def tpu_devices():
    pytest.importorskip("libtpu", reason="ahead-of-time TPU compiles need libtpu (requirements-dev.txt)")
    from mellama_jax.plan.aot import topology_devices
    from mellama_jax.plan.hardware import parse_tpu_topology
    return topology_devices(parse_tpu_topology("v5e:2x2"))


@pytest.mark.parametrize("impl", ["xla", "dot_product"])
def test_bf16_tpu_train_step_writes_no_f32_scores(impl):
    """Compiled ahead of time for a TPU: the scores XLA writes to HBM are bf16, never float32."""
    mesh = Mesh(np.asarray(tpu_devices()[:1]).reshape(1, 1, 1), shd.MESH_AXES)
    hlo = bf16_train_hlo(impl, mesh)
    assert score_tensors(hlo, "bf16"), "the check found no bf16 score tensor: it checks nothing"
    assert score_tensors(hlo) == []


def test_auto_compiles_splash_for_tpu_and_writes_no_scores():
    """On a TPU mesh (an ahead-of-time compile on this CPU host) "auto" is the splash kernel,
    lowered by Mosaic (not interpreted), sharded over the mesh, and no [t, s] tensor is written."""
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    devices = tpu_devices()
    mesh = shd.make_mesh(shd_ns(data=1, fsdp=2, tensor=2), devices)
    config = get_preset("tiny", dtype="bfloat16", vocab_size=128, attention_impl="auto")
    batch = NamedSharding(mesh, P(shd.BATCH_AXES))
    tokens = jax.ShapeDtypeStruct((2, T), jnp.int32, sharding=batch)
    rep = NamedSharding(mesh, P())
    params = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=rep), param_shapes(config))

    def loss(p, tokens, seg):
        return Llama(config).apply({"params": p}, tokens, segment_ids=seg).sum()

    with shd.mesh_context(mesh, shd.DEFAULT_RULES):
        hlo = jax.jit(jax.value_and_grad(loss)).lower(params, tokens, tokens).compile().as_text()
    assert "splash_mha_fwd" in hlo and "splash_mha_dq" in hlo and "splash_mha_dkv" in hlo
    assert 'custom_call_target="tpu_custom_call"' in hlo
    assert score_tensors(hlo) == [] and score_tensors(hlo, "bf16") == []
    # The planner reads the kernels: once per layer each way; per device 1 row x 2 heads (batch over
    # fsdp, heads over tensor) x 256 x 256 x head_dim 16, one 256-block (clamped), so no skipping.
    from mellama_jax.plan import hlo as hlo_lib
    kernels = {k.name.split("_segmented")[0]: k for k in hlo_lib.analyze(hlo, len(devices)).kernels}
    per_matmul = 2 * 1 * 2 * T * T * config.head_dim
    assert {n: (k.count, k.flops / per_matmul) for n, k in kernels.items()} == {
        "splash_mha_fwd": (2, 2), "splash_mha_dq": (2, 3), "splash_mha_dkv": (2, 4)}
