"""Model units: attention kernels agree, masks, remat policies, presets, logical axes, dtypes."""
import numpy as np
import pytest

import flax.linen as nn
import jax
import jax.numpy as jnp

from mellama_jax import Llama, get_preset
from mellama_jax.model.attention import dot_product_attention, make_attention_mask, xla_attention
from mellama_jax.model.llama import init_params, param_logical_axes, param_shapes


@pytest.mark.parametrize("kv_heads", [1, 2, 4])
def test_attention_kernels_agree_with_segments(kv_heads):
    rng = np.random.RandomState(kv_heads)
    q = jnp.asarray(rng.randn(2, 10, 4, 16), jnp.float32)
    k = jnp.asarray(rng.randn(2, 10, kv_heads, 16), jnp.float32)
    v = jnp.asarray(rng.randn(2, 10, kv_heads, 16), jnp.float32)
    segments = jnp.asarray([[1] * 4 + [2] * 4 + [0] * 2, [1] * 10], jnp.int32)
    mask = make_attention_mask(segments, segments)
    ref = xla_attention(q, k, v, mask)
    fast = dot_product_attention(q, k, v, mask)
    real = np.asarray(segments)[:, :, None, None] != 0
    np.testing.assert_allclose(np.where(real, fast, 0), np.where(real, ref, 0), atol=1e-5)
    # gradients agree too (the training path differentiates through the kernel)
    def loss(fn, q):
        return jnp.sum(jnp.where(real, fn(q, k, v, mask), 0) ** 2)
    np.testing.assert_allclose(jax.grad(lambda q: loss(xla_attention, q))(q),
                               jax.grad(lambda q: loss(dot_product_attention, q))(q), atol=1e-4)


def test_attention_mask_is_causal_and_block_diagonal():
    segments = jnp.asarray([[1, 1, 2, 2, 2, 0]], jnp.int32)
    mask = np.asarray(make_attention_mask(segments, segments))[0, 0]
    expected = np.zeros((6, 6), bool)
    expected[0, 0] = expected[1, :2] = True
    expected[2, 2] = True
    expected[3, 2:4] = expected[4, 2:5] = True
    np.testing.assert_array_equal(mask, expected)


def test_presets_have_published_parameter_counts():
    expected = {"llama2_7b": 6_738_415_616, "llama2_13b": 13_015_864_320, "llama2_70b": 68_976_648_192}
    for name, count in expected.items():
        shapes = param_shapes(get_preset(name))  # jax.eval_shape: nothing is allocated
        assert sum(int(np.prod(s.shape)) for s in jax.tree_util.tree_leaves(shapes)) == count
        assert get_preset(name).num_params() == count
    assert round(expected["llama2_7b"] / 1e9, 2) == 6.74 and round(expected["llama2_70b"] / 1e9, 1) == 69.0
    assert get_preset("llama2_70b").num_key_value_heads == 8


def test_every_parameter_has_logical_axes():
    config = get_preset("tiny")
    axes = param_logical_axes(config)
    shapes = param_shapes(config)
    flat_axes = jax.tree_util.tree_leaves(axes, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
    flat_shapes = jax.tree_util.tree_leaves(shapes)
    assert len(flat_axes) == len(flat_shapes) == 12
    for spec, shape in zip(flat_axes, flat_shapes):
        assert len(spec) == len(shape.shape) and all(isinstance(name, str) for name in spec)
    assert axes["layers"]["attention"]["k_proj"] == jax.sharding.PartitionSpec("layers", "embed", "kv_heads", "head_dim")


@pytest.mark.parametrize("policy", ["full", "dots_saveable", "dots_with_no_batch_dims_saveable", "minimal",
                                    "save_attention", "save_attention_out", "save_mlp"])
def test_remat_policies_do_not_change_loss_or_gradients(policy):
    base = get_preset("tiny")
    params = init_params(base, jax.random.key(0))
    tokens = jax.random.randint(jax.random.key(1), (2, 16), 0, base.vocab_size)

    def loss(config, params):
        logits = Llama(config).apply({"params": params}, tokens)
        return -jnp.mean(jax.nn.log_softmax(logits)[:, :-1].max(-1))

    ref_loss, ref_grad = jax.value_and_grad(lambda p: loss(base, p))(params)
    got_loss, got_grad = jax.value_and_grad(lambda p: loss(base.replace(remat_policy=policy), p))(params)
    np.testing.assert_allclose(got_loss, ref_loss, rtol=1e-6)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), got_grad, ref_grad)


