"""The planner's HLO reader on synthetic module text: multi-line Pallas custom calls, and the FLOPs and
bytes it counts for splash attention kernels (which XLA's cost analysis cannot see into).

No libtpu needed: the text is written here, shaped like what the TPU compiler prints (see a splash
train step: `tests/test_attention_kernels.py::test_auto_compiles_splash_for_tpu_and_writes_no_scores`).
"""
from __future__ import annotations

import dataclasses

import pytest

from mellama_jax.plan import hlo


def splash_call(name: str, results: str, operands: str, metadata: str) -> str:
    """One tpu_custom_call as the TPU compiler prints it: its kernel_metadata spans three lines, the
    last beginning with `}}`, and its backend_config sits on that last line."""
    return (f'  %{name}.1 = {results} custom-call(%p0, %p1), custom_call_target="tpu_custom_call", '
            f"operand_layout_constraints={{{operands}}}, frontend_attributes={{kernel_metadata={{\n"
            f'"xprof_metadata":"{{{metadata}}}"\n'
            f'}}}}, metadata={{op_name="jit(loss)/while/body/attention/{name}/pallas_call"}}, '
            'backend_config={"custom_call_config":{"body":"TUzvUgFN","needs_layout_passes":true},'
            '"aliasing_operands":{"lists":[]}}')


BLOCKS = r'\"block_q\": 128, \"block_kv\": 128, \"block_kv_compute\": 128, \"use_fused_bwd_kernel\": false'
# b=2, heads=4, kv heads=2, t=s=512, d=64
FWD = splash_call("splash_mha_fwd_segmented_residuals",
                  "(f32[128,128]{1,0}, bf16[2,4,512,64]{3,2,1,0}, f32[2,4,512,128]{3,2,1,0})",
                  "s8[1,4,4]{2,1,0}, bf16[2,4,512,64]{3,2,1,0}, bf16[2,2,512,64]{3,2,1,0}, "
                  "bf16[2,2,512,64]{3,2,1,0}, s32[512,128]{1,0}, s32[8,512]{1,0}", BLOCKS)
DQ = splash_call("splash_mha_dq_segmented_no_residuals", "(f32[128,64]{1,0}, bf16[2,4,512,64]{3,2,1,0})",
                 "bf16[2,4,512,64]{3,2,1,0}, bf16[2,2,512,64]{3,2,1,0}, bf16[2,2,512,64]{3,2,1,0}, "
                 "f32[2,4,1,512]{3,2,1,0}, bf16[2,4,512,64]{3,2,1,0}, f32[2,4,1,512]{3,2,1,0}",
                 r'\"block_q_dq\": 256, \"block_kv_dq\": 128')
DKV = splash_call("splash_mha_dkv_segmented_no_residuals",
                  "(f32[128,64]{1,0}, bf16[2,2,512,64]{3,2,1,0}, bf16[2,2,512,64]{3,2,1,0})",
                  "bf16[2,4,512,64]{3,2,1,0}, bf16[2,2,512,64]{3,2,1,0}, bf16[2,2,512,64]{3,2,1,0}, "
                  "f32[2,4,8,512]{3,2,1,0}, bf16[2,4,512,64]{3,2,1,0}, f32[2,4,8,512]{3,2,1,0}",
                  r'\"block_q_dkv\": 128, \"block_kv_dkv\": 128, \"block_kv_dkv_compute\": 128')


def module(*calls: str) -> str:
    """A layer loop of 3 trips whose body holds the kernels, then a matmul after them."""
    body = "\n".join(calls)
    return f"""HloModule jit_loss

%body (p: (s32[], f32[8,8])) -> (s32[], f32[8,8]) {{
  %p = (s32[], f32[8,8]{{1,0}}) parameter(0)
  %i = s32[] get-tuple-element(%p), index=0
  %x = f32[8,8]{{1,0}} get-tuple-element(%p), index=1
{body}
  %after = f32[8,8]{{1,0}} dot(%x, %x), lhs_contracting_dims={{1}}, rhs_contracting_dims={{0}}
  %one = s32[] constant(1)
  %next = s32[] add(%i, %one)
  ROOT %out = (s32[], f32[8,8]{{1,0}}) tuple(%next, %after)
}}

%cond (p: (s32[], f32[8,8])) -> pred[] {{
  %p = (s32[], f32[8,8]{{1,0}}) parameter(0)
  %i = s32[] get-tuple-element(%p), index=0
  %n = s32[] constant(3)
  ROOT %lt = pred[] compare(%i, %n), direction=LT
}}

ENTRY %main (x: f32[8,8]) -> f32[8,8] {{
  %x = f32[8,8]{{1,0}} parameter(0)
  %zero = s32[] constant(0)
  %init = (s32[], f32[8,8]{{1,0}}) tuple(%zero, %x)
  %loop = (s32[], f32[8,8]{{1,0}}) while(%init), condition=%cond, body=%body
  ROOT %res = f32[8,8]{{1,0}} get-tuple-element(%loop), index=1
}}
"""


