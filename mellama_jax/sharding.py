"""Device mesh, logical-axis sharding rules and multi-host helpers.

Parallelism is a config change: the model names the logical axes of every parameter and
activation ("embed", "heads", "activation_batch", ...), the config holds a short table of
rules mapping those names to the mesh axes ``data``, ``fsdp`` and ``tensor``, and this module
turns the two into ``NamedSharding`` s. Nothing here imports TensorFlow or ml_collections; the
config objects only need attribute access (a ConfigDict or a SimpleNamespace).
"""
from __future__ import annotations

import logging
import math
import os
from typing import Any, Iterable, Mapping, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

log = logging.getLogger(__name__)

MESH_AXES: tuple[str, ...] = ("data", "fsdp", "tensor")
# The axes a batch is split over: pure data parallelism and FSDP both see distinct examples.
BATCH_AXES: tuple[str, ...] = ("data", "fsdp")

# logical name -> mesh axis / axes / None. Order does not matter; a mesh axis that is already
# used by an earlier dimension of the same array is dropped for later ones.
DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    # parameters
    ("layers", None),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("mlp", "tensor"),
    ("norm", None),
    # activations
    ("activation_batch", ("data", "fsdp")),
    ("activation_length", None),
    ("activation_embed", None),
    ("activation_heads", "tensor"),
    ("activation_kv_heads", "tensor"),
    ("activation_head_dim", None),
    ("activation_mlp", "tensor"),
    ("activation_vocab", "tensor"),
)


# --------------------------------------------------------------------------------------------
# Mesh
# --------------------------------------------------------------------------------------------
def resolve_mesh_shape(sizes: Sequence[int], num_devices: int) -> tuple[int, ...]:
    """Fills at most one ``-1`` so that the product of ``sizes`` equals ``num_devices``."""
    sizes = [int(s) for s in sizes]
    if sum(s == -1 for s in sizes) > 1:
        raise ValueError(f"config.mesh: at most one of {MESH_AXES} may be -1, got {sizes}")
    for name, s in zip(MESH_AXES, sizes):
        if s == 0 or s < -1:
            raise ValueError(f"config.mesh.{name}={s}: expected a positive size or -1")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if num_devices % known:
            raise ValueError(
                f"config.mesh={dict(zip(MESH_AXES, sizes))}: {num_devices} devices are not "
                f"divisible by the fixed axes (product {known})")
        sizes[sizes.index(-1)] = num_devices // known
    if math.prod(sizes) != num_devices:
        raise ValueError(
            f"config.mesh={dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices, "
            f"but {num_devices} are available (use -1 for one axis to fill the rest)")
    return tuple(sizes)


def make_mesh(mesh_config: Any, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """Builds the ("data", "fsdp", "tensor") mesh from ``config.mesh`` (-1 fills the rest)."""
    devices = list(jax.devices() if devices is None else devices)
    shape = resolve_mesh_shape(
        (mesh_config.data, mesh_config.fsdp, mesh_config.tensor), len(devices))
    auto = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)
    # A whole slice: all local devices, or the devices of an ahead-of-time TPU topology
    # (mellama_jax.plan), which are not this process's devices.
    whole = len(devices) == len(jax.devices()) or devices[0].platform != jax.devices()[0].platform
    if whole:
        # jax.make_mesh orders devices for the physical topology (ICI rings on TPU, NVLink).
        try:
            return jax.make_mesh(shape, MESH_AXES, axis_types=auto, devices=devices)
        except NotImplementedError:
            # e.g. (1, 8, 8) on a v5p 4x4x4 torus: no assignment keeps every mesh axis on whole
            # physical axes; split physical axes (as MaxText does) rather than fail on the pod.
            from jax.experimental import mesh_utils
            grid = mesh_utils.create_device_mesh(shape, devices, allow_split_physical_axes=True)
            return Mesh(grid, MESH_AXES, axis_types=auto)
    return Mesh(np.asarray(devices).reshape(shape), MESH_AXES, axis_types=auto)


