"""Reading a compiled (optimised, SPMD-partitioned) HLO module: loops, FLOPs, collectives.

Why our own pass over the HLO text: XLA's ``cost_analysis()`` counts the body of every ``while``
loop once (the scan over layers runs ``num_hidden_layers`` times, the micro-batch scan
``micro_batches`` times), so on a scanned 80-layer model it under-reports FLOPs by ~80x. The
module text names each loop's trip count, so this pass finds every computation's execution count
and adds the skipped iterations' matmul FLOPs to XLA's own count. It also lists
the collectives with how often they run per step. Everything is per device (the partitioned module).

XLA's cost analysis sees nothing inside a Pallas kernel (a ``tpu_custom_call``: splash attention):
no FLOPs. ``kernel_cost`` counts a splash kernel's matmul FLOPs from its operand shapes and block
sizes, and its HBM bytes as its operands plus results (each read or written once: a lower bound,
the kernel re-reads K/V once per query block).
"""
from __future__ import annotations

import collections
import dataclasses
import math
import re
from typing import Iterator

_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4,
                "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16,
                "s4": 0.5, "u4": 0.5, "token": 0}
_ARRAY = re.compile(r"\b([a-z][a-z0-9]*)\[([0-9,]*)\]")
_HEADER = re.compile(r"^(ENTRY\s+)?%([^\s(]+)\s*\(")
_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%([^\s=]+)\s*=\s*")
_CALLED = re.compile(r"\b(calls|to_apply|body|condition|true_computation|false_computation)=%([^\s,)}]+)")
_BRANCHES = re.compile(r"branch_computations=\{([^}]*)\}")
COLLECTIVES = ("all-gather", "all-reduce", "reduce-scatter", "all-to-all", "collective-permute",
               "ragged-all-to-all")


@dataclasses.dataclass
class Instr:
    name: str
    opcode: str
    shapes: list  # [(dtype, dims)] of the result (several for a tuple)
    operands: list  # operand instruction names
    attrs: str  # everything after the operand list
    number: int | None = None  # a parameter's index, ``parameter(N)``


@dataclasses.dataclass
class Collective:
    kind: str
    count: int  # executions per step (loop trip counts applied)
    bytes: float  # result bytes per execution summed over executions, per device
    wire_bytes: float  # bytes each device sends per step (ring algorithms), see ``wire_bytes``
    group_sizes: tuple


@dataclasses.dataclass
class Kernel:
    name: str  # e.g. splash_mha_fwd_segmented_residuals (the Pallas kernel's name)
    count: int  # executions per step (loop trip counts applied)
    flops: float  # per execution
    bytes: float  # per execution: operands + results


@dataclasses.dataclass
class HloStats:
    loops: list  # [(op_name or body name, trip count)] for every while loop
    dot_flops_once: float  # matmul FLOPs with every loop body counted once (XLA's convention)
    dot_flops: float  # matmul FLOPs with loop trip counts applied
    collectives: list  # [Collective]
    kernels: list = dataclasses.field(default_factory=list)  # [Kernel]: Pallas custom calls

    @property
    def kernel_flops(self) -> float:
        """FLOPs of the Pallas kernels per step (XLA's cost analysis counts none of them)."""
        return sum(k.count * k.flops for k in self.kernels)


def _shape_bytes(shapes: list) -> float:
    return sum(_DTYPE_BYTES.get(dt, 4) * math.prod(dims) for dt, dims in shapes)


def _parse_shapes(text: str) -> list:
    return [(dt, tuple(int(d) for d in dims.split(",") if d)) for dt, dims in _ARRAY.findall(text)]


def _matching(text: str, start: int, open_: str = "(", close: str = ")") -> int:
    """Index of the bracket closing the one at ``start``."""
    depth = 0
    for i in range(start, len(text)):
        if text[i] == open_:
            depth += 1
        elif text[i] == close:
            depth -= 1
            if depth == 0:
                return i
    return len(text) - 1


