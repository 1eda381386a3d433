"""Where the CPU train step's time goes: the project's compiled step vs transformers + PyTorch eager.

    XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1" JAX_PLATFORMS=cpu \\
        python benchmarks/profile_train_step.py --preset small --batch 8 --seq_len 128 --threads 1

Same shapes and weights on both sides (the project's init exported with compare_torch.to_hf), AdamW
with clipping, float32, one device. Prints:

1. phases: forward+loss, forward+backward, full step (median ms of --steps timed runs after a warm-up),
   for the project (jitted pieces of train/step.py's loss) and for PyTorch eager;
2. ops by category, ms/step and share: the project from a jax.profiler trace (XLA:CPU thunk events
   carry the HLO op name; each op is classed from the optimized HLO of the same step), PyTorch from
   torch.profiler (self CPU time per aten op);
3. a GEMM microbenchmark: every matmul shape of the step (forward and both backward products), jitted
   jnp.dot vs torch.mm on the same operands;
4. with --knobs, the step's tokens/s under each cheap knob (loss_impl, attention_impl, remat, matmul
   precision, XLA:CPU flags), each in a fresh subprocess because XLA_FLAGS are read once per process.

Needs no TensorFlow or ml_collections. Medians on a shared machine: also report the load average.
"""
from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

CATEGORIES = ("matmul", "attention softmax/mask", "loss (log-softmax/CE)", "norm/rotary/activation",
              "layout (transpose/copy)", "scan buffers (zero-fill, slice/update)", "optimizer + clip", "other")
_TORCH_LAYOUT = {"aten::copy_", "aten::clone", "aten::contiguous", "aten::transpose", "aten::permute", "aten::cat",
                 "aten::_to_copy", "aten::expand", "aten::view", "aten::reshape", "aten::t", "aten::index_select",
                 "aten::embedding", "aten::embedding_dense_backward", "aten::_unsafe_view", "aten::slice",
                 "aten::as_strided", "aten::fill_", "aten::zero_", "aten::zeros", "aten::empty", "aten::empty_like",
                 "aten::index_add_", "aten::new_zeros", "aten::unsqueeze", "aten::select", "aten::narrow",
                 "aten::split", "aten::chunk", "aten::stack", "aten::contiguous"}


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="small")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq_len", type=int, default=128)
    p.add_argument("--steps", type=int, default=5, help="timed steps per measurement (median)")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--loss_impl", default="vocab_parallel", choices=["vocab_parallel", "dense"])
    p.add_argument("--attention_impl", default="xla", choices=["xla", "dot_product"])
    p.add_argument("--remat_policy", default="none")
    p.add_argument("--matmul_precision", default="", help="jax_default_matmul_precision ('' = jax default)")
    p.add_argument("--unroll_layers", action="store_true",
                   help="unroll the layer scan (benchmark-only patch of nn.scan, as train_flops.py does)")
    p.add_argument("--knobs", action="store_true", help="also time the step under each knob (subprocesses)")
    p.add_argument("--step_only", action="store_true", help="print only the step's tokens/s (used by --knobs)")
    return p.parse_args(argv)


class _Cfg(argparse.Namespace):
    def get(self, key, default=None):
        return getattr(self, key, default)


def median_ms(fn, steps: int) -> float:
    fn()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


# ----------------------------------------------------------------------------------------- project

def model_config(args):
    from mellama_jax.model.presets import get_preset

    return get_preset(args.preset, attention_impl=args.attention_impl, remat_policy=args.remat_policy,
                      max_position_embeddings=max(args.seq_len, 128))


