"""Per-chip numbers the planner compares against: HBM size and bandwidth, interconnect bandwidth.

Peak bf16 FLOP/s come from the one chip table the training loop uses for MFU
(``mellama_jax.train.metrics.PEAK_BF16_TFLOPS``), so a plan's MFU and a run's logged MFU use the
same denominator. Everything here is a vendor datasheet figure, not a measurement; the roofline
built from them is an optimistic bound (perfect overlap of compute, HBM traffic and collectives).
"""
from __future__ import annotations

import dataclasses
import math
import re

from mellama_jax.train.metrics import peak_tflops_for

GIB = 1024 ** 3


@dataclasses.dataclass(frozen=True)
class Chip:
    """One accelerator chip (a TPU chip or a GPU)."""

    name: str
    device_kind: str  # what jax reports as device_kind; keys the peak-FLOP/s table
    hbm_bytes: int
    hbm_bandwidth: float  # bytes/s
    interconnect_bandwidth: float  # bytes/s per chip for collectives (ICI / NVLink), one direction
    scale_out_bandwidth: float = 0.0  # bytes/s per GPU across nodes (InfiniBand); 0 for TPU slices
    gpus_per_node: int = 0  # GPUs only: NVLink domain size

    @property
    def peak_flops(self) -> float:
        """Dense bf16 FLOP/s per chip from train/metrics.py's table."""
        tflops = peak_tflops_for(self.device_kind)
        if tflops is None:
            raise KeyError(f"no peak TFLOP/s for {self.device_kind!r} in "
                           "mellama_jax.train.metrics.PEAK_BF16_TFLOPS")
        return tflops * 1e12


# TPU chips (Cloud TPU system-architecture pages). ICI is the per-chip interchip bandwidth.
TPU_CHIPS: dict[str, Chip] = {
    "v4": Chip("TPU v4", "TPU v4", 32 * GIB, 1.2e12, 300e9),
    "v5e": Chip("TPU v5e", "TPU v5 lite", 16 * GIB, 819e9, 200e9),
    "v5p": Chip("TPU v5p", "TPU v5", 95 * GIB, 2.765e12, 600e9),
    "v6e": Chip("TPU v6e", "TPU v6 lite", 32 * GIB, 1.64e12, 448e9),
}

# GPUs (SXM parts, NVIDIA datasheets). NVLink figures are per GPU per direction; scale-out is one
# 400 Gb/s InfiniBand NIC per GPU (the usual DGX/HGX layout).
GPU_CHIPS: dict[str, Chip] = {
    "h100": Chip("H100 SXM 80GB", "h100", 80 * GIB, 3.35e12, 450e9, 50e9, 8),
    "h200": Chip("H200 SXM 141GB", "h200", 141 * GIB, 4.8e12, 450e9, 50e9, 8),
    "a100": Chip("A100 SXM 80GB", "a100", 80 * GIB, 2.039e12, 300e9, 25e9, 8),
    "a100-40gb": Chip("A100 SXM 40GB", "a100", 40 * GIB, 1.555e12, 300e9, 25e9, 8),
}


# How each TPU generation's slices are wired, which libtpu must be told when it compiles for a
# slice it cannot see (Cloud TPU system-architecture pages). v4 and v5p are 3-D tori built from
# 4x4x4 cubes: a slice made of whole cubes has wraparound links on every axis, a smaller one has
# none; their chips run as one device of two TensorCores ("megacore"), as jax.devices() shows on a
# real slice. v5e and v6e are 2-D: an axis wraps around only at a full pod edge of 16 chips.
# Compiled without the wraparound a real v5p-128 has, libtpu lowered every FSDP weight gather of
# LLaMA-2 70B as an all-reduce of a zero-filled buffer: 1.14x the HBM bytes and 2x the wire bytes
# of the all-gathers it emits for the torus (BENCHMARKS.md).
_CUBE_TORUS_CHIPS = ("v4", "v5p")
_TORUS_CUBE_EDGE = 4
_POD_EDGE_2D = 16


@dataclasses.dataclass(frozen=True)
class TpuTopology:
    """A TPU slice named the way ``jax.experimental.topologies`` expects, e.g. ``v5p:4x4x4``."""

    name: str  # the full "v5p:4x4x4"
    chip: Chip
    dims: tuple[int, ...]

    @property
    def num_chips(self) -> int:
        return math.prod(self.dims)

    @property
    def generation(self) -> str:
        return self.name.split(":", 1)[0]

    @property
    def chip_config_name(self) -> str:
        """libtpu's name for how a chip presents itself: one megacore device on v4/v5p."""
        return "megacore" if self.generation in _CUBE_TORUS_CHIPS else "default"

    @property
    def wrap(self) -> tuple[bool, bool, bool]:
        """Wraparound links along x, y, z, as the real slice of this shape has them."""
        if self.generation in _CUBE_TORUS_CHIPS:
            whole_cubes = len(self.dims) == 3 and all(d % _TORUS_CUBE_EDGE == 0 for d in self.dims)
            axes = [whole_cubes] * len(self.dims)
        else:
            axes = [d == _POD_EDGE_2D for d in self.dims]
        return tuple((axes + [False] * 3)[:3])

    @property
    def links(self) -> str:
        """The wiring in words, for the plan's header: "torus, wraparound x y z" or "no wraparound"."""
        wrapped = [axis for axis, w in zip("xyz", self.wrap) if w]
        return f"torus, wraparound {' '.join(wrapped)}" if wrapped else "no wraparound"


def parse_tpu_topology(name: str) -> TpuTopology:
    """``"v5p:4x4x4"`` -> TpuTopology; the error lists the known chip generations."""
    m = re.fullmatch(r"(v\d+[a-z]*):(\d+(?:x\d+)*)", name.strip().lower())
    if not m or m.group(1) not in TPU_CHIPS:
        raise ValueError(f"--topology={name!r}: expected <chip>:<AxB[xC]> with chip one of "
                         f"{sorted(TPU_CHIPS)}, e.g. v5p:4x4x4 or v5e:2x2")
    dims = tuple(int(d) for d in m.group(2).split("x"))
    return TpuTopology(f"{m.group(1)}:{m.group(2)}", TPU_CHIPS[m.group(1)], dims)


@dataclasses.dataclass(frozen=True)
class GpuCluster:
    """``num_gpus`` GPUs of one kind, in nodes of ``chip.gpus_per_node`` joined by InfiniBand."""

    chip: Chip
    num_gpus: int

    @property
    def name(self) -> str:
        return f"{self.num_gpus}x{self.chip.name}"

    @property
    def num_nodes(self) -> int:
        return max(1, math.ceil(self.num_gpus / self.chip.gpus_per_node))


def parse_gpu_cluster(spec: str) -> GpuCluster:
    """``"8xH100"``, ``"64xh200"``, ``"16xA100-40GB"`` -> GpuCluster."""
    m = re.fullmatch(r"(\d+)x([a-z0-9-]+)", spec.strip().lower())
    if not m or m.group(2) not in GPU_CHIPS or int(m.group(1)) < 1:
        raise ValueError(f"--gpus={spec!r}: expected <count>x<gpu> with gpu one of "
                         f"{sorted(GPU_CHIPS)}, e.g. 8xH100 or 64xH200")
    return GpuCluster(GPU_CHIPS[m.group(2)], int(m.group(1)))
