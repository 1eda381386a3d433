"""The planner: ahead-of-time TPU compiles of the real train step, and the analytic estimator.

The compiles need libtpu (requirements-dev.txt) but no TPU: jax.experimental.topologies describes
the slice and XLA's TPU compiler runs on this CPU host.
"""
from __future__ import annotations

import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from configs import pretrain  # noqa: E402
from mellama_jax import get_preset, sharding as shd  # noqa: E402
from mellama_jax.model.config import REMAT_POLICIES  # noqa: E402
from mellama_jax.plan import aot, estimate as est_lib, hardware, hlo  # noqa: E402
from mellama_jax.train import loop, metrics  # noqa: E402

pytest.importorskip("libtpu", reason="ahead-of-time TPU compiles need libtpu (requirements-dev.txt)")

# Shapes whose per-device shards are whole (8, 128) TPU tiles, so XLA's argument bytes carry no
# layout padding and must equal the sharded arrays' sizes.
TILE_FRIENDLY = dict(vocab_size=1024, hidden_size=512, intermediate_size=512, num_hidden_layers=8,
                     num_attention_heads=8, num_key_value_heads=8, head_dim=128)


def tiny_config(mesh=(1, 2, 2), **model):
    c = pretrain.get_config("tiny")
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = mesh
    for k, v in model.items():
        c.model[k] = v
    return c


def nbytes(tree) -> int:
    return sum(math.prod(x.sharding.shard_shape(x.shape)) * jnp.dtype(x.dtype).itemsize
               for x in jax.tree.leaves(tree))


@pytest.fixture(scope="module")
def tiny_plan():
    config = tiny_config(**TILE_FRIENDLY)
    return config, aot.compile_plan(config, "v5e:2x2")


def test_tiny_v5e_bytes_are_the_sharded_state(tiny_plan):
    config, plan = tiny_plan
    assert plan.topology == "v5e:2x2" and plan.num_devices == 4 and plan.device_kind == "TPU v5 lite"
    assert plan.mesh == {"data": 1, "fsdp": 2, "tensor": 2}
    # The same Trainer over the compiled mesh's shape gives the shard sizes of every state array.
    _, mc, _ = aot.plan_model_config(config)
    trainer = loop.Trainer(config, mc, est_lib.abstract_mesh(config.mesh, 4))
    state = trainer.abstract_state()
    params, opt = nbytes(state.params), nbytes(state.opt_state)
    batch = nbytes(aot.abstract_batch(config, trainer.mesh))
    # float32 master params sharded 4 ways (the norms replicated): ~N * 4 / 4 bytes per device
    assert 0.9 * mc.num_params() < params < 1.1 * mc.num_params()
    assert opt == pytest.approx(2 * params, abs=4096)  # AdamW mu + nu (+ count scalars)
    expected = params + opt + batch
    # Scalars (step, rng, optimizer counts) occupy whole tiles: a few KiB over the array sizes.
    assert 0 <= plan.argument_bytes - expected < 64 * 1024, (plan.argument_bytes, expected)
    assert 0 <= plan.alias_bytes - (params + opt) < 64 * 1024  # the donated state is reused
    assert plan.output_bytes >= plan.alias_bytes
    assert plan.fits and plan.total_bytes < plan.hbm_bytes == 16 * 2 ** 30


def test_compiled_param_shardings_equal_cpu_mesh(tiny_plan):
    config, plan = tiny_plan
    _, mc, _ = aot.plan_model_config(config)
    cpu_mesh = shd.make_mesh(config.mesh, devices=jax.devices()[:4])
    cpu = loop.Trainer(config, mc, cpu_mesh)
    cpu_specs = jax.tree.map(lambda s: s.spec, cpu.param_shardings)
    assert jax.tree.structure(cpu_specs) == jax.tree.structure(plan.param_specs)
    assert jax.tree.leaves(cpu_specs) == jax.tree.leaves(plan.param_specs)
    # and the rules really shard: q_proj over fsdp (embed) and tensor (heads)
    assert plan.param_specs["layers"]["attention"]["q_proj"] == jax.sharding.PartitionSpec(
        None, "fsdp", "tensor")