def test_multi_line_custom_call_does_not_end_the_computation():
    text = module(FWD)
    assert any(line.startswith("}}") for line in text.splitlines())  # the trap is in the text
    comps, entry = hlo.parse_module(text)
    assert entry == "main"
    body = {i.name: i for i in comps["body"]}
    # the instructions after the kernel are still in the body, and the kernel is one instruction
    assert {"after", "next", "out"} <= set(body)
    call = body["splash_mha_fwd_segmented_residuals.1"]
    assert call.opcode == "custom-call" and "backend_config" in call.attrs and "xprof_metadata" in call.attrs
    stats = hlo.analyze(text, 1)
    assert stats.loops and stats.loops[0][1] == 3
    assert stats.dot_flops == 3 * 2 * 8 * 8 * 8  # the matmul after the kernel counted, 3 trips


def test_logical_lines_keep_brackets_inside_strings():
    text = '  %a = f32[1]{0} custom-call(), backend_config="{{(" \n  %b = f32[1]{0} negate(%a)'
    assert list(hlo.logical_lines(text)) == text.splitlines()


def test_causal_block_fraction():
    assert hlo.causal_block_fraction(512, 512, 512) == 1.0
    assert hlo.causal_block_fraction(512, 128, 128) == pytest.approx(10 / 16)  # (n + 1) / 2n, n = 4
    assert hlo.causal_block_fraction(512, 256, 128) == pytest.approx((2 + 4) / 8)


def test_splash_kernel_flops_and_bytes_from_shapes():
    stats = hlo.analyze(module(FWD, DQ, DKV), 1)
    by_name = {k.name: k for k in stats.kernels}
    assert set(by_name) == {"splash_mha_fwd_segmented_residuals", "splash_mha_dq_segmented_no_residuals",
                            "splash_mha_dkv_segmented_no_residuals"}
    assert all(k.count == 3 for k in stats.kernels)  # inside the 3-trip layer loop
    bhtsd = 2 * 4 * 512 * 512 * 64  # b * heads * t * s * d
    fwd, dq, dkv = (by_name[n] for n in sorted(by_name, key=lambda n: ("fwd" not in n, "dkv" in n)))
    assert fwd.flops == 4 * bhtsd * 10 / 16  # two matmuls, 4x4 blocks of 128: 10 of 16 computed
    assert dq.flops == 6 * bhtsd * (2 + 4) / 8  # three matmuls, 256 x 128 blocks
    assert dkv.flops == 8 * bhtsd * 10 / 16  # four matmuls
    # operands + results, read or written once
    q, kv = 2 * 4 * 512 * 64 * 2, 2 * 2 * 512 * 64 * 2
    assert fwd.bytes == (1 * 4 * 4 + q + 2 * kv + 512 * 128 * 4 + 8 * 512 * 4) + (128 * 128 * 4 + q + 2 * 4 * 512 * 128 * 4)
    assert stats.kernel_flops == 3 * (fwd.flops + dq.flops + dkv.flops)
    assert stats.dot_flops == 3 * 2 * 8 * 8 * 8  # kernels are not matmul instructions


def test_causal_kernel_mfu_over_100_percent_is_the_noncausal_convention():
    """LLaMA-3 8B at 8,192 tokens, nothing recomputed (the splash forward once, its residuals kept;
    dq, dkv: 9 matmuls on 53% of the 512-blocks): executed FLOPs are under the 6N + 12LHS model count
    (non-causal), so a compute-bound roofline says MFU <= 104.7%, as the planner printed for it.
    The plan says why and gives the causal count's MFU, which the kernel's FLOPs cannot exceed."""
    from mellama_jax.model.presets import get_preset
    from mellama_jax.plan import aot, report
    from mellama_jax.train import metrics

    mc, seq, tokens, chip = get_preset("llama3_8b"), 8192, 128 * 8192, 459e12
    attn_unit = 2 * mc.num_hidden_layers * mc.num_attention_heads * mc.head_dim * seq  # per matmul, token
    executed = (6 * metrics.matmul_params(mc) + 9 * attn_unit * hlo.causal_block_fraction(seq, 512, 512)) * tokens
    plan = aot.AotPlan(
        topology="v5p:2x2x4", device_kind="TPU v5", num_devices=16, mesh={"data": 1, "fsdp": 16, "tensor": 1},
        model_config=mc, seq_len=seq, global_batch_size=128, micro_batches=8, lora=False, argument_bytes=1,
        output_bytes=1, alias_bytes=1, temp_bytes=1, code_bytes=0, hbm_bytes=95 << 30, xla_flops=1.0,
        flops=executed / 16, hbm_traffic_bytes=1.0, model_flops_per_step=metrics.flops_per_token(mc, seq) * tokens,
        peak_flops=chip, loops=[], collectives=[], roofline=aot.Roofline(executed / 16 / chip, 1.0, 1.0),
        compile_s=1.0, notes=[])
    assert plan.mfu == pytest.approx(1.047, abs=0.001)
    assert metrics.flops_per_token(mc, seq, causal=True) * tokens <= executed  # the kernel does at least that
    assert plan.causal_mfu == pytest.approx(0.931, abs=0.001) and plan.to_dict()["causal_mfu"] == plan.causal_mfu
    text = report.format_aot(plan)
    assert "MFU <= 104.7%" in text and "12LHS counts non-causal attention" in text and "MFU <= 93.1%)" in text
    under = dataclasses.replace(plan, model_flops_per_step=executed)  # MFU 100%: no note
    assert "non-causal" not in report.format_aot(under)
    lora = report.format_aot(dataclasses.replace(plan, lora=True))  # over 100% for another reason
    assert "weight gradients LoRA never computes" in lora and "non-causal" not in lora


