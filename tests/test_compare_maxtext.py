"""benchmarks/compare_maxtext.py without MaxText: the shared analysis of a compiled program
(plan.aot.analyze_compiled, on a CPU compile of a scanned matmul), one program's summary, the
side-by-side table and the issue's targets."""
from __future__ import annotations

import os
import sys
from types import SimpleNamespace as NS

import jax
import jax.numpy as jnp
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "benchmarks"))
sys.path.insert(0, REPO)

import compare_maxtext as cm  # noqa: E402
from mellama_jax.plan import aot, hlo  # noqa: E402
from mellama_jax.plan.hardware import Chip  # noqa: E402

# A made-up chip: 1e12 B/s of HBM; its peak FLOP/s come from the table entry its device kind names.
CHIP = Chip("test", "h100", 16 * 2 ** 30, 1e12, 1e11)
STEPS, M, K, N = 5, 64, 128, 32


def _compiled_scan():
    def f(x, w):
        def body(c, wi):
            return jnp.tanh(c @ wi), None
        return jax.lax.scan(body, x, w)[0].sum()
    x = jax.ShapeDtypeStruct((M, K), jnp.float32)
    w = jax.ShapeDtypeStruct((STEPS, K, K), jnp.float32)
    return jax.jit(f).lower(x, w).compile()


def test_analyze_compiled_counts_every_loop_iteration():
    cost = aot.analyze_compiled(_compiled_scan(), 1, CHIP)
    want = STEPS * 2.0 * M * K * K
    assert cost.flops == pytest.approx(want, rel=0.02)  # XLA alone counts the scan body once
    assert cost.xla_flops < 0.5 * want
    # HBM bytes: the per-instruction count with the trip count applied; each iteration reads its
    # [K, K] layer of the stacked weights at least once
    t = cost.traffic
    assert cost.hbm_traffic_bytes == t.bytes > t.bytes_once > 0
    assert t.bytes >= STEPS * K * K * 4
    r = cost.roofline
    assert r.compute_s == pytest.approx(cost.flops / CHIP.peak_flops)
    assert r.hbm_s == pytest.approx(cost.hbm_traffic_bytes / 1e12)
    assert r.step_s == max(r.compute_s, r.hbm_s, r.collective_s)


def _summary(program: str, step_s: float, by_kind: dict, total_gib: float = 10.0) -> dict:
    case = cm.CASES["13b"]
    mem = NS(argument_size_in_bytes=int(2 * cm.GIB), output_size_in_bytes=int(2 * cm.GIB),
             alias_size_in_bytes=int(2 * cm.GIB), temp_size_in_bytes=int((total_gib - 3) * cm.GIB),
             generated_code_size_in_bytes=int(cm.GIB))
    roofline = aot.Roofline(compute_s=step_s, hbm_s=step_s / 2, collective_s=0.1)
    traffic = sum(by_kind.values())
    t = hlo.Traffic(bytes_once=traffic / 40, bytes=traffic, by_scope={"mlp/mul": 1.0},
                    outside_loops=0.0, by_kind=by_kind)
    cost = aot.CompiledCost(xla_flops=1e14, flops=2e15, hbm_traffic_bytes=traffic,
                            stats=NS(kernels=[NS(name="splash_mha_fwd_x")], kernel_flops=1e13,
                                     collectives=[]), roofline=roofline,
                            xla_bytes=traffic / 50, traffic=t)
    return cm.summarize(program, case, mem, cost, model_flops=1.6e16 * step_s, peak_flops=1e15,
                        hbm_capacity=95 * cm.GIB, compile_s=1.0)