def rules_as_tuple(rules: Iterable[Any]) -> tuple[tuple[str, Any], ...]:
    """Normalises config rules (lists from YAML/JSON, tuples from Python) to a tuple table."""
    out = []
    for i, rule in enumerate(rules):
        if len(rule) != 2:
            raise ValueError(f"config.sharding.rules[{i}]={rule!r}: expected (logical, mesh_axes)")
        name, axes = rule
        if isinstance(axes, list):
            axes = tuple(axes)
        out.append((str(name), axes))
    return tuple(out)


def _mesh_axes_for(name: str | None, rules: Mapping[str, Any]) -> tuple[str, ...]:
    if name is None:
        return ()
    if name not in rules:
        raise KeyError(f"logical axis {name!r} has no entry in config.sharding.rules "
                       f"(known: {sorted(rules)})")
    axes = rules[name]
    if axes is None:
        return ()
    return (axes,) if isinstance(axes, str) else tuple(axes)


def logical_to_mesh_spec(logical_spec: P, rules: Iterable[Any], mesh: Mesh,
                         shape: Sequence[int] | None = None, name: str = "") -> P:
    """Maps one PartitionSpec of logical names to mesh axes.

    A mesh axis is used at most once per array, and a dimension whose size is not divisible by
    the mesh axes it maps to is replicated instead (logged once), so e.g. 8 KV heads on
    tensor=16 or an odd vocabulary still run, only less sharded.
    """
    table = dict(rules_as_tuple(rules))
    used: set[str] = set()
    out = []
    for dim, logical in enumerate(logical_spec):
        names = logical if isinstance(logical, tuple) else (logical,)
        axes = [a for n in names for a in _mesh_axes_for(n, table)]
        axes = [a for a in axes if a not in used and mesh.shape.get(a, 1) > 1]
        for a in axes:
            if a not in mesh.shape:
                raise KeyError(f"config.sharding.rules maps {logical!r} to unknown mesh axis {a!r}")
        if axes and shape is not None:
            size = math.prod(mesh.shape[a] for a in axes)
            if shape[dim] % size:
                log.info("sharding: %s dim %d (%s, size %d) is not divisible by mesh axes %s "
                         "(size %d); replicating that dim", name or "array", dim, logical,
                         shape[dim], axes, size)
                axes = []
        used.update(axes)
        out.append(None if not axes else axes[0] if len(axes) == 1 else tuple(axes))
    while out and out[-1] is None:
        out.pop()
    return P(*out)


def logical_to_sharding(logical_specs: Any, mesh: Mesh, rules: Iterable[Any],
                        shapes: Any | None = None) -> Any:
    """Tree of logical PartitionSpecs (+ optional same-structure shapes) -> tree of NamedSharding."""
    is_spec = lambda x: isinstance(x, P)
    rules = rules_as_tuple(rules)
    if shapes is None:
        return jax.tree.map(lambda s: NamedSharding(mesh, logical_to_mesh_spec(s, rules, mesh)),
                            logical_specs, is_leaf=is_spec)
    paths_specs = jax.tree_util.tree_flatten_with_path(logical_specs, is_leaf=is_spec)[0]
    shape_leaves = jax.tree.leaves(shapes)
    if len(shape_leaves) != len(paths_specs):
        raise ValueError(f"logical specs ({len(paths_specs)} leaves) and shapes "
                         f"({len(shape_leaves)} leaves) differ in structure")
    shardings = [
        NamedSharding(mesh, logical_to_mesh_spec(spec, rules, mesh, tuple(x.shape),
                                                 jax.tree_util.keystr(path)))
        for (path, spec), x in zip(paths_specs, shape_leaves)]
    treedef = jax.tree.structure(logical_specs, is_leaf=is_spec)
    return jax.tree.unflatten(treedef, shardings)