def test_other_pallas_kernels_count_bytes_not_flops():
    other = FWD.replace("splash_mha_fwd_segmented_residuals", "my_kernel")
    (kernel,) = hlo.analyze(module(other), 1).kernels
    assert kernel.name == "my_kernel" and kernel.flops == 0.0 and kernel.bytes > 0


# A layer loop of 4 trips over a stacked bf16[4,64,128] array (16 KiB a layer, 64 KiB in all): each
# trip one fusion reads layer i (parameters declared out of order, as the TPU compiler prints them)
# plus a f32[64,128] carry and writes a f32[64,128]; one fusion writes a bf16[64,128] layer into a
# stacked buffer in place (root: a bitcast of the dynamic-update-slice). After the loop, an add of
# two f32[64,128] runs once.
TRAFFIC = """HloModule jit_step

%slice_fused (param_1.1: s32[], param_0.1: bf16[4,64,128], param_2.1: f32[64,128]) -> f32[64,128] {
  %param_0.1 = bf16[4,64,128]{2,1,0} parameter(0)
  %param_1.1 = s32[] parameter(1)
  %zero.1 = s32[] constant(0)
  %ds = bf16[1,64,128]{2,1,0} dynamic-slice(%param_0.1, %param_1.1, %zero.1, %zero.1), dynamic_slice_sizes={1,64,128}
  %bc = bf16[64,128]{1,0} bitcast(%ds)
  %cv = f32[64,128]{1,0} convert(%bc)
  %param_2.1 = f32[64,128]{1,0} parameter(2)
  ROOT %m = f32[64,128]{1,0} multiply(%cv, %param_2.1)
}

%dus_fused (param_0.2: bf16[4,64,128], param_1.2: f32[64,128], param_2.2: s32[]) -> bf16[4,8192] {
  %param_0.2 = bf16[4,64,128]{2,1,0} parameter(0)
  %param_1.2 = f32[64,128]{1,0} parameter(1)
  %cv.2 = bf16[64,128]{1,0} convert(%param_1.2)
  %up = bf16[1,64,128]{2,1,0} bitcast(%cv.2)
  %param_2.2 = s32[] parameter(2)
  %zero.2 = s32[] constant(0)
  %dus = bf16[4,64,128]{2,1,0} dynamic-update-slice(%param_0.2, %up, %param_2.2, %zero.2, %zero.2)
  ROOT %flat = bf16[4,8192]{1,0} bitcast(%dus)
}

%body (p: (s32[], f32[64,128], bf16[4,64,128], bf16[4,8192])) -> (s32[], f32[64,128], bf16[4,64,128], bf16[4,8192]) {
  %p = (s32[], f32[64,128]{1,0}, bf16[4,64,128]{2,1,0}, bf16[4,8192]{1,0}) parameter(0)
  %i = s32[] get-tuple-element(%p), index=0
  %x = f32[64,128]{1,0} get-tuple-element(%p), index=1
  %w = bf16[4,64,128]{2,1,0} get-tuple-element(%p), index=2
  %acc = bf16[4,8192]{1,0} get-tuple-element(%p), index=3
  %y = f32[64,128]{1,0} fusion(%w, %i, %x), kind=kLoop, calls=%slice_fused, metadata={op_name="jit(step)/while/body/layers/mlp/mul"}
  %accb = bf16[4,64,128]{2,1,0} bitcast(%acc)
  %acc2 = bf16[4,8192]{1,0} fusion(%accb, %y, %i), kind=kLoop, calls=%dus_fused, metadata={op_name="jit(step)/while/body/layers/stack"}
  %one = s32[] constant(1)
  %next = s32[] add(%i, %one)
  ROOT %out = (s32[], f32[64,128]{1,0}, bf16[4,64,128]{2,1,0}, bf16[4,8192]{1,0}) tuple(%next, %y, %w, %acc2)
}

%cond (p: (s32[], f32[64,128], bf16[4,64,128], bf16[4,8192])) -> pred[] {
  %p = (s32[], f32[64,128]{1,0}, bf16[4,64,128]{2,1,0}, bf16[4,8192]{1,0}) parameter(0)
  %i = s32[] get-tuple-element(%p), index=0
  %n = s32[] constant(4)
  ROOT %lt = pred[] compare(%i, %n), direction=LT
}

ENTRY %main (x: f32[64,128], w: bf16[4,64,128]) -> f32[64,128] {
  %x = f32[64,128]{1,0} parameter(0)
  %w = bf16[4,64,128]{2,1,0} parameter(1)
  %acc = bf16[4,8192]{1,0} custom-call(), custom_call_target="AllocateBuffer"
  %zero = s32[] constant(0)
  %init = (s32[], f32[64,128]{1,0}, bf16[4,64,128]{2,1,0}, bf16[4,8192]{1,0}) tuple(%zero, %x, %w, %acc)
  %loop = (s32[], f32[64,128]{1,0}, bf16[4,64,128]{2,1,0}, bf16[4,8192]{1,0}) while(%init), condition=%cond, body=%body
  %y = f32[64,128]{1,0} get-tuple-element(%loop), index=1
  ROOT %sum = f32[64,128]{1,0} add(%y, %x), metadata={op_name="jit(step)/optimizer/add"}
}
"""