def _parse_instr(line: str) -> Instr | None:
    m = _INSTR.match(line)
    if not m:
        return None
    rest = line[m.end():]
    if rest.startswith("("):  # tuple-shaped result
        end = _matching(rest, 0)
        type_text, rest = rest[:end + 1], rest[end + 1:].lstrip()
    else:
        type_text, _, rest = rest.partition(" ")
    om = re.match(r"([a-z][a-z0-9\-]*)\(", rest)
    if not om:
        return None
    close = _matching(rest, om.end() - 1)
    operand_text = rest[om.end():close]
    operands = re.findall(r"%([^\s,)]+)", operand_text)
    number = int(operand_text) if om.group(1) == "parameter" and operand_text.strip().isdigit() else None
    return Instr(m.group(1), om.group(1), _parse_shapes(type_text), operands, rest[close + 1:], number)


def _depth_change(line: str) -> int:
    """Opened minus closed brackets ({, (, [) of a line, outside "strings"."""
    depth, quoted, escaped = 0, False, False
    for ch in line:
        if quoted:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                quoted = False
        elif ch == '"':
            quoted = True
        elif ch in "{([":
            depth += 1
        elif ch in "})]":
            depth -= 1
    return depth


def logical_lines(text: str) -> Iterator[str]:
    """The module's lines with each instruction on one line.

    An instruction's attributes may span lines: Pallas kernels put a multi-line
    `frontend_attributes={kernel_metadata={...}}` in it, whose last line starts with `}}`; read
    line by line, that looks like the end of the computation. Lines are joined until the
    instruction's brackets balance.
    """
    pending, depth = "", 0
    for line in text.splitlines():
        if pending:
            pending += "\n" + line
            depth += _depth_change(line)
            if depth <= 0:
                yield pending
                pending = ""
            continue
        if _INSTR.match(line):
            depth = _depth_change(line)
            if depth > 0:
                pending = line
                continue
        yield line
    if pending:
        yield pending


def parse_module(text: str) -> tuple[dict[str, list[Instr]], str]:
    """HLO text -> ({computation name: [Instr]}, entry computation name)."""
    comps: dict[str, list[Instr]] = {}
    entry, current = "", None
    for line in logical_lines(text):
        if current is None:
            m = _HEADER.match(line)
            if m and line.rstrip().endswith("{"):
                current = m.group(2)
                comps[current] = []
                if m.group(1):
                    entry = current
            continue
        if line.startswith("}"):
            current = None
            continue
        instr = _parse_instr(line)
        if instr is not None:
            comps[current].append(instr)
    if not entry:
        raise ValueError("HLO text has no ENTRY computation")
    return comps, entry


def _constant_value(name: str, raw: dict) -> int | None:
    line = raw.get(name)
    if line is None:
        return None
    m = re.search(r"constant\((-?\d+)\)", line)
    return int(m.group(1)) if m else None


def _resolve_int(name: str, by_name: dict, raw: dict, depth: int = 0) -> int | None:
    """Value of a scalar integer constant, looking through copy/convert/bitcast."""
    instr = by_name.get(name)
    if instr is None or depth > 4:
        return None
    if instr.opcode == "constant":
        return _constant_value(name, raw)
    if instr.opcode in ("copy", "convert", "bitcast") and instr.operands:
        return _resolve_int(instr.operands[0], by_name, raw, depth + 1)
    return None