def mesh_context(mesh: Mesh | None, rules: Iterable[Any] | None = None):
    """The one way this project makes `mesh` (and optional Flax logical-axis `rules`) current.

    Uses the pinned JAX's API for a current mesh (`jax.set_mesh`, else `jax.sharding.use_mesh`, else the
    legacy `with mesh:`), so callers never touch a deprecated spelling; `mesh=None` is a no-op context.
    """
    import contextlib

    stack = contextlib.ExitStack()
    if mesh is not None:
        if hasattr(jax, "set_mesh"):
            stack.enter_context(jax.set_mesh(mesh))
        elif hasattr(jax.sharding, "use_mesh"):  # pragma: no cover - older JAX
            stack.enter_context(jax.sharding.use_mesh(mesh))
        else:  # pragma: no cover - oldest JAX
            stack.enter_context(mesh)
    if rules is not None:
        import flax.linen as nn

        stack.enter_context(nn.logical_axis_rules(rules_as_tuple(rules)))
    return stack


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Sharding of a [batch, ...] array: batch over ("data", "fsdp"), the rest replicated."""
    return NamedSharding(mesh, P(BATCH_AXES))


def batch_shards(mesh: Mesh) -> int:
    """How many ways the global batch is split (data x fsdp)."""
    return mesh.shape["data"] * mesh.shape["fsdp"]


# --------------------------------------------------------------------------------------------
# Multi-host
# --------------------------------------------------------------------------------------------
def detect_cluster() -> str | None:
    """Names the multi-process environment we run in, if any ("slurm", "tpu", "env")."""
    env = os.environ
    if env.get("JAX_COORDINATOR_ADDRESS"):
        return "env"
    if "SLURM_JOB_ID" in env and int(env.get("SLURM_NTASKS", "1")) > 1:
        return "slurm"
    # Multi-host Cloud TPU VMs export the worker list; single-host TPUs need no initialisation.
    hosts = env.get("TPU_WORKER_HOSTNAMES", "")
    if hosts and len(hosts.split(",")) > 1:
        return "tpu"
    if env.get("MEGASCALE_COORDINATOR_ADDRESS"):
        return "tpu"
    return None


def maybe_initialize_distributed(dist_config: Any) -> bool:
    """Calls ``jax.distributed.initialize`` when the config or the environment asks for it.

    ``dist_config.mode``: "auto" (initialise when SLURM / multi-host TPU / JAX_COORDINATOR_*
    is detected), "on" (always; uses the explicit fields or the environment), "off".
    Must run before anything touches a jax device. Returns whether it initialised.
    """
    mode = getattr(dist_config, "mode", "auto")
    if mode not in ("auto", "on", "off"):
        raise ValueError(f"config.distributed.mode={mode!r}: expected 'auto', 'on' or 'off'")
    cluster = detect_cluster()
    address = getattr(dist_config, "coordinator_address", "") or None
    if mode == "off" or (mode == "auto" and cluster is None and not address):
        return False
    env = os.environ
    kwargs: dict[str, Any] = {}
    address = address or env.get("JAX_COORDINATOR_ADDRESS") or None
    num = getattr(dist_config, "num_processes", -1)
    pid = getattr(dist_config, "process_id", -1)
    if num is None or num < 0:
        num = int(env["JAX_NUM_PROCESSES"]) if "JAX_NUM_PROCESSES" in env else None
    if pid is None or pid < 0:
        pid = int(env["JAX_PROCESS_ID"]) if "JAX_PROCESS_ID" in env else None
    if address:
        kwargs.update(coordinator_address=address, num_processes=num, process_id=pid)
    local_ids = getattr(dist_config, "local_device_ids", None)
    if local_ids:
        kwargs["local_device_ids"] = list(local_ids)
    # CPU processes need a cross-process collectives backend; gloo ships with jaxlib.
    platforms = env.get("JAX_PLATFORMS", "") or str(jax.config.jax_platforms or "")
    if platforms.split(",")[0] == "cpu":
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    log.info("jax.distributed.initialize(%s) [cluster=%s]", kwargs, cluster)
    jax.distributed.initialize(**kwargs)
    return True


def host_local_to_global(local: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Turns this process's slice of a batch into global arrays sharded over the batch axes.

    Each process holds ``global_batch // process_count`` rows (its own slice, never the whole
    batch); the result has the global batch as leading dimension.
    """
    sharding = batch_sharding(mesh)
    out = {}
    for k, v in local.items():
        v = np.asarray(v)
        global_shape = (v.shape[0] * jax.process_count(),) + v.shape[1:]
        out[k] = jax.make_array_from_process_local_data(sharding, v, global_shape)
    return out
