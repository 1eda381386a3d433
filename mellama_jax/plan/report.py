"""Text reports of plans: one plan in detail, or a sweep as one table."""
from __future__ import annotations

from typing import Any

from mellama_jax.model.attention import resolve_attention_impl
from mellama_jax.plan.aot import AotPlan
from mellama_jax.plan.estimate import Estimate

GIB = 1024 ** 3


def gib(n: float) -> str:
    return f"{n / GIB:.2f}"


def _si(x: float, unit: str = "") -> str:
    for scale, prefix in ((1e18, "E"), (1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return f"{x / scale:.2f} {prefix}{unit}"
    return f"{x:.2f} {unit}"


def _seconds(s: float | None) -> str:
    if s is None:
        return "-"
    return f"{s * 1e3:.1f} ms" if s < 1 else f"{s:.2f} s"


def attention_kernel(mc: Any, platform: str | None) -> str:
    """The configured attention_impl, and for "auto" the kernel it is on `platform`."""
    if mc.attention_impl != "auto" or platform is None:
        return mc.attention_impl
    return f"auto = {resolve_attention_impl('auto', mc.dtype, mc.head_dim, platform)} on {platform}"


def model_line(mc: Any, platform: str | None = None) -> str:
    return (f"model: {mc.num_params() / 1e9:.2f}B params, {mc.num_hidden_layers} layers x "
            f"{mc.hidden_size}, heads {mc.num_attention_heads}/{mc.num_key_value_heads} kv, "
            f"vocab {mc.vocab_size}, {mc.dtype} compute / {mc.param_dtype} params, "
            f"remat {mc.remat_policy}, attention {attention_kernel(mc, platform)}")


def batch_line(gbs: int, seq: int, micro: int, mesh: dict, lora: bool) -> str:
    mesh_s = " ".join(f"{k}={v}" for k, v in mesh.items())
    return (f"batch: {gbs} x {seq} tokens ({micro} micro-batch{'es' if micro > 1 else ''}); "
            f"mesh {mesh_s}" + ("; LoRA: adapters trained, base frozen" if lora else ""))


def _loop_label(op_name: str, trips: int, layers: int) -> str:
    """fwd/bwd for the model's own loops: those named after it, and the layer scans (whose while
    op can carry another op's name, e.g. the splash kernel's, after XLA merges metadata)."""
    if "Llama" in op_name or trips == layers:
        return f"{'bwd' if 'transpose' in op_name else 'fwd'} x{trips}"
    return f"x{trips}"


def fit_line(total: float, hbm: float, fits: bool) -> str:
    pct = 100.0 * total / hbm if hbm else 0.0
    return (f"  total          {gib(total):>9} of {gib(hbm)} GiB HBM per device ({pct:.0f}%)  "
            + ("FITS" if fits else "DOES NOT FIT"))


def format_aot(plan: AotPlan, est: Estimate | None = None) -> str:
    wiring = f", {plan.links}" if plan.links else ""
    lines = [f"TPU {plan.topology}: {plan.num_devices} devices ({plan.device_kind}{wiring}), "
             f"compiled ahead of time in {plan.compile_s:.0f} s",
             model_line(plan.model_config, "tpu"),
             batch_line(plan.global_batch_size, plan.seq_len, plan.micro_batches, plan.mesh, plan.lora)]
    lines += [f"note: {n}" for n in plan.notes]
    if plan.oom_message:
        lines += ["memory per device (XLA):",
                  f"  the TPU compiler refused the program: {plan.oom_message}",
                  f"  DOES NOT FIT in {gib(plan.hbm_bytes)} GiB HBM per device"]
    else:
        lines += [
            "memory per device (XLA memory analysis, GiB):",
            f"  arguments      {gib(plan.argument_bytes):>9}   (train state + batch shard)",
            f"  outputs        {gib(plan.output_bytes):>9}",
            f"  aliased       -{gib(plan.alias_bytes):>8}   (donated state buffers reused for outputs)",
            f"  temporaries    {gib(plan.temp_bytes):>9}   (activations, gradients, all-gathered weights)",
            f"  code           {gib(plan.code_bytes):>9}",
            fit_line(plan.total_bytes, plan.hbm_bytes, plan.fits),
            "compute per device and step:",
            f"  XLA cost analysis      {_si(plan.xla_flops, 'FLOP')}  (counts each loop body once)",
            f"  executed (HLO, loops)  {_si(plan.flops, 'FLOP')}  loops: "
            + ", ".join(_loop_label(n, t, plan.model_config.num_hidden_layers) for n, t in plan.loops),
            f"  model (6N + 12LHS)     {_si(plan.model_flops_per_step / plan.num_devices, 'FLOP')}"]
        for k in plan.kernels:
            lines.append(f"  Pallas {k.name:<36} x{k.count:<4} {_si(k.count * k.flops, 'FLOP')}, "
                         f"{gib(k.count * k.bytes)} GiB in/out (counted from shapes: XLA sees none)")
        lines += ["collectives per device and step (loop trip counts applied):"]
        for c in plan.collectives:
            lines.append(f"  {c.kind:<19} x{c.count:<6} {gib(c.bytes):>9} GiB results, "
                         f"{gib(c.wire_bytes)} GiB sent (groups of {'/'.join(map(str, c.group_sizes))})")
        r = plan.roofline
        lines += [
            f"roofline (peak {plan.peak_flops / 1e12:.0f} TFLOP/s per device): compute {_seconds(r.compute_s)}, "
            f"HBM {_seconds(r.hbm_s)}, collectives {_seconds(r.collective_s)}",
            f"  step >= {_seconds(r.step_s)} ({r.bound}-bound) -> <= "
            f"{plan.tokens_per_step / r.step_s:,.0f} tokens/s, MFU <= {plan.mfu:.1%}"]
        if plan.mfu > 1 and plan.lora:
            lines.append("  (MFU over 100%: 6N counts the weight gradients LoRA never computes)")
        elif plan.mfu > 1:  # possible: see AotPlan.causal_mfu
            lines.append(f"  (MFU over 100%: 12LHS counts non-causal attention, the kernel skips the "
                         f"masked blocks; counting causal attention, 6N + 6LHS: MFU <= {plan.causal_mfu:.1%})")
    if est is not None:
        ratio = (f" = {est.total_bytes / (plan.total_bytes - plan.code_bytes):.2f} x compiled "
                 "(without code)") if not plan.oom_message else ""
        lines.append(f"analytic estimate on the same mesh: {gib(est.total_bytes)} GiB per device{ratio}")
    return "\n".join(lines)


def format_estimate(est: Estimate, mc: Any, gbs: int, micro: int, lora: bool, notes: list) -> str:
    lines = [f"{est.cluster}: analytic estimate (no compile; see mellama_jax/plan/estimate.py)",
             model_line(mc, "gpu"), batch_line(gbs, est.seq_len, micro, est.mesh, lora)]
    lines += [f"note: {n}" for n in notes]
    lines += [
        f"memory per device (GiB), {est.rows_per_device:g} rows x {est.seq_len} tokens per micro-batch:",
        f"  params         {gib(est.params_bytes):>9}",
        f"  optimizer      {gib(est.optimizer_bytes):>9}",
    ]
    if est.frozen_bytes:
        lines.append(f"  frozen base    {gib(est.frozen_bytes):>9}")
    lines += [
        f"  gradients      {gib(est.grads_bytes):>9}",
        f"  activations    {gib(est.saved_activation_bytes):>9}   (kept for backward, remat {est.remat_policy})",
        f"  transient      {gib(est.transient_bytes):>9}   (one layer's backward or the loss; gathered weights)",
        fit_line(est.total_bytes, est.hbm_bytes, est.fits),
        f"roofline (peak {est.peak_flops / 1e12:.0f} TFLOP/s per device): compute {_seconds(est.compute_s)} "
        f"({_si(est.flops, 'FLOP')} executed), collectives {_seconds(est.collective_s)}",
        f"  step >= {_seconds(est.step_s)} -> <= {gbs * est.seq_len / est.step_s:,.0f} tokens/s, "
        f"MFU <= {est.mfu:.1%}"]
    return "\n".join(lines)


def format_sweep(title: str, rows: list[dict]) -> str:
    """rows: {mesh, remat, fits, total, hbm, temp, step_s, mfu, error}."""
    head = f"{'mesh (data,fsdp,tensor)':<24} {'remat':<33} {'fits':<5} {'GiB/dev':>8} {'temp':>7} {'step >=':>10} {'MFU <=':>6}"
    out = [title, head, "-" * len(head)]
    for r in rows:
        mesh = ",".join(str(v) for v in r["mesh"]) if isinstance(r["mesh"], (list, tuple)) else str(r["mesh"])
        if r.get("error"):
            out.append(f"{mesh:<24} {r['remat']:<33} {'-':<5} {r['error']}")
            continue
        total = gib(r["total"]) if r.get("total") else ">HBM"
        temp = gib(r["temp"]) if r.get("temp") is not None else "-"
        mfu = f"{r['mfu']:.1%}" if r.get("mfu") else "-"
        out.append(f"{mesh:<24} {r['remat']:<33} {'yes' if r['fits'] else 'NO':<5} {total:>8} "
                   f"{temp:>7} {_seconds(r.get('step_s')):>10} {mfu:>6}")
    return "\n".join(out)