def trip_count(while_instr: Instr, comps: dict, raw_lines: dict,
               caller: list[Instr] | None = None) -> int | None:
    """Iterations of a ``while``: XLA's known_trip_count, else ``i < N`` in the condition with
    i's initial value from the loop's operand tuple and its step from the body (XLA's windowed
    einsum loops count 0, 2, 4, ...)."""
    m = re.search(r'"known_trip_count":\{"n":"(\d+)"', while_instr.attrs)
    if m:
        return int(m.group(1))
    cond = re.search(r"condition=%([^\s,]+)", while_instr.attrs)
    body = re.search(r"body=%([^\s,]+)", while_instr.attrs)
    if not cond or cond.group(1) not in comps:
        return None
    cond_comp = comps[cond.group(1)]
    by_name = {i.name: i for i in cond_comp}
    root = cond_comp[-1] if cond_comp else None
    if root is None or root.opcode != "compare" or len(root.operands) != 2:
        return None
    direction = re.search(r"direction=(\w+)", root.attrs)
    limit, index = None, None
    for op in root.operands:
        instr = by_name.get(op)
        if instr is not None and instr.opcode == "constant":
            limit = _constant_value(op, raw_lines)
        elif instr is not None and instr.opcode == "get-tuple-element":
            index = int(re.search(r"index=(\d+)", instr.attrs).group(1))
    if limit is None or not direction or direction.group(1) not in ("LT", "LE", "NE", "GT"):
        return None
    init, step = 0, 1
    if index is not None and caller is not None:
        by_caller = {i.name: i for i in caller}
        tup = by_caller.get(while_instr.operands[0]) if while_instr.operands else None
        if tup is not None and tup.opcode == "tuple" and index < len(tup.operands):
            value = _resolve_int(tup.operands[index], by_caller, raw_lines)
            init = value if value is not None else 0
    if index is not None and body and body.group(1) in comps and comps[body.group(1)]:
        body_comp = comps[body.group(1)]
        by_body = {i.name: i for i in body_comp}
        out = body_comp[-1]
        update = by_body.get(out.operands[index]) if out.opcode == "tuple" and index < len(out.operands) else None
        if update is not None and update.opcode == "add":
            for op in update.operands:
                value = _resolve_int(op, by_body, raw_lines)
                if value:
                    step = value
    if direction.group(1) == "GT":
        return None  # counting down: not produced by jax scans
    span = limit - init + (1 if direction.group(1) == "LE" else 0)
    return max(0, -(-span // step))


def _group_size(attrs: str, num_devices: int) -> int:
    m = re.search(r"replica_groups=\{\{([^}]*)\}", attrs)
    if m:
        return len([x for x in m.group(1).split(",") if x.strip()])
    m = re.search(r"replica_groups=\[(\d+),(\d+)\]<=", attrs)
    if m:
        return int(m.group(2))
    m = re.search(r"replica_groups=mesh\[([^\]]*)\]\s*\{([^}]*)\}", attrs)
    if m:
        sizes = dict(re.findall(r"'([^']+)'=(\d+)", m.group(1)))
        return math.prod(int(sizes.get(a, 1)) for a in re.findall(r"'([^']+)'", m.group(2)))
    return num_devices


def wire_bytes(kind: str, result_bytes: float, group: int) -> float:
    """Bytes one device sends for one collective with a ring/bidirectional-ring algorithm."""
    if group <= 1:
        return 0.0
    frac = (group - 1) / group
    return {"all-gather": result_bytes * frac, "reduce-scatter": result_bytes * (group - 1),
            "all-reduce": 2 * result_bytes * frac, "all-to-all": result_bytes * frac,
            "ragged-all-to-all": result_bytes * frac}.get(kind, result_bytes)


def _edges(instr: Instr) -> Iterator[tuple[str, str]]:
    for key, name in _CALLED.findall(instr.attrs):
        yield key, name
    m = _BRANCHES.search(instr.attrs)
    if m:
        for name in re.findall(r"%([^\s,}]+)", m.group(1)):
            yield "branch", name


def _dot_flops(instr: Instr, shapes: dict) -> float:
    out = instr.shapes[0][1] if instr.shapes else ()
    if instr.opcode == "dot":
        lhs = shapes.get(instr.operands[0]) if instr.operands else None
        m = re.search(r"lhs_contracting_dims=\{([0-9,]*)\}", instr.attrs)
        if lhs is None or not m:
            return 0.0
        k = math.prod(lhs[int(d)] for d in m.group(1).split(",") if d)
        return 2.0 * math.prod(out) * k
    if instr.opcode == "convolution":
        return _conv_flops(instr, shapes)
    return 0.0


def _conv_flops(instr: Instr, shapes: dict) -> float:
    """XLA's convolution FLOP count (HloCostAnalysis): 2 x FMAs over valid window positions."""
    if len(instr.operands) < 2 or not instr.shapes:
        return 0.0
    lhs, rhs = shapes.get(instr.operands[0]), shapes.get(instr.operands[1])
    labels = re.search(r"dim_labels=([0-9a-z]+)_([0-9a-z]+)->([0-9a-z]+)", instr.attrs)
    if lhs is None or rhs is None or not labels:
        return 0.0
    lhs_l, rhs_l, out_l = labels.groups()
    out = instr.shapes[0][1]
    feature_groups = int((re.search(r"feature_group_count=(\d+)", instr.attrs) or [0, 1])[1])
    batch_groups = int((re.search(r"batch_group_count=(\d+)", instr.attrs) or [0, 1])[1])
    in_feature, batch = lhs[lhs_l.index("f")], lhs[lhs_l.index("b")]
    out_feature = out[out_l.index("f")]
    window = re.search(r"window=\{([^}]*)\}", instr.attrs)
    win = dict(re.findall(r"(\w+)=(\S+)", window.group(1))) if window else {}
    spatial = sorted(c for c in lhs_l if c.isdigit())

    def field(key: str, i: int, default: str) -> str:
        parts = win.get(key, "").split("x")
        return parts[i] if key in win and i < len(parts) else default

    valid = 1
    for i, s in enumerate(spatial):
        in_size, k_size, o_size = lhs[lhs_l.index(s)], rhs[rhs_l.index(s)], out[out_l.index(s)]
        stride = int(field("stride", i, "1"))
        pad_lo = int(field("pad", i, "0_0").split("_")[0])
        lhs_dil, rhs_dil = int(field("lhs_dilate", i, "1")), int(field("rhs_dilate", i, "1"))
        count = 0
        for k in range(k_size):
            for o in range(o_size):
                idx = o * stride - pad_lo + k * rhs_dil
                if idx % lhs_dil == 0 and 0 <= idx // lhs_dil < in_size:
                    count += 1
        valid *= count
    return 2.0 * (in_feature / feature_groups) * out_feature * (batch / batch_groups) * valid


_SPLASH = re.compile(r"splash_m[hq]a_(fwd|dq|dkv)\w*")
# Matmuls per (query, key) block pair: fwd S = QK^T, O = PV; dq recomputes S, dP = dO V^T, dQ = dS K;
# dkv recomputes S and dP, dV = P^T dO, dK = dS^T Q (and dQ as well when fused).
_SPLASH_MATMULS = {"fwd": 2, "dq": 3, "dkv": 4}


def causal_block_fraction(length: int, block_q: int, block_kv: int) -> float:
    """Share of the (query block, key block) pairs a causal block-sparse kernel computes."""
    nq, nkv = -(-length // block_q), -(-length // block_kv)
    visited = sum(min(nkv, -(-((i + 1) * block_q) // block_kv)) for i in range(nq))
    return visited / (nq * nkv)


def _operand_shapes(attrs: str) -> list:
    m = re.search(r"operand_layout_constraints=\{", attrs)
    if not m:
        return []
    body = attrs[m.end():_matching(attrs, m.end() - 1, "{", "}")]
    return _parse_shapes(re.sub(r"\{[^{}]*\}", "", body))  # drop the layouts, keep the shapes


def kernel_cost(instr: Instr) -> tuple[str, float, float] | None:
    """(kernel name, matmul FLOPs, operand + result bytes) of one Pallas TPU custom call; None for
    any other instruction. FLOPs are counted for splash attention only (0 for other kernels).

    Splash: q [.., heads, t, d] is the largest operand whose minor dim is the head dim d (read off
    the shape a result shares with an operand: out or dq with q, dk/dv with k); keys are as many as
    queries (self-attention). FLOPs = 2 x matmuls x b*heads*t*d x t x the causal share of block
    pairs, with the kernel's block sizes from its metadata (a causal mask is assumed; a sliding
    window computes fewer blocks than counted).
    """
    if instr.opcode != "custom-call" or 'custom_call_target="tpu_custom_call"' not in instr.attrs:
        return None
    operands = _operand_shapes(instr.attrs)
    nbytes = _shape_bytes(operands) + _shape_bytes(instr.shapes)
    kind = _SPLASH.search(instr.name) or _SPLASH.search(instr.attrs)
    name = kind.group(0) if kind else instr.name.split(".")[0]
    if not kind:
        return name, 0.0, nbytes
    phase = kind.group(1)
    shared = {dims for _, dims in operands if len(dims) >= 3} & {dims for _, dims in instr.shapes if len(dims) >= 3}
    if not shared:
        return name, 0.0, nbytes
    d = next(iter(shared))[-1]
    q = max((dims for _, dims in operands if len(dims) >= 3 and dims[-1] == d), key=math.prod)
    t = q[-2]
    meta = dict((k, int(v)) for k, v in re.findall(r'\\"(block_\w+)\\": (\d+)', instr.attrs))
    suffix = "" if phase == "fwd" else "_" + phase
    block_q, block_kv = meta.get("block_q" + suffix, t), meta.get("block_kv" + suffix, t)
    matmuls = _SPLASH_MATMULS[phase] + (1 if phase == "dkv" and '\\"use_fused_bwd_kernel\\": true' in instr.attrs else 0)
    flops = 2.0 * matmuls * math.prod(q) * t * causal_block_fraction(t, block_q, block_kv)
    return name, flops, nbytes


def _raw_lines(text: str) -> dict:
    raw = {}
    for line in logical_lines(text):
        m = _INSTR.match(line)
        if m:
            raw[m.group(1)] = line
    return raw


def _call_graph(comps: dict, raw: dict) -> tuple[dict, list]:
    """({callee: [(caller, trips, 1.0, edge kind)]}, [(loop name, trip count)])."""
    callers: dict[str, list[tuple[str, float, float, str]]] = collections.defaultdict(list)
    loops = []
    for cname, instrs in comps.items():
        for instr in instrs:
            for key, callee in _edges(instr):
                if key == "body":
                    trips = trip_count(instr, comps, raw, instrs)
                    op = re.search(r'op_name="([^"]*)"', instr.attrs)
                    loops.append((op.group(1) if op else callee, trips))
                    callers[callee].append((cname, float(trips or 1), 1.0, key))
                elif key == "condition":
                    continue  # no FLOPs or traffic worth counting
                else:
                    callers[callee].append((cname, 1.0, 1.0, instr.opcode if key == "calls" else key))
    return callers, loops


def _multiplier(callers: dict, entry: str):
    memo: dict[tuple[str, bool], float] = {}

    def mult(c: str, once: bool) -> float:
        if c == entry:
            return 1.0
        if (c, once) not in memo:
            memo[(c, once)] = 0.0  # guards against (impossible) cycles
            memo[(c, once)] = sum(mult(p, once) * (f_once if once else f)
                                  for p, f, f_once, _ in callers.get(c, ()))
        return memo[(c, once)]
    return mult


def analyze(text: str, num_devices: int) -> HloStats:
    """Loop-aware matmul FLOPs and collectives of one compiled, partitioned HLO module."""
    comps, entry = parse_module(text)
    raw = _raw_lines(text)
    callers, loops = _call_graph(comps, raw)
    mult = _multiplier(callers, entry)

    flops = {False: 0.0, True: 0.0}
    coll: dict[str, dict] = {}
    kernels: dict[tuple, list] = {}
    for cname, instrs in comps.items():
        m_true, m_once = mult(cname, False), mult(cname, True)
        if not m_true and not m_once:
            continue
        shapes = {i.name: i.shapes[0][1] for i in instrs if len(i.shapes) == 1}
        for instr in instrs:
            f = _dot_flops(instr, shapes)
            if f:
                flops[False] += f * m_true
                flops[True] += f * m_once
            cost = kernel_cost(instr)
            if cost is not None:
                kernels.setdefault(cost, [cost, 0.0])[1] += m_true
            kind = instr.opcode[:-6] if instr.opcode.endswith("-start") else instr.opcode
            if kind in COLLECTIVES:
                arrays = instr.shapes
                if instr.opcode.endswith("-start") and len(arrays) > 1:
                    arrays = [max(arrays, key=lambda s: math.prod(s[1]))]
                size = _shape_bytes(arrays)
                group = _group_size(instr.attrs, num_devices)
                entry_ = coll.setdefault(kind, {"count": 0.0, "bytes": 0.0, "wire": 0.0, "groups": set()})
                entry_["count"] += m_true
                entry_["bytes"] += size * m_true
                entry_["wire"] += wire_bytes(kind, size, group) * m_true
                entry_["groups"].add(group)
    collectives = [Collective(k, int(round(v["count"])), v["bytes"], v["wire"], tuple(sorted(v["groups"])))
                   for k, v in sorted(coll.items())]
    found = [Kernel(name, int(round(count)), f, b) for (name, f, b), count in kernels.values()]
    return HloStats(loops, flops[True], flops[False], collectives, sorted(found, key=lambda k: k.name))


# ---------------------------------------------------------------------------------------------------
# HBM bytes counted per instruction, loop trip counts applied.

# Top-level instructions that move no HBM bytes themselves (control flow, aliases, bookkeeping), and
# the second halves of async pairs (their "-start" is counted).
_NO_TRAFFIC = {"parameter", "get-tuple-element", "tuple", "constant", "bitcast", "while", "conditional",
               "call", "after-all", "partition-id", "replica-id", "opt-barrier", "add-dependency",
               "copy-done", "all-gather-done", "all-reduce-done", "collective-permute-done",
               "async-done", "send-done", "recv-done", "get-dimension-size"}
_SLICING = ("dynamic-slice", "slice", "gather")
# Custom calls that only reserve memory or restate indices: libtpu's AllocateBuffer hands back an
# uninitialised buffer (the stacked layer activations a scan fills in place) and moves no bytes.
_NO_TRAFFIC_TARGETS = ("AllocateBuffer", "AssumeGatherIndicesInBound")


@dataclasses.dataclass
class Traffic:
    """HBM bytes of one step per device, each executed top-level instruction's operands + results."""

    bytes_once: float  # loop bodies counted once (XLA's convention, to compare with its count)
    bytes: float  # loop trip counts applied
    by_scope: dict  # {op_name scope: bytes}, loop trip counts applied
    outside_loops: float  # bytes of the instructions that run once per step (e.g. the optimizer)
    by_kind: dict = dataclasses.field(default_factory=dict)  # {instruction kind: bytes}, see ``kind``


def _users(instrs: list[Instr]) -> dict:
    users: dict[str, list[Instr]] = collections.defaultdict(list)
    for i in instrs:
        for op in i.operands:
            users[op].append(i)
    return users


def _param_read_bytes(name: str, full: float, users: dict, comps: dict, depth: int = 0) -> float:
    """Bytes a fusion reads of one parameter: only the slices when every use slices it (a layer of a
    stacked [layers, ...] array), nothing when it is the buffer a dynamic-update-slice writes in place.
    A use inside a nested fusion is followed into that fusion's own parameter (libtpu nests the
    slicing loop fusion of a stacked input inside the matmul's output fusion)."""
    total = 0.0
    for u in users.get(name, ()):
        if u.opcode in _SLICING and u.operands and u.operands[0] == name:
            total += _shape_bytes(u.shapes)
        elif u.opcode == "dynamic-update-slice" and u.operands and u.operands[0] == name:
            continue
        elif u.opcode == "bitcast" and depth < 4:
            total += _param_read_bytes(u.name, full, users, comps, depth + 1)
        elif u.opcode == "fusion" and depth < 4 and (nested := _nested_param(u, name, comps)):
            inner, fused = nested
            total += _param_read_bytes(inner, full, _users(fused), comps, depth + 1)
        else:
            return full
    return min(total, full)


def _fused_computation(fusion: Instr, comps: dict) -> list[Instr] | None:
    """The instructions of the computation a fusion calls (None if it names none we parsed)."""
    callee = re.search(r"calls=%([^\s,)}]+)", fusion.attrs)
    return comps.get(callee.group(1)) if callee else None


def _nested_param(fusion: Instr, operand: str, comps: dict) -> tuple[str, list[Instr]] | None:
    """The parameter of ``fusion``'s fused computation that ``operand`` is passed as (used once)."""
    fused = _fused_computation(fusion, comps)
    if fused is None or fusion.operands.count(operand) != 1:
        return None
    index = fusion.operands.index(operand)
    params = [i for i in fused if i.opcode == "parameter" and i.number == index]
    return (params[0].name, fused) if params else None


def _fusion_bytes(instr: Instr, operand_bytes: list, fused: list[Instr], comps: dict) -> float:
    by_name = {i.name: i for i in fused}
    users = _users(fused)
    params = {i.number: i.name for i in fused if i.opcode == "parameter" and i.number is not None}
    read = 0.0
    for k, full in enumerate(operand_bytes):
        name = params.get(k)
        read += full if name is None else _param_read_bytes(name, full, users, comps)
    root = fused[-1] if fused else None
    outs = [by_name.get(o) for o in root.operands] if root is not None and root.opcode == "tuple" else [root]
    written = 0.0
    for out, shape in zip(outs, instr.shapes):
        while out is not None and out.opcode == "bitcast" and out.operands:
            out = by_name.get(out.operands[0])
        if out is not None and out.opcode == "dynamic-update-slice" and len(out.operands) > 1:
            upd = by_name.get(out.operands[1])
            written += _shape_bytes(upd.shapes) if upd is not None else _shape_bytes([shape])
        else:
            written += _shape_bytes([shape])
    return read + written


def _scope(instr: Instr) -> str:
    """A short name of the source op: its op_name without the jit/while/jvp wrappers."""
    m = re.search(r'op_name="([^"]*)"', instr.attrs)
    if not m:
        return f"({instr.opcode})"
    parts = [p for p in m.group(1).split("/") if p and not p.startswith(("jit(", "while", "body",
             "eval_jaxpr", "checkpoint", "rematted_computation", "remat", "closed_call", "cond",
             "branch", "pjit", "transpose(", "jvp("))]
    return "/".join(parts[-3:]) or f"({instr.opcode})"


def kind(instr: Instr, comps: dict) -> str:
    """A coarse class of a top-level instruction, for saying where the bytes go."""
    if instr.opcode == "custom-call":
        return "Pallas kernels" if 'custom_call_target="tpu_custom_call"' in instr.attrs else "custom calls"
    base = instr.opcode[:-6] if instr.opcode.endswith("-start") else instr.opcode
    if base in COLLECTIVES:
        return "collectives"
    if instr.opcode == "fusion":
        ops = {i.opcode for i in _fused_computation(instr, comps) or ()}
        if ops & {"dot", "convolution"}:
            return "matmul fusions"
        if ops & {"dynamic-update-slice", "dynamic-slice", "slice", "gather", "scatter"}:
            return "slicing fusions"
        if "reduce" in ops:
            return "reduce fusions"
        return "elementwise fusions"
    if instr.opcode in ("copy", "copy-start", "transpose"):
        return "copies"
    return instr.opcode


def instruction_bytes(instr: Instr, shapes: dict, comps: dict) -> float:
    """HBM bytes one execution of a top-level instruction reads and writes."""
    if instr.opcode in _NO_TRAFFIC:
        return 0.0
    if instr.opcode == "custom-call" and any(f'custom_call_target="{t}"' in instr.attrs
                                             for t in _NO_TRAFFIC_TARGETS):
        return 0.0
    operand_bytes = [_shape_bytes(shapes.get(o, [])) for o in instr.operands]
    if instr.opcode == "fusion":
        fused = _fused_computation(instr, comps)
        if fused is not None:
            return _fusion_bytes(instr, operand_bytes, fused, comps)
    if instr.opcode in _SLICING:
        return 2 * _shape_bytes(instr.shapes)
    if instr.opcode == "dynamic-update-slice":
        return 2 * (operand_bytes[1] if len(operand_bytes) > 1 else 0.0)
    result = instr.shapes
    if instr.opcode.endswith("-start") and len(result) > 1:  # (operands..., results..., scratch)
        result = [max(result, key=lambda s: math.prod(s[1]))]
    return sum(operand_bytes) + _shape_bytes(result)  # Pallas kernels too, as kernel_cost counts them


def traffic(text: str) -> Traffic:
    """HBM bytes per step per device, counted instruction by instruction with loop trip counts.

    XLA's ``bytes accessed`` counts every loop body once; scaling it by the loop-corrected FLOPs
    (plan/aot.py) also scales the bytes of what runs once per step (the optimizer update: no matmuls,
    many bytes) by the loop factor. This count applies each computation's own trip count instead.
    Fused computations are not walked (their intermediates stay on chip): a fusion reads its operands
    (only the slices it takes of a sliced one) and writes its results (only the update of an in-place
    dynamic-update-slice), as XLA's own cost analysis counts it.
    """
    comps, entry = parse_module(text)
    raw = _raw_lines(text)
    callers, _ = _call_graph(comps, raw)
    mult = _multiplier(callers, entry)
    executed = {entry}
    for callee, edges in callers.items():  # computations run as control flow, not fused bodies
        if any(kind in ("body", "branch", "true_computation", "false_computation", "call")
               for _, _, _, kind in edges):
            executed.add(callee)
    total = {False: 0.0, True: 0.0}
    by_scope: dict[str, float] = collections.defaultdict(float)
    by_kind: dict[str, float] = collections.defaultdict(float)
    outside = 0.0
    for cname in executed:
        instrs = comps.get(cname, [])
        m_true, m_once = mult(cname, False), mult(cname, True)
        shapes = {i.name: i.shapes for i in instrs}
        for instr in instrs:
            b = instruction_bytes(instr, shapes, comps)
            if not b:
                continue
            total[False] += b * m_true
            total[True] += b * m_once
            by_scope[_scope(instr)] += b * m_true
            by_kind[kind(instr, comps)] += b * m_true
            if m_true == 1.0:
                outside += b
    return Traffic(total[True], total[False], dict(by_scope), outside, dict(by_kind))