def test_bf16_compute_keeps_float32_logits_and_params():
    config = get_preset("tiny", dtype="bfloat16")
    params = init_params(config, jax.random.key(0))
    assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(params))
    tokens = jnp.ones((1, 8), jnp.int32)
    logits = Llama(config).apply({"params": params}, tokens)
    ref = Llama(config.replace(dtype="float32")).apply({"params": params}, tokens)
    assert logits.dtype == jnp.float32
    np.testing.assert_allclose(logits, ref, atol=0.05)
    hidden = Llama(config).apply({"params": params}, tokens, return_hidden=True)
    assert hidden.dtype == jnp.bfloat16 and hidden.shape == (1, 8, config.hidden_size)


def test_return_hidden_times_head_equals_logits():
    from mellama_jax.model.llama import lm_head_kernel

    for tied in (False, True):
        config = get_preset("tiny", tie_word_embeddings=tied)
        params = init_params(config, jax.random.key(0))
        assert ("lm_head" in params) != tied
        tokens = jnp.arange(8)[None] % config.vocab_size
        hidden = Llama(config).apply({"params": params}, tokens, return_hidden=True)
        logits = Llama(config).apply({"params": params}, tokens)
        np.testing.assert_allclose(hidden @ lm_head_kernel(params, config), logits, atol=1e-5)


def test_logical_constraints_shard_activations_under_rules():
    """With a mesh and rules, the constrained activations follow the rules (smoke test of the names)."""
    config = get_preset("tiny")
    params = init_params(config, jax.random.key(0))
    devices = np.array(jax.devices()[:4]).reshape(2, 2)
    mesh = jax.sharding.Mesh(devices, ("data", "tensor"))
    rules = (("activation_batch", "data"), ("activation_heads", "tensor"), ("activation_mlp", "tensor"),
             ("activation_vocab", "tensor"), ("activation_kv_heads", "tensor"))
    tokens = jnp.ones((4, 8), jnp.int32)
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        logits = jax.jit(lambda p, t: Llama(config).apply({"params": p}, t))(params, tokens)
    ref = Llama(config).apply({"params": params}, tokens)
    np.testing.assert_allclose(logits, ref, atol=1e-5)
    assert logits.sharding.spec == jax.sharding.PartitionSpec("data", None, "tensor")


def test_config_errors_name_the_field():
    from mellama_jax import LlamaConfig

    with pytest.raises(ValueError, match="num_key_value_heads"):
        get_preset("tiny", num_key_value_heads=3)
    with pytest.raises(ValueError, match="attention_impl"):
        get_preset("tiny", attention_impl="flash")
    with pytest.raises(ValueError, match="unknown LlamaConfig field"):
        LlamaConfig.from_dict({"hidden": 3})
    with pytest.raises(ValueError, match="unknown model preset"):
        get_preset("llama2_8b")
    assert LlamaConfig.from_dict(get_preset("tiny").to_dict()) == get_preset("tiny")


def _layer_residual_shapes(config, capsys) -> set:
    """Shapes of the per-layer activations the backward pass keeps (stacked by the layer scan)."""
    from jax.ad_checkpoint import print_saved_residuals
    params = init_params(config, jax.random.key(0))
    tokens = jnp.zeros((2, 16), jnp.int32)
    capsys.readouterr()
    print_saved_residuals(lambda p: Llama(config).apply({"params": p}, tokens).sum(), params)
    lines = capsys.readouterr().out.splitlines()
    shapes = set()
    for line in lines:
        if "output of scan" in line:
            dims = tuple(int(x) for x in line.split("[", 1)[1].split("]", 1)[0].split(","))
            if dims[0] == config.num_hidden_layers and len(dims) > 3:
                shapes.add(dims[1:])
    return shapes


def test_named_remat_policies_keep_what_they_name(capsys):
    """save_attention keeps q, k, v and the attention output; save_attention_out the output only;
    save_mlp the gate and up projections;
    full only each layer's input (a policy whose names matched nothing would equal full)."""
    c = get_preset("tiny")
    b, s, h, d = 2, 16, c.hidden_size, c.head_dim
    q, kv = (b, s, c.num_attention_heads, d), (b, s, c.num_key_value_heads, d)
    full = _layer_residual_shapes(c.replace(remat_policy="full"), capsys)
    assert full == {(b, s, h)}
    assert _layer_residual_shapes(c.replace(remat_policy="save_attention"), capsys) == full | {q, kv}
    assert _layer_residual_shapes(c.replace(remat_policy="save_mlp"), capsys) == full | {(b, s, c.intermediate_size)}
    assert _layer_residual_shapes(c.replace(remat_policy="save_attention_out"), capsys) == full | {q}