def project_setup(args, config):
    import jax
    import numpy as np

    from mellama_jax import sharding as shd
    from mellama_jax.model.llama import init_params
    from mellama_jax.train import state as state_lib
    from mellama_jax.train.loop import Trainer
    from mellama_jax.train.synthetic import SyntheticPipeline

    mesh = shd.make_mesh(_Cfg(data=1, fsdp=1, tensor=1), jax.devices()[:1])
    run = _Cfg(model=_Cfg(init_from=""),
               train=_Cfg(steps=1000, micro_batches=1, loss_impl=args.loss_impl, z_loss=0.0),
               optim=_Cfg(learning_rate=1e-4, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1, schedule="cosine",
                          warmup_fraction=0.05, warmup_steps=-1, min_lr_ratio=0.1, grad_clip_norm=1.0),
               sharding=_Cfg(rules=shd.DEFAULT_RULES), data={"synthetic": True})
    trainer = Trainer(run, config, mesh)
    params = init_params(config, jax.random.split(jax.random.PRNGKey(0))[0])
    host_params = jax.tree.map(np.array, params)  # for the PyTorch copy: the step donates the state
    state = state_lib.state_from_params(params, trainer.optimizer, jax.random.PRNGKey(1), trainer.shardings)
    pipe = SyntheticPipeline(vocab_size=config.vocab_size, seq_len=args.seq_len, global_batch_size=args.batch,
                             process_index=0, process_count=1)
    return trainer, host_params, state, trainer.global_batch(pipe.batch(0))


def project_phases(args, config, trainer, state, batch) -> dict:
    """Callables for the jitted forward+loss, forward+backward and the whole step (blocking)."""
    import jax

    from mellama_jax import sharding as shd
    from mellama_jax.train import step as step_lib

    loss_fn = step_lib.make_loss_fn(config, trainer.mesh, loss_impl=args.loss_impl)
    batch = {k: batch[k] for k in step_lib.BATCH_KEYS}
    with shd.mesh_context(trainer.mesh, trainer.rules):
        fwd = jax.jit(lambda p, b: loss_fn(p, b)[0])
        fwd_bwd = jax.jit(jax.grad(lambda p, b: loss_fn(p, b)[0]))
    box = [state]

    def step():
        box[0], metrics = trainer.train_step(box[0], batch)
        jax.block_until_ready(metrics)

    return {"forward + loss": lambda: jax.block_until_ready(fwd(box[0].params, batch)),
            "forward + backward": lambda: jax.block_until_ready(fwd_bwd(box[0].params, batch)),
            "full step": step}, box


def interleaved_ms(ours, theirs, steps: int) -> tuple[float, float]:
    """Medians of alternating runs, so a change in the machine's load hits both sides alike."""
    ours(), theirs()
    a, b = [], []
    for _ in range(steps):
        for fn, times in ((ours, a), (theirs, b)):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(a) * 1e3, statistics.median(b) * 1e3