def test_traffic_counts_slices_in_place_updates_and_trip_counts():
    f32, bf16 = 64 * 128 * 4, 64 * 128 * 2  # one f32[64,128], one bf16 layer
    # slice fusion: reads layer i (not the whole stack), the carry and the s32 index; writes f32
    slice_fusion = bf16 + f32 + 4 + f32
    # in-place update: reads the f32 update and the index, writes one bf16 layer (not the stack)
    dus_fusion = f32 + 4 + bf16
    counter = 3 * 4  # i + 1: two s32 read, one written
    outside = 3 * f32  # the add after the loop (libtpu's AllocateBuffer of the stack moves nothing)
    t = hlo.traffic(TRAFFIC)
    assert t.bytes_once == slice_fusion + dus_fusion + counter + outside
    assert t.bytes == 4 * (slice_fusion + dus_fusion + counter) + outside
    assert t.outside_loops == outside
    assert t.by_scope["layers/mlp/mul"] == 4 * slice_fusion
    assert t.by_scope["layers/stack"] == 4 * dus_fusion
    assert t.by_scope["optimizer/add"] == outside
    assert t.by_kind == {"slicing fusions": 4 * (slice_fusion + dus_fusion), "add": outside + 4 * counter}


NESTED = """HloModule jit_step

%inner (p0: bf16[4,64,128], p1: s32[]) -> bf16[64,128] {
  %p0 = bf16[4,64,128]{2,1,0} parameter(0)
  %p1 = s32[] parameter(1)
  %z = s32[] constant(0)
  %ds = bf16[1,64,128]{2,1,0} dynamic-slice(%p0, %p1, %z, %z), dynamic_slice_sizes={1,64,128}
  ROOT %bc = bf16[64,128]{1,0} bitcast(%ds)
}

%outer (q0: bf16[4,64,128], q1: s32[], q2: bf16[128,32]) -> f32[64,32] {
  %q0 = bf16[4,64,128]{2,1,0} parameter(0)
  %q1 = s32[] parameter(1)
  %q2 = bf16[128,32]{1,0} parameter(2)
  %f = bf16[64,128]{1,0} fusion(%q0, %q1), kind=kLoop, calls=%inner
  ROOT %d = f32[64,32]{1,0} dot(%f, %q2), lhs_contracting_dims={1}, rhs_contracting_dims={0}
}

ENTRY %main (w: bf16[4,64,128], i: s32[], k: bf16[128,32]) -> f32[64,32] {
  %w = bf16[4,64,128]{2,1,0} parameter(0)
  %i = s32[] parameter(1)
  %k = bf16[128,32]{1,0} parameter(2)
  ROOT %y = f32[64,32]{1,0} fusion(%w, %i, %k), kind=kOutput, calls=%outer
}
"""


def test_traffic_follows_a_slice_into_a_nested_fusion():
    """libtpu nests the loop fusion that slices one layer of a stacked array inside the matmul's
    output fusion: the matmul reads that layer, not the stack (the 70B step read 2x XLA's bytes
    before this was followed)."""
    layer, index, rhs, out = 64 * 128 * 2, 4, 128 * 32 * 2, 64 * 32 * 4
    assert hlo.traffic(NESTED).bytes == layer + index + rhs + out