def test_summary_memory_mfu_and_table():
    s = _summary("ours", 2.0, {"matmul fusions": 4.0 * cm.GIB})
    assert s["total_bytes"] == 10 * cm.GIB  # args + outputs - aliased + temp + code
    assert s["bound"] == "compute" and s["step_s"] == 2.0
    assert s["mfu"] == pytest.approx(1.6e16 * 2.0 / (16 * 1e15 * 2.0))  # 16 chips
    rows = cm.table_rows([s])
    # executed PFLOP is for the whole step: per-chip FLOPs x 16 chips; loops once, the count is
    # 50/40 of XLA's bytes here
    assert rows == [("13b", "ours", "10.0", "4", "1.25", "32.0", "2.00", "compute", "100.0%")]
    text = cm.format_table([s], markdown=True)
    assert text.splitlines()[0].startswith("| case | program | GiB/chip")
    assert text.splitlines()[1] == "|---|---|---|---|---|---|---|---|---|"


def test_targets_and_where_the_bytes_differ():
    maxtext = _summary("maxtext", 15.3, {"matmul fusions": 80 * cm.GIB, "slicing fusions": 20 * cm.GIB})
    t = cm.targets(_summary("ours", 13.6, {"matmul fusions": 88 * cm.GIB, "slicing fusions": 20 * cm.GIB}),
                   maxtext)
    assert t["step_bound_le_maxtext"] and t["hbm_within_tolerance"]
    assert t["hbm_traffic_ratio"] == pytest.approx(1.08)
    ours = _summary("ours", 15.4, {"matmul fusions": 85 * cm.GIB, "slicing fusions": 40 * cm.GIB,
                                   "collectives": 1 * cm.GIB})
    t = cm.targets(ours, maxtext)
    assert not t["step_bound_le_maxtext"] and not t["hbm_within_tolerance"]
    assert t["hbm_traffic_ratio"] == pytest.approx(1.26)
    assert "NOT met" in cm.format_targets("13b", t)
    diffs = cm.kind_differences(ours, maxtext)
    assert [d[0] for d in diffs] == ["slicing fusions", "matmul fusions", "collectives"]
    assert "slicing fusions" in cm.format_differences("13b", ours, maxtext).splitlines()[1]
    # the same compute-bound FLOPs but for a few elementwise ops: equal, not slower
    tie = cm.targets(_summary("ours", 19.4475224, {"matmul fusions": 100 * cm.GIB}),
                     _summary("maxtext", 19.4475220, {"matmul fusions": 100 * cm.GIB}))
    assert tie["step_bound_le_maxtext"]
    assert not cm.targets(_summary("ours", 19.46, {"m": 1.0}), _summary("maxtext", 19.45, {"m": 1.0}))[
        "step_bound_le_maxtext"]


def test_parse_cases():
    assert [c.name for c in cm.parse_cases("70b, 13b")] == ["70b", "13b"]
    assert cm.CASES["70b"].chips == 64 and cm.CASES["13b"].maxtext_topology == "v5p-32"
    assert cm.CASES["13b"].programs == ("maxtext", "ours", "ours_full_remat", "ours_save_attention_out")
    assert cm.CASES["13b"].settings("ours_full_remat") == {"model.remat_policy": "full",
                                                            "train.micro_batches": 2}
    assert cm.CASES["13b"].settings("ours_save_attention_out") == {"model.remat_policy": "save_attention_out",
                                                                    "train.micro_batches": 2}
    assert cm.CASES["13b"].settings("ours") == {} and cm.CASES["70b"].programs == ("maxtext", "ours")
    with pytest.raises(ValueError, match="--cases='7b'"):
        cm.parse_cases("7b")
    with pytest.raises(ValueError):
        cm.parse_cases("")


def test_wiring_mismatch_is_reported():
    # Our planner once described v5p-128 without the wraparound links MaxText's (and the real
    # slice) has; libtpu then lowered the weight gathers differently. The driver warns on it.
    torus = {"wrap": [True, True, True], "chip_config_name": "megacore"}
    mesh = {"wrap": [False, False, False], "chip_config_name": "megacore"}
    same = [{"case": "70b", "program": "maxtext", "wiring": torus},
            {"case": "70b", "program": "ours", "wiring": torus}]
    assert cm.wiring_mismatches(same) == []
    differ = same[:1] + [{"case": "70b", "program": "ours", "wiring": mesh}]
    (line,) = cm.wiring_mismatches(differ)
    assert line.startswith("70b: compiled for different slice wirings")