def _hlo_index(hlo_text: str) -> dict:
    """instruction name -> (opcode, called computation or None, op_name metadata); plus computations."""
    instrs, comps, current = {}, collections.defaultdict(list), None
    for line in hlo_text.splitlines():
        head = re.match(r"^\s*(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$", line)
        if head and "=" not in line.split("{")[0]:
            current = head.group(1)
            continue
        m = re.match(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*\S.*?\s([\w\-]+)\(", line)
        if not m:
            continue
        name, opcode = m.group(1), m.group(2)
        calls = re.search(r"calls=%?([\w.\-]+)", line)
        op_name = re.search(r'op_name="([^"]*)"', line)
        instrs[name] = (opcode, calls.group(1) if calls else None, op_name.group(1) if op_name else "")
        comps[current].append((opcode, op_name.group(1) if op_name else ""))
    return {"instrs": instrs, "comps": comps}


def classify_hlo(name: str, index: dict) -> str:
    """The category of one executed HLO op (a fusion is classed by its root's name and what it contains)."""
    opcode, calls, op_name = index["instrs"].get(name, ("?", None, ""))
    body = index["comps"].get(calls, []) if calls else [(opcode, op_name)]
    opcodes = {o for o, _ in body}
    names = " ".join([op_name] + [n for _, n in body])
    if "dot" in opcodes or "convolution" in opcodes or name.startswith(("ynn_fusion", "xnn_fusion", "dot")):
        return "matmul"
    if name.startswith(("copy", "transpose")):  # a transposing write; elementwise work fused into it counts here
        return "layout (transpose/copy)"
    if name.startswith(("wrapped_broadcast", "dynamic-update-slice", "bitcast_dynamic-update-slice",
                        "dynamic-slice")):
        return "scan buffers (zero-fill, slice/update)"
    if opcodes <= {"transpose", "copy", "bitcast", "reshape", "parameter",
                                                             "tuple", "get-tuple-element", "broadcast", "slice"}:
        return "layout (transpose/copy)"
    if any(k in names for k in ("logsumexp", "log_softmax", "take_along_axis", "vocab_parallel", "token_losses",
                                "bse,ev->bsv")):
        return "loss (log-softmax/CE)"
    if "jvp(" not in names and "Llama" not in names and "layers" not in names:
        return "optimizer + clip"
    if "attention" in names and opcodes & {"exponential", "select", "reduce", "compare", "divide"}:
        return "attention softmax/mask"
    if opcodes - {"parameter", "constant", "tuple", "get-tuple-element"}:
        return "norm/rotary/activation"
    return "other"


def _where(index: dict, name: str) -> str:
    """A short origin for an HLO op: its shape-free jax op_name tail (e.g. transpose(jvp(Llama))/.../mlp)."""
    op_name = index["instrs"].get(name, ("", None, ""))[2]
    op_name = op_name.replace("jit(train_step)/", "").replace("while/body/closed_call/", "")
    return op_name[-70:] or "no metadata"


def project_op_profile(args, trainer, state, batch) -> tuple[dict, list]:
    """ms/step by category from a jax.profiler trace of --steps steps; plus the top ops."""
    import jax

    from mellama_jax import sharding as shd

    with shd.mesh_context(trainer.mesh, trainer.rules):
        hlo = trainer.jitted_train_step.inner.lower(state, batch).compile().as_text()
    index = _hlo_index(hlo)
    box = [state]
    for _ in range(2):
        box[0], m = trainer.train_step(box[0], batch)
        jax.block_until_ready(m)
    with tempfile.TemporaryDirectory() as trace_dir:
        with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
            for _ in range(args.steps):
                box[0], m = trainer.train_step(box[0], batch)
                jax.block_until_ready(m)
        path = glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True)[0]
        events = json.load(gzip.open(path))["traceEvents"]
    ops = [e for e in events if e.get("ph") == "X" and "hlo_op" in e.get("args", {})
           and e["args"].get("hlo_module", "").startswith("jit_train_step")]
    # Thunks nest (the layer scan is a while thunk around its body): count self time only.
    by_tid = collections.defaultdict(list)
    for e in ops:
        by_tid[e["tid"]].append(e)
    self_us = collections.Counter()
    for evs in by_tid.values():
        evs.sort(key=lambda e: (e["ts"], -e["dur"]))
        stack = []
        for e in evs:
            while stack and stack[-1]["end"] <= e["ts"]:
                stack.pop()
            if stack:
                self_us[stack[-1]["name"]] -= e["dur"]
            self_us[e["args"]["hlo_op"]] += e["dur"]
            stack.append({"name": e["args"]["hlo_op"], "end": e["ts"] + e["dur"]})
    cats = collections.Counter()
    for name, us in self_us.items():
        cats[classify_hlo(name, index)] += us / 1e3 / args.steps
    ranked = sorted(((us / 1e3 / args.steps, name, classify_hlo(name, index)) for name, us in self_us.items()),
                    reverse=True)
    top = [r for c in CATEGORIES if c != "matmul" for r in [r for r in ranked if r[2] == c][:2]]
    top = [(ms, f"{name} ({_where(index, name)})", c) for ms, name, c in ranked[:3] + top]
    return dict(cats), top


# ----------------------------------------------------------------------------------------- torch

def torch_category(op: str) -> str | None:
    if op in ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::linear_backward"):
        return "matmul"
    if "_foreach" in op or "clip_grad" in op or "Optimizer" in op or "adamw" in op.lower():
        return "optimizer + clip"
    if any(k in op for k in ("log_softmax", "nll_loss", "cross_entropy")):
        return "loss (log-softmax/CE)"
    if "softmax" in op or "scaled_dot_product" in op or "masked_fill" in op:
        return "attention softmax/mask"
    if op in _TORCH_LAYOUT:
        return "layout (transpose/copy)"
    if op.startswith("aten::"):
        return "norm/rotary/activation"
    return "other"  # autograd nodes and dispatcher ranges: their own (self) time only


def torch_setup(args, config, params):
    import numpy as np
    import torch

    from benchmarks.compare_torch import to_hf, torch_train_step

    torch.set_num_threads(args.threads)
    model = to_hf(config, params, "float32").train()
    tokens = torch.from_numpy(np.random.RandomState(0).randint(0, config.vocab_size, (args.batch, args.seq_len)))
    return model, tokens, torch_train_step(model, tokens)


def torch_phases(model, tokens, step) -> dict:
    import torch

    def fwd():
        with torch.no_grad():
            model(input_ids=tokens, labels=tokens).loss

    def fwd_bwd():
        model(input_ids=tokens, labels=tokens).loss.backward()
        model.zero_grad(set_to_none=True)

    return {"forward + loss": fwd, "forward + backward": fwd_bwd, "full step": step}


def torch_op_profile(args, step) -> tuple[dict, list]:
    import torch

    step()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            step()
    cats = collections.Counter()
    rows = []
    for ev in prof.key_averages():
        cat = torch_category(ev.key)
        if cat is None or ev.self_cpu_time_total <= 0:
            continue
        ms = ev.self_cpu_time_total / 1e3 / args.steps
        cats[cat] += ms
        rows.append((ms, ev.key, cat))
    return dict(cats), sorted(rows, reverse=True)[:12]


# ----------------------------------------------------------------------------------------- GEMMs

def gemm_shapes(config, batch: int, seq_len: int) -> list[tuple[str, int, int, int, int]]:
    """(name, calls per step, tokens t, in features e, out features n) of every projection of one step."""
    t, e, f = batch * seq_len, config.hidden_size, config.intermediate_size
    d = getattr(config, "head_dim", None) or e // config.num_attention_heads
    q, kv, layers = config.num_attention_heads * d, config.num_key_value_heads * d, config.num_hidden_layers
    return [("q/o proj", 2 * layers, t, e, q), ("k/v proj", 2 * layers, t, e, kv), ("gate/up proj", 2 * layers, t, e, f),
            ("down proj", layers, t, f, e), ("lm head", 1, t, e, config.vocab_size)]


def gemm_bench(shapes, steps: int) -> list:
    """Each projection's three GEMMs with the operands stored as the step stores them, so transposed
    operands are part of what is timed: y = x W, dx = dy W^T, dW = x^T dy (x [t, e], W [e, n], dy [t, n]).
    PyTorch's autograd runs exactly these torch.mm calls on transposed views."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch

    products = {"fwd  x W": (((1,), (0,)), lambda x, w, dy: (x, w)),
                "dx = dy W^T": (((1,), (1,)), lambda x, w, dy: (dy, w)),
                "dW = x^T dy": (((0,), (0,)), lambda x, w, dy: (x, dy))}
    rows = []
    for name, count, t, e, n in shapes:
        rng = np.random.RandomState(0)
        x, w, dy = (rng.randn(*shape).astype(np.float32) for shape in ((t, e), (e, n), (t, n)))
        jx, jw, jdy = map(jnp.asarray, (x, w, dy))
        tx, tw, tdy = map(torch.from_numpy, (x, w, dy))
        torch_calls = {"fwd  x W": lambda: torch.mm(tx, tw), "dx = dy W^T": lambda: torch.mm(tdy, tw.t()),
                       "dW = x^T dy": lambda: torch.mm(tx.t(), tdy)}
        for label, (contract, pick) in products.items():
            f = jax.jit(lambda a, b, c=contract: jax.lax.dot_general(a, b, (c, ((), ()))))
            a, b = pick(jx, jw, jdy)
            j = median_ms(lambda: f(a, b).block_until_ready(), steps)
            th = median_ms(torch_calls[label], steps)
            rows.append((f"{name} {label}", count, 2 * t * e * n, j, th))
    return rows


# ----------------------------------------------------------------------------------------- knobs

KNOBS = (
    ("baseline (loss vocab_parallel, attention xla, remat none)", [], ""),
    ("loss_impl=dense", ["--loss_impl", "dense"], ""),
    ("attention_impl=dot_product", ["--attention_impl", "dot_product"], ""),
    ("remat_policy=full", ["--remat_policy", "full"], ""),
    ("layer scan unrolled (benchmark-only patch)", ["--unroll_layers"], ""),
    ("jax_default_matmul_precision=highest", ["--matmul_precision", "highest"], ""),
    ("XLA --xla_cpu_use_onednn=true", [], "--xla_cpu_use_onednn=true"),
    ("XLA --xla_cpu_use_xnnpack=false", [], "--xla_cpu_use_xnnpack=false"),
    ("XLA --xla_cpu_enable_fast_math=true", [], "--xla_cpu_enable_fast_math=true"),
    ("XLA --xla_cpu_experimental_xnn_graph_fusion_mode=XNN_GRAPH_FUSION_MODE_GREEDY", [],
     "--xla_cpu_experimental_xnn_graph_fusion_mode=XNN_GRAPH_FUSION_MODE_GREEDY"),
    ("baseline again (the spread of the two baselines is the noise)", [], ""),
)


def run_knobs(args) -> list:
    base = [sys.executable, os.path.abspath(__file__), "--step_only", "--preset", args.preset, "--batch",
            str(args.batch), "--seq_len", str(args.seq_len), "--steps", str(args.steps)]
    rows = []
    for label, extra, flag in KNOBS:
        env = dict(os.environ)
        if flag:
            env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + flag).strip()
        res = subprocess.run(base + extra, env=env, capture_output=True, text=True)
        m = re.search(r"STEP_MS ([\d.]+)", res.stdout)
        rows.append((label, float(m.group(1)) if m else None,
                     "" if m else (res.stderr.strip().splitlines() or ["failed"])[-1][:120]))
        print(f"  knob {label}: {rows[-1][1] or rows[-1][2]}", file=sys.stderr, flush=True)
    return rows


# ----------------------------------------------------------------------------------------- main

def main() -> None:
    args = parse()
    import jax

    if args.matmul_precision:
        jax.config.update("jax_default_matmul_precision", args.matmul_precision)
    if args.unroll_layers:
        import flax.linen as nn

        scan = nn.scan
        nn.scan = lambda *a, **kw: scan(*a, unroll=kw["length"], **kw)
    config = model_config(args)
    trainer, params, state, batch = project_setup(args, config)
    tokens = args.batch * args.seq_len
    if args.step_only:
        box = [state]

        def step():
            box[0], m = trainer.train_step(box[0], batch)
            jax.block_until_ready(m)

        print(f"STEP_MS {median_ms(step, args.steps):.3f}")
        return

    import platform

    import flax
    import torch
    import transformers

    print(f"command: {' '.join(shlex.quote(a) for a in sys.argv)}")
    print(f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}; torch threads {args.threads}; "
          f"load average at start {os.getloadavg()[0]:.1f}")
    print(f"versions: jax {jax.__version__}, flax {flax.__version__}, torch {torch.__version__}, "
          f"transformers {transformers.__version__}, python {platform.python_version()}; "
          f"{jax.devices()[0].device_kind}, {platform.machine()}, {os.cpu_count()} CPU threads")
    print(f"model: preset {args.preset}, {config.num_params() / 1e6:.1f}M params, float32; batch {args.batch} x "
          f"{args.seq_len}; loss {args.loss_impl}, attention {args.attention_impl}, remat {args.remat_policy}; "
          f"medians of {args.steps}\n")

    ours_fns, box = project_phases(args, config, trainer, state, batch)
    model, tok, step = torch_setup(args, config, params)
    theirs_fns = torch_phases(model, tok, step)
    ours_phases, theirs_phases = {}, {}
    for k in ours_fns:
        ours_phases[k], theirs_phases[k] = interleaved_ms(ours_fns[k], theirs_fns[k], args.steps)
    ours_cats, ours_top = project_op_profile(args, trainer, box[0], batch)
    theirs_cats, theirs_top = torch_op_profile(args, step)

    print("### Phases (ms/step, medians of alternating project / PyTorch runs)\n")
    print("| phase | project | PyTorch eager | project / PyTorch time |")
    print("|---|---|---|---|")
    for k in ours_phases:
        print(f"| {k} | {ours_phases[k]:,.1f} | {theirs_phases[k]:,.1f} | {ours_phases[k] / theirs_phases[k]:.2f} |")
    print(f"| tokens/s (full step) | {tokens / ours_phases['full step'] * 1e3:,.0f} | "
          f"{tokens / theirs_phases['full step'] * 1e3:,.0f} | |\n")

    print("### Ops by category (profiled, self time, ms/step and share of the profiled total)\n")
    print("| category | project ms | share | PyTorch ms | share | project - PyTorch ms |")
    print("|---|---|---|---|---|---|")
    ot, tt = sum(ours_cats.values()), sum(theirs_cats.values())
    for c in CATEGORIES:
        o, t = ours_cats.get(c, 0.0), theirs_cats.get(c, 0.0)
        print(f"| {c} | {o:,.1f} | {o / ot:.0%} | {t:,.1f} | {t / tt:.0%} | {o - t:+,.1f} |")
    print(f"| total profiled | {ot:,.1f} | | {tt:,.1f} | | {ot - tt:+,.1f} |\n")
    print("Largest project ops (HLO name (jax op_name), category, ms/step; the top 3, then the top 2 of each "
          "other category):")
    for ms, n, c in ours_top:
        print(f"- {n} [{c}] {ms:.1f}")
    print("Top PyTorch ops (aten op, category, ms/step): " +
          "; ".join(f"{n} [{c}] {ms:.1f}" for ms, n, c in theirs_top) + "\n")

    print("### GEMMs of the step: jitted lax.dot_general vs torch.mm, operands stored as in the step "
          "(float32, ms per call, median)\n")
    print("| GEMM | calls/step | GFLOP | XLA:CPU | torch.mm | XLA / torch | GFLOP/s XLA | GFLOP/s torch |")
    print("|---|---|---|---|---|---|---|---|")
    tj = tt_ = 0.0
    for name, count, flop, j, t in gemm_bench(gemm_shapes(config, args.batch, args.seq_len), args.steps):
        tj, tt_ = tj + count * j, tt_ + count * t
        print(f"| {name} | {count} | {flop / 1e9:.3f} | {j:.2f} | {t:.2f} | {j / t:.2f} | "
              f"{flop / j / 1e6:.1f} | {flop / t / 1e6:.1f} |")
    print(f"| sum over one step's projection + head GEMMs | | | {tj:,.1f} | {tt_:,.1f} | {tj / tt_:.2f} | | |\n")

    if args.knobs:
        print("### Knobs (project full step, fresh process each; median ms/step, tokens/s)\n")
        print("| knob | ms/step | tokens/s | vs baseline |")
        print("|---|---|---|---|")
        rows = run_knobs(args)
        base = rows[0][1]
        for label, ms, err in rows:
            if ms is None:
                print(f"| {label} | failed: {err} | | |")
            else:
                print(f"| {label} | {ms:,.1f} | {tokens / ms * 1e3:,.0f} | {base / ms:.2f}x |", flush=True)
        print(f"\nload average at end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