def test_loop_corrected_flops_equal_model_flops(tiny_plan):
    """XLA counts each scan body once; the HLO pass multiplies by the trip counts."""
    config, plan = tiny_plan
    layers = TILE_FRIENDLY["num_hidden_layers"]
    assert sorted(t for _, t in plan.loops) == [layers, layers]  # forward and backward scans
    per_device = plan.model_flops_per_step / plan.num_devices  # remat none: nothing recomputed
    assert plan.xla_flops < 0.5 * per_device  # what XLA alone reports
    assert plan.flops == pytest.approx(per_device, rel=0.03)
    assert {c.kind for c in plan.collectives} >= {"all-gather", "all-reduce"}
    assert plan.roofline.step_s > 0 and 0 < plan.mfu < 1


def test_estimator_state_is_the_compiled_arguments(tiny_plan):
    config, plan = tiny_plan
    _, mc, _ = aot.plan_model_config(config)
    est = est_lib.estimate(config, mc, 4, hardware.TPU_CHIPS["v5e"])
    assert est.state_bytes + est.batch_bytes == pytest.approx(plan.argument_bytes, rel=0.01)
    assert est.flops == pytest.approx(plan.flops, rel=0.05)


def _plan_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    return subprocess.run([sys.executable, "-m", "mellama_jax.cli.plan", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


def test_oversized_preset_does_not_fit_nonzero_exit():
    """LLaMA-2 7B with AdamW state (~84 GB) cannot fit on 4 v5e chips of 16 GiB."""
    out = _plan_cli("--config", "configs/pretrain.py:tiny", "--topology", "v5e:2x2",
                    "--config.model.preset=llama2_7b", "--config.data.seq_len=128",
                    "--config.train.global_batch_size=4")
    assert out.returncode == 1, out.stderr[-2000:]
    assert "DOES NOT FIT" in out.stdout and "DOES NOT FIT" in out.stderr
    assert "refused the program" in out.stdout  # the TPU compiler's own out-of-memory verdict


def test_tiny_cli_report_fits_exit_zero(tmp_path):
    path = tmp_path / "plan.json"
    out = _plan_cli("--config", "configs/pretrain.py:tiny", "--topology", "v5e:2x2",
                    f"--json={path}")
    assert out.returncode == 0, out.stderr[-2000:]
    for text in ("arguments", "temporaries", "FITS", "XLA cost analysis", "all-gather",
                 "roofline", "MFU"):
        assert text in out.stdout
    import json
    saved = json.loads(path.read_text())
    assert saved["aot"]["fits"] and saved["aot"]["mesh"] == {"data": 1, "fsdp": 4, "tensor": 1}


def test_bad_topology_and_cluster_exit_2():
    out = _plan_cli("--config", "configs/pretrain.py:tiny", "--topology", "v9z:2x2")
    assert out.returncode == 2 and "--topology='v9z:2x2'" in out.stderr
    out = _plan_cli("--config", "configs/pretrain.py:tiny", "--gpus", "8xB300")
    assert out.returncode == 2 and "--gpus='8xB300'" in out.stderr


def test_estimated_scores_bytes_follow_the_attention_kernel():
    """[seq, seq] scores: float32 through jax.nn.dot_product_attention, the bf16 compute dtype
    through our xla attention, none with a fused kernel."""
    mc = get_preset("llama2_7b", dtype="bfloat16")
    rows, seq = 2, 1024
    square = rows * mc.num_attention_heads * seq * seq
    out = rows * seq * mc.num_attention_heads * mc.head_dim
    dots = {impl: est_lib.layer_activation_bytes(mc.replace(attention_impl=impl), rows, seq, 1)["attention_dots"]
            for impl in ("dot_product", "xla")}
    assert dots == {"dot_product": 4 * (square + out), "xla": 2 * (square + out)}
    fused = est_lib.layer_activation_bytes(mc.replace(attention_impl="splash"), rows, seq, 1, fused_attention=True)
    assert fused["attention_dots"] == 2 * out


def test_estimated_saved_activations_per_named_remat_policy():
    """save_attention keeps q, k, v and the attention output; save_mlp the gate and up projections;
    both between full remat (layer inputs) and the dots policies (every projection output)."""
    mc = get_preset("llama2_13b", dtype="bfloat16")
    layer = est_lib.layer_activation_bytes(mc, 1, 4096, 1, fused_attention=True)
    saved = {p: sum(layer[k] for k in est_lib.SAVED_KINDS[p])
             for p in ("full", "save_attention", "save_mlp", "dots_with_no_batch_dims_saveable")}
    tok_bytes = 4096 * 2  # one row of bf16
    assert saved["save_attention"] - saved["full"] == tok_bytes * 4 * mc.hidden_size  # q, k, v, out (no GQA)
    assert saved["save_mlp"] - saved["full"] == tok_bytes * 2 * mc.intermediate_size
    assert saved["full"] < saved["save_attention"] < saved["save_mlp"] < saved["dots_with_no_batch_dims_saveable"]
    assert set(est_lib.SAVED_KINDS) == set(REMAT_POLICIES)  # every policy has an estimate


def test_estimate_keeps_splash_residuals_instead_of_a_second_forward():
    """Under splash the saving policies keep the kernel's output and log-sum-exp (model/llama.py):
    the estimate adds those bytes and drops the kernel's second forward from the executed FLOPs;
    full remat and save_mlp are unchanged, and save_attention keeps the output once."""
    mc = get_preset("llama2_13b", dtype="bfloat16", remat_policy="dots_with_no_batch_dims_saveable")
    seq, heads, d = 4096, mc.num_attention_heads, mc.head_dim
    layer = est_lib.layer_activation_bytes(mc, 1, seq, 1, fused_attention=True, kernel_residuals=True)
    assert layer["kernel_residuals"] == seq * heads * (d * 2 + 4)  # bf16 output, f32 log-sum-exp
    assert est_lib.layer_activation_bytes(mc, 1, seq, 1, fused_attention=True)["kernel_residuals"] == 0
    dots = est_lib.saved_kinds("dots_with_no_batch_dims_saveable", kernel_residuals=True)
    assert dots == est_lib.SAVED_KINDS["dots_with_no_batch_dims_saveable"] + ("kernel_residuals",)
    assert est_lib.saved_kinds("save_attention", True) == ("carry", "attention_qkv", "kernel_residuals")
    for policy in ("full", "save_mlp"):
        assert est_lib.saved_kinds(policy, True) == est_lib.SAVED_KINDS[policy]
    attn_fwd = 4.0 * mc.num_hidden_layers * heads * d * seq
    again = est_lib.executed_flops_per_token(mc, seq) - est_lib.executed_flops_per_token(mc, seq, kernel_residuals=True)
    assert again == pytest.approx(attn_fwd)
    full = mc.replace(remat_policy="full")
    assert est_lib.executed_flops_per_token(full, seq, kernel_residuals=True) == est_lib.executed_flops_per_token(full, seq)


def test_report_names_the_layer_scans_forward_and_backward():
    """A layer scan whose while op carries another op's name (XLA merged the splash kernel's
    metadata into it) is still the forward scan; windowed-einsum loops keep their own names."""
    from mellama_jax.plan.report import _loop_label
    splash = "vmap(static_sparsity_splash)/jit(_splash_attention)/splash_mha_fwd_residuals/pallas_call"
    assert _loop_label(splash, 40, 40) == "fwd x40"
    assert _loop_label("jit(train_step)/transpose(jvp(Llama))/while", 40, 40) == "bwd x40"
    assert _loop_label("jit(train_step)/while/body/jvp(Llama)/layers/mlp/dot_general", 4, 40) == "fwd x4"
    assert _loop_label("jit(train_step)/while", 8, 40) == "x8"  # the micro-batch loop


def test_gpu_estimate_70b_one_node_does_not_fit_eight_nodes_do():
    """70B with float32 AdamW state is ~830 GB: one 8xH100 node cannot hold it, 8 nodes can."""
    config = pretrain.get_config("llama2_70b")
    config, mc, notes = aot.plan_model_config(config)
    assert any("init_from" in n for n in notes)  # no weights on this host: preset shapes
    one = est_lib.estimate(config, mc, 8, hardware.GPU_CHIPS["h100"], "8xH100")
    assert one.state_bytes > one.hbm_bytes and not one.fits  # 69B x 12 bytes / 8 = 96 GiB
    eight = est_lib.estimate(config, mc, 64, hardware.GPU_CHIPS["h100"], "64xH100")  # as shipped
    assert eight.state_bytes == pytest.approx(one.state_bytes / 8, rel=0.01)
    assert eight.rows_per_device == 256 / 1 / 64  # one micro-batch over fsdp=64
    assert eight.fits


def test_parse_hardware():
    assert hardware.parse_tpu_topology("v5p:4x4x4").num_chips == 64
    assert hardware.parse_gpu_cluster("64xH100").num_nodes == 8
    with pytest.raises(ValueError, match="v5p:4x4x4"):
        hardware.parse_tpu_topology("tpu-v5p-128")
    assert hardware.TPU_CHIPS["v5p"].peak_flops == metrics.PEAK_BF16_TFLOPS["tpu v5p"] * 1e12


# The wiring of real slices (Cloud TPU system-architecture pages): v4/v5p tori of whole 4x4x4
# cubes wrap on every axis, smaller 3-D slices not at all; 2-D v5e/v6e wrap along a 16-chip edge.
@pytest.mark.parametrize("name,wrap,chip_config", [
    ("v5p:4x4x4", (True, True, True), "megacore"),
    ("v5p:4x4x8", (True, True, True), "megacore"),
    ("v5p:2x2x4", (False, False, False), "megacore"),
    ("v5p:2x4x4", (False, False, False), "megacore"),
    ("v4:8x8x8", (True, True, True), "megacore"),
    ("v4:2x2x1", (False, False, False), "megacore"),
    ("v5e:2x2", (False, False, False), "default"),
    ("v5e:16x16", (True, True, False), "default"),
    ("v6e:8x16", (False, True, False), "default"),
])
def test_topology_wiring_is_the_real_slices(name, wrap, chip_config):
    topo = hardware.parse_tpu_topology(name)
    assert topo.wrap == wrap and topo.chip_config_name == chip_config
    assert topo.links.startswith("torus") == any(wrap)


def test_topology_wiring_matches_maxtexts_table():
    # MaxText 0.2.5's accelerator table (tests/fixtures/maxtext_tpu_slices.json, written from its
    # accelerator_to_spec_map.py): every v4/v5e/v5p/v6e slice it compiles for, with the chip config
    # and wraparound it hands libtpu. The planner's rule gives the same for each.
    import json
    with open(os.path.join(ROOT, "tests", "fixtures", "maxtext_tpu_slices.json")) as f:
        slices = json.load(f)["slices"]
    assert len(slices) == 124
    for s in slices:
        topo = hardware.parse_tpu_topology(s["topology"])
        assert (topo.chip_config_name, list(topo.wrap)) == (s["chip_config_name"], s["wrap"]), s


def test_v4_compiles_one_megacore_device_per_chip():
    # jax.devices() on a real v4 slice lists one (megacore) device per chip; libtpu's "default"
    # chip config described two per chip, so the planner built v4 meshes of twice the devices
    # launch.py gets there (and halved each device's HBM and FLOP/s).
    devices = aot.topology_devices(hardware.parse_tpu_topology("v4:2x2x1"))
    assert len(devices) == 4


def test_fsdp_weight_gathers_on_a_torus_are_all_gathers():
    # Compiled for v5p:4x4x4 without the wraparound the real slice has, libtpu lowered every FSDP
    # weight gather as a dynamic-update-slice into zeros plus an all-reduce (2x the wire bytes of an
    # all-gather, and the zero-filled buffer's HBM writes); with the torus it emits all-gathers.
    config = tiny_config(mesh=(1, -1, 1), vocab_size=1024, hidden_size=512, intermediate_size=1024,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4, head_dim=128)
    config.train.global_batch_size, config.data.seq_len = 64, 128
    plan = aot.compile_plan(config, "v5p:4x4x4")
    assert plan.mesh == {"data": 1, "fsdp": 64, "tensor": 1} and plan.links.startswith("torus")
    kinds = {c.kind for c in plan.collectives}
    assert "all-gather" in kinds, sorted(kinds)


@pytest.mark.parametrize("step,limit", [(1, 5), (2, 10)])
def test_hlo_dot_flops_and_trip_count_parsing(step, limit):
    """Trip count = (limit - init) / step: XLA's windowed-einsum loops count by 2."""
    text = """HloModule m

%cond (p: (s32[], f32[8,16])) -> pred[] {
  %p = (s32[], f32[8,16]{1,0}) parameter(0)
  %c = s32[] constant(LIMIT)
  %i = s32[] get-tuple-element(%p), index=0
  ROOT %lt = pred[] compare(%i, %c), direction=LT
}

%body (p: (s32[], f32[8,16])) -> (s32[], f32[8,16]) {
  %p = (s32[], f32[8,16]{1,0}) parameter(0)
  %x = f32[8,16]{1,0} get-tuple-element(%p), index=1
  %w = f32[16,16]{1,0} constant({...})
  %d = f32[8,16]{1,0} dot(%x, %w), lhs_contracting_dims={1}, rhs_contracting_dims={0}
  %i = s32[] get-tuple-element(%p), index=0
  %one = s32[] constant(STEP)
  %next = s32[] add(%i, %one)
  ROOT %t = (s32[], f32[8,16]{1,0}) tuple(%next, %d)
}

ENTRY %main (a: f32[8,16]) -> f32[8,16] {
  %a = f32[8,16]{1,0} parameter(0)
  %z = s32[] constant(0)
  %t = (s32[], f32[8,16]{1,0}) tuple(%z, %a)
  %w = (s32[], f32[8,16]{1,0}) while(%t), condition=%cond, body=%body
  %g = f32[8,16]{1,0} all-gather(%a), replica_groups={{0,1},{2,3}}, dimensions={0}
  ROOT %r = f32[8,16]{1,0} get-tuple-element(%w), index=1
}
""".replace("LIMIT", str(limit)).replace("STEP", str(step))
    stats = hlo.analyze(text, 4)
    assert stats.loops == [("body", 5)]
    assert stats.dot_flops_once == 2 * 8 * 16 * 16
    assert stats.dot_flops == 5 * 2 * 8 * 16 * 16
    (gather,) = stats.collectives
    assert gather.kind == "all-gather" and gather.group_sizes == (2,) and gather.count == 1
    assert gather.wire_bytes == 8 * 16 * 4 / 2


# Two shapes big enough that activations dwarf the TPU's on-chip VMEM (tiny programs keep their
# temporaries there and read lower in HBM): full remat on fsdp=4, dots_saveable on fsdp=2 x tensor=2.
MID = dict(preset="small", hidden_size=1024, intermediate_size=2816, num_attention_heads=8,
           num_key_value_heads=8, dtype="bfloat16", attention_impl="dot_product")


@pytest.mark.slow
@pytest.mark.parametrize("mesh,remat", [
    ((1, 4, 1), "full"),
    # Failing since before 2026-12-04 (found at b872c56): the estimate reads 1.25x the compile.
    # It keeps dot_product's [seq, seq] float32 scores under dots_saveable (SAVED_KINDS), which
    # jax's policy does not keep (print_saved_residuals lists none), and still over-reads without
    # them; the estimate's model of this program needs redoing.
    pytest.param((1, 2, 2), "dots_saveable", marks=pytest.mark.xfail(strict=True, reason="estimate 1.25x the compile")),
])
def test_estimator_agrees_with_aot_compile(mesh, remat):
    config = tiny_config(mesh, remat_policy=remat, **MID)
    config.data.seq_len, config.train.global_batch_size = 1024, 32
    plan = aot.compile_plan(config, "v5e:2x2")
    _, mc, _ = aot.plan_model_config(config)
    est = est_lib.estimate(config, mc, 4, hardware.TPU_CHIPS["v5e"])
    compiled = plan.total_bytes - plan.code_bytes  # the estimator does not model generated code
    assert abs(est.total_bytes - compiled) <= est_lib.TOLERANCE * compiled, (est.to_dict(), plan.to_dict())
    assert est.flops == pytest.approx(plan.flops, rel=0.10)


def test_sft_lora_config_compiles_with_frozen_base():
    """configs/sft.py:tiny trains LoRA adapters: the frozen base is an argument, not train state."""
    sft = pytest.importorskip("configs.sft")
    config = sft.get_config("tiny")
    config.mesh.data, config.mesh.fsdp, config.mesh.tensor = 1, 2, 2
    plan = aot.compile_plan(config, "v5e:2x2")
    _, mc, notes = aot.plan_model_config(config)
    assert plan.lora and plan.fits and not notes  # vocab from the bundled training tokenizer
    trainer = loop.Trainer(config, mc, est_lib.abstract_mesh(config.mesh, 4))
    state, frozen = trainer.abstract_state(), est_lib._shard_bytes(trainer.frozen_shapes, trainer.frozen_shardings)
    assert nbytes(state.params) < 0.5 * frozen  # adapters only
    assert plan.argument_bytes >= nbytes(state) + frozen
    specs = jax.tree.map(lambda s: s.spec, trainer.param_shardings)
    assert jax.tree.structure(specs) == jax.tree.structure(plan.param_specs)  # the adapters' tree
    assert jax.tree.leaves(specs) == jax.tree.leaves(plan.param_specs)


def test_readme_gpu_commands_as_written():
    """The README's 8xH100 and 64xH100 commands (analytic: no compile) fit, exit 0."""
    readme = open(os.path.join(ROOT, "README.md")).read()
    for args in (["--config", "configs/pretrain.py:llama2_13b", "--gpus", "8xH100",
                  "--config.model.remat_policy=full"],
                 ["--config", "configs/pretrain.py:llama2_70b", "--gpus", "64xH100"]):
        assert "python -m mellama_jax.cli.plan " + " ".join(args) in readme
        out = _plan_cli(*args)
        assert out.returncode == 0, out.stderr[-2000:]
        assert "FITS" in out.stdout and out.stdout.splitlines()[1].startswith(args[3])


def test_topology_sweep_table(tmp_path):
    """--sweep compiles every mesh x remat policy and prints one row each."""
    path = tmp_path / "sweep.json"
    out = _plan_cli("--config", "configs/pretrain.py:tiny", "--topology", "v5e:2x2", "--sweep",
                    "--sweep_tensor=1,2", "--sweep_remat=full,none", f"--json={path}")
    assert out.returncode == 0, out.stderr[-2000:]
    import json
    rows = json.loads(path.read_text())["sweep"]
    assert [(tuple(r["mesh"]), r["remat"]) for r in rows] == [
        ((1, 4, 1), "full"), ((1, 4, 1), "none"), ((1, 2, 2), "full"), ((1, 2, 2), "none")]
    assert all(r["fits"] and r["step_s"] > 0 for r in rows)
    assert "1,2,2" in out.stdout and out.stdout.count("yes") == 4
    readme = open(os.path.join(ROOT, "README.md")).read()
    assert ("python -m mellama_jax.cli.plan --config configs/pretrain.py:tiny --topology v5e:2x2 --sweep "
            "--sweep_tensor=1,2 --sweep_remat=full,none") in readme



LLAMA3_LAYOUT = [  # (config, mesh, remat, micro-batches): what each recipe's docstring names
    ("configs/pretrain.py:llama3_8b", (1, -1, 1), "dots_with_no_batch_dims_saveable", 8),
    ("configs/pretrain.py:llama3_70b", (1, -1, 1), "full", 1),
    ("configs/sft.py:llama3_8b", (1, -1, 1), "dots_with_no_batch_dims_saveable", 8),
    ("configs/sft.py:llama3_70b", (1, -1, 1), "full", 1),
]


@pytest.mark.parametrize("name,mesh,remat,micro_batches", LLAMA3_LAYOUT)
def test_llama3_recipe_settings_are_the_docstring(name, mesh, remat, micro_batches):
    """What the planner chose (BENCHMARKS.md LLaMA-3 table) is what the recipe ships and its
    docstring names: splash attention through auto, the remat policy, micro-batches and mesh."""
    module, c = _recipe(name)
    assert (c.model.attention_impl, c.model.remat_policy, c.train.micro_batches) == ("auto", remat, micro_batches)
    assert (c.mesh.data, c.mesh.fsdp, c.mesh.tensor) == mesh
    assert (c.data.seq_len, c.train.global_batch_size) == (8192, 128)
    doc = " ".join(module._me_llama3.__doc__.split())
    variant = name.split(":")[1]
    assert f"{variant}: a TPU" in doc and remat in doc and f"{micro_batches} micro-batch" in doc


def test_llama3_sft_recipes_fit_their_gpu_clusters():
    """The GPU clusters configs/sft.py's LLaMA-3 docstring names (analytic estimate)."""
    sft = pytest.importorskip("configs.sft")
    doc = " ".join(sft._me_llama3.__doc__.split())
    for args in (["configs/sft.py:llama3_70b", "--gpus", "64xH100"], ["configs/sft.py:llama3_8b", "--gpus", "16xH100"],
                 ["configs/sft.py:llama3_8b", "--gpus", "8xH100", "--config.model.remat_policy=full"]):
        assert " ".join(args[1:]) in doc
        out = _plan_cli("--config", *args)
        assert out.returncode == 0, out.stderr[-2000:]
        assert "FITS" in out.stdout and "attention auto = cudnn on gpu" in out.stdout


def test_llama3_recipes_fit_their_gpu_clusters_as_shipped():
    """The README's LLaMA-3 GPU commands as written (analytic estimate), on the clusters the
    recipes' docstring names: as shipped, and 8B on one node with the full-remat override it names."""
    readme = open(os.path.join(ROOT, "README.md")).read()
    doc = " ".join(pretrain._me_llama3.__doc__.split())
    for variant, cluster, named in (("llama3_8b", ["16xH100"], "two 8xH100 nodes (16 GPUs, --gpus 16xH100"),
                                    ("llama3_8b", ["8xH100", "--config.model.remat_policy=full"],
                                     "--gpus 8xH100 --config.model.remat_policy=full"),
                                    ("llama3_70b", ["64xH100"], "eight 8xH100 nodes (64 GPUs, --gpus 64xH100")):
        args = ["--config", f"configs/pretrain.py:{variant}", "--gpus", *cluster]
        assert named in doc and "python -m mellama_jax.cli.plan " + " ".join(args) in readme
        out = _plan_cli(*args)
        assert out.returncode == 0, out.stderr[-2000:]
        assert "FITS" in out.stdout and "vocab 128256" in out.stdout and "attention auto = cudnn on gpu" in out.stdout


# ------------------------------------------------------- the Me-LLaMA (LLaMA-2) recipes, as shipped
ME_LLAMA_TPU = [  # (config, topology, mesh, remat, micro-batches): what each recipe's docstring names
    ("configs/pretrain.py:llama2_13b", "v5p:2x2x4", {"data": 1, "fsdp": 16, "tensor": 1},
     "dots_with_no_batch_dims_saveable", 8),
    ("configs/pretrain.py:llama2_70b", "v5p:4x4x4", {"data": 1, "fsdp": 64, "tensor": 1}, "full", 1),
    ("configs/sft.py:llama2_13b", "v5p:2x2x4", {"data": 1, "fsdp": 16, "tensor": 1},
     "dots_with_no_batch_dims_saveable", 4),
    ("configs/sft.py:llama2_70b", "v5p:4x4x4", {"data": 1, "fsdp": 64, "tensor": 1}, "full", 1),
]


def _recipe(name: str):
    path, variant = name.split(":")
    module = pretrain if path.endswith("pretrain.py") else pytest.importorskip("configs.sft")
    return module, module.get_config(variant)


@pytest.mark.parametrize("name,topology,mesh,remat,micro_batches", ME_LLAMA_TPU)
def test_me_llama_recipe_settings_are_the_docstrings(name, topology, mesh, remat, micro_batches):
    """The settings the planner chose (README, BENCHMARKS.md) are what the recipe ships and its
    docstring names: the slice, splash attention through attention_impl=auto, the remat policy."""
    module, c = _recipe(name)
    assert (c.model.attention_impl, c.model.remat_policy, c.train.micro_batches) == ("auto", remat, micro_batches)
    assert (c.data.seq_len, c.train.global_batch_size) == ((4096, 256) if module is pretrain else (4096, 128))
    assert (c.mesh.data, c.mesh.fsdp, c.mesh.tensor) == (1, -1, mesh["tensor"])
    doc = " ".join(module._me_llama.__doc__.split())
    assert f"--topology {topology}" in doc and f"fsdp={mesh['fsdp']}" in doc


def test_me_llama_recipes_fit_their_gpu_clusters():
    """The GPU clusters the recipes' docstrings name (analytic estimate): 70B on eight 8xH100 nodes
    as shipped, 13B as shipped on four (pretraining) or two (SFT), and on one node with full remat."""
    sft = pytest.importorskip("configs.sft")
    for module, args in ((pretrain, ["configs/pretrain.py:llama2_70b", "--gpus", "64xH100"]),
                         (pretrain, ["configs/pretrain.py:llama2_13b", "--gpus", "32xH100"]),
                         (pretrain, ["configs/pretrain.py:llama2_13b", "--gpus", "8xH100",
                                     "--config.model.remat_policy=full"]),
                         (sft, ["configs/sft.py:llama2_70b", "--gpus", "64xH100"]),
                         (sft, ["configs/sft.py:llama2_13b", "--gpus", "16xH100"]),
                         (sft, ["configs/sft.py:llama2_13b", "--gpus", "8xH100", "--config.model.remat_policy=full"])):
        assert " ".join(args[1:]) in " ".join(module._me_llama.__doc__.split())
        out = _plan_cli("--config", *args)
        assert out.returncode == 0, out.stderr[-2000:]
        assert "FITS" in out.stdout and "attention auto = cudnn on gpu" in out.stdout


FSDP16, FSDP64 = {"data": 1, "fsdp": 16, "tensor": 1}, {"data": 1, "fsdp": 64, "tensor": 1}
TORUS, MESH = "TPU v5, torus, wraparound x y z)", "TPU v5, no wraparound)"
# (config, topology, mesh, wiring, what else the output names, largest share of HBM): every shipped
# TPU recipe; the margins are the ones each was chosen with (BENCHMARKS.md).
SHIPPED_TPU_PLANS = [
    ("configs/pretrain.py:llama2_13b", "v5p:2x2x4", FSDP16, MESH, ("256 x 4096 tokens",), 0.9),
    ("configs/pretrain.py:llama2_70b", "v5p:4x4x4", FSDP64, TORUS, ("256 x 4096 tokens",), 0.9),
    ("configs/sft.py:llama2_13b", "v5p:2x2x4", FSDP16, MESH, ("128 x 4096 tokens",), 0.9),
    ("configs/sft.py:llama2_70b", "v5p:4x4x4", FSDP64, TORUS, ("128 x 4096 tokens",), 0.9),
    ("configs/pretrain.py:llama3_8b", "v5p:2x2x4", FSDP16, MESH, ("128 x 8192 tokens", "vocab 128256"), 0.7),
    ("configs/pretrain.py:llama3_70b", "v5p:4x4x4", FSDP64, TORUS, ("128 x 8192 tokens", "vocab 128256"), 0.7),
    ("configs/sft.py:llama3_8b", "v5p:2x2x4", FSDP16, MESH, ("128 x 8192 tokens", "vocab 128256"), 0.75),
    ("configs/sft.py:llama3_70b", "v5p:4x4x4", FSDP64, TORUS, ("128 x 8192 tokens", "vocab 128256"), 0.75),
]


@pytest.mark.slow
@pytest.mark.parametrize("name,topology,mesh,wiring,names,margin", SHIPPED_TPU_PLANS)
def test_recipes_fit_as_shipped(name, topology, mesh, wiring, names, margin, tmp_path):
    """The README's planner commands for every shipped TPU recipe, as written (no flag but
    --topology): the step compiles for the slice, wired as the real one is, that the recipe's
    docstring names, with splash attention, and fits with its margin (1 to 8 minutes each here)."""
    module, _ = _recipe(name)
    doc = " ".join((module._me_llama3 if "llama3" in name else module._me_llama).__doc__.split())
    assert f"--topology {topology}" in doc
    args = ["--config", name, "--topology", topology]
    assert "python -m mellama_jax.cli.plan " + " ".join(args) in open(os.path.join(ROOT, "README.md")).read()
    out = _plan_cli(*args, f"--json={tmp_path / 'plan.json'}")
    assert out.returncode == 0, out.stderr[-2000:]
    for text in ("FITS", "attention auto = splash on tpu", wiring, *names):
        assert text in out.stdout, text
    import json
    saved = json.loads((tmp_path / "plan.json").read_text())["aot"]
    assert saved["fits"] and saved["mesh"] == mesh and saved["lora"] == ("sft.py" in name)
    assert saved["total_bytes"] <= margin * 95 * 2**30
