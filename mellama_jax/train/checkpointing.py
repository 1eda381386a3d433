"""Orbax checkpoints of the train state, with exact resume, restore onto any mesh, and integrity.

Layout (shared with mellama_jax.checkpoint.load_pretrained):
    <workdir>/checkpoints/model_config.json   LlamaConfig of the run
    <workdir>/checkpoints/<step>/params/       plain params pytree (StandardSave); "adapters" for LoRA
    <workdir>/checkpoints/<step>/train_state/  {"step", "opt_state", "rng"}
    <workdir>/checkpoints/<step>/meta/         JSON: step, data-pipeline position, mesh, integrity
Orbax writes each step into a temporary directory and renames it when complete, so a crash or a
kill -9 mid-save leaves the previous checkpoints untouched; incomplete ones are ignored.

Integrity (why not trust the files): a saved state is first checked finite (a NaN/inf update never
reaches a checkpoint) and fingerprinted; meta records, per leaf, two sums of the raw bits as
uint32 (plain and position-weighted, both mod 2^32). Integer sums are exact and associative, so the
fingerprint of a restored state matches whatever mesh it is restored onto; a flipped byte,
a zeroed chunk or a tensor from another step does not. ``restore_latest`` walks the steps newest
first and returns the first that restores and matches, moving the skipped newer ones aside to
``<workdir>/checkpoints.corrupt/<step>`` (never deleted: they may be inspected) so that the run can
write those steps again.
"""
from __future__ import annotations

import datetime
import json
import logging
import os
import shutil
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from mellama_jax.checkpoint.orbax_io import write_model_config as _write_model_config
from mellama_jax.train.state import TrainState

log = logging.getLogger(__name__)

ITEMS = ("params", "train_state", "meta")
INTEGRITY_VERSION = 1


class NonFiniteStateError(RuntimeError):
    """The state to be saved holds NaN or inf; nothing was written."""

    def __init__(self, step: int, leaves: list[str]):
        self.step, self.leaves = step, leaves
        super().__init__(f"step {step}: non-finite values in {', '.join(leaves[:5])}"
                         + (f" (+{len(leaves) - 5} more)" if len(leaves) > 5 else ""))


class CheckpointCorruptError(RuntimeError):
    """A checkpoint that cannot be restored or does not match its recorded fingerprint."""


def checkpoint_dir(workdir: str) -> str:
    return os.path.join(os.path.abspath(workdir), "checkpoints")


def quarantine_dir(workdir: str) -> str:
    return os.path.join(os.path.abspath(workdir), "checkpoints.corrupt")


def write_model_config(directory: str, model_config: Any) -> None:
    """<dir>/model_config.json via the checkpoint package's writer (one format for all tools)."""
    if jax.process_index() == 0:
        os.makedirs(directory, exist_ok=True)
        _write_model_config(directory, model_config)


# ------------------------------------------------------------------------------ fingerprints
def _leaf_summary(x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(all finite, sum of bits, position-weighted sum of bits), the sums as uint32 mod 2^32."""
    x = jnp.asarray(x)
    if jnp.issubdtype(x.dtype, jnp.floating):
        finite = jnp.all(jnp.isfinite(x))
        width = jnp.dtype(x.dtype).itemsize * 8
        bits = jax.lax.bitcast_convert_type(x, {8: jnp.uint8, 16: jnp.uint16, 32: jnp.uint32, 64: jnp.uint64}[width])
    else:
        finite = jnp.asarray(True)
        bits = x
    if bits.dtype == jnp.uint64 or bits.dtype == jnp.int64:
        bits = (bits ^ (bits >> 32)).astype(jnp.uint32)
    bits = bits.astype(jnp.uint32).reshape(-1)
    pos = jax.lax.iota(jnp.uint32, bits.shape[0]) * jnp.uint32(2654435761) + jnp.uint32(1)
    return finite, jnp.sum(bits, dtype=jnp.uint32), jnp.sum(bits * pos, dtype=jnp.uint32)


@jax.jit
def _leaves_summary(leaves: list) -> list:
    return [_leaf_summary(x) for x in leaves]


def fingerprint(tree: Any) -> tuple[dict[str, str], list[str]]:
    """({leaf path: "sum:weighted" hex}, [paths of leaves holding NaN/inf]) of a pytree of arrays."""
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    summary = jax.device_get(_leaves_summary([x for _, x in flat]))
    prints, bad = {}, []
    for (keypath, _), (finite, s1, s2) in zip(flat, summary):
        path = jax.tree_util.keystr(keypath)
        prints[path] = f"{int(np.uint32(s1)):08x}:{int(np.uint32(s2)):08x}"
        if not bool(finite):
            bad.append(path)
    return prints, bad


class Checkpointer:
    """CheckpointManager wrapper: async saves, keep-last-K, restore with target shardings."""

    def __init__(self, workdir: str, *, keep: int = 3, async_save: bool = True,
                 params_item: str = "params"):
        if int(keep) < 1:
            raise ValueError(f"config.train.keep_checkpoints={keep}: must be >= 1 (0 would keep no "
                             "checkpoint at all)")
        self.workdir = os.path.abspath(workdir)
        self.directory = checkpoint_dir(workdir)
        self.params_item = params_item
        self._items = (params_item,) + ITEMS[1:]
        self._options = ocp.CheckpointManagerOptions(
            max_to_keep=int(keep), create=True, enable_async_checkpointing=async_save)
        self.manager = ocp.CheckpointManager(self.directory, options=self._options,
                                             item_names=self._items)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def save(self, state: TrainState, meta: dict, *, force: bool = True) -> bool:
        """Checks ``state`` finite and fingerprints it, then starts saving it (returns while the
        write continues in the background). Raises NonFiniteStateError instead of saving NaN/inf."""
        step = int(jax.device_get(state.step))
        train_state = {"step": state.step, "opt_state": state.opt_state, "rng": state.rng}
        p_prints, p_bad = fingerprint(state.params)
        t_prints, t_bad = fingerprint(train_state)
        if p_bad or t_bad:
            raise NonFiniteStateError(step, [f"params{p}" for p in p_bad] + [f"train_state{p}" for p in t_bad])
        meta = {**meta, "step": step, "integrity": {
            "version": INTEGRITY_VERSION, "finite": True, self.params_item: p_prints, "train_state": t_prints}}
        saved = self.manager.save(step, args=ocp.args.Composite(**{
            self.params_item: ocp.args.StandardSave(state.params),
            "train_state": ocp.args.StandardSave(train_state),
            "meta": ocp.args.JsonSave(meta)}), force=force)
        return saved

    def read_meta(self, step: int) -> dict | None:
        """The JSON meta item of one step, or None if missing or unreadable."""
        path = os.path.join(self.directory, str(step), "meta", "metadata")
        try:
            with open(path, encoding="utf-8") as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    def restore(self, target: TrainState, step: int | None = None) -> tuple[TrainState, dict]:
        """Restores onto the shardings carried by ``target`` (ShapeDtypeStructs): any mesh works.

        Raises CheckpointCorruptError when the step cannot be read or does not match the
        fingerprint recorded when it was saved.
        """
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no complete checkpoint in {self.directory}")
        where = os.path.join(self.directory, str(step))
        try:
            restored = self.manager.restore(step, args=ocp.args.Composite(**{
                self.params_item: ocp.args.StandardRestore(target.params),
                "train_state": ocp.args.StandardRestore(
                    {"step": target.step, "opt_state": target.opt_state, "rng": target.rng}),
                "meta": ocp.args.JsonRestore()}))
        except Exception as err:  # noqa: BLE001 - TensorStore/Orbax/JSON: any failure means unusable
            first = str(err).strip().splitlines()[0][:300] if str(err).strip() else ""
            raise CheckpointCorruptError(f"{where}: cannot be restored ({type(err).__name__}: {first})") from err
        ts = restored["train_state"]
        meta = dict(restored["meta"] or {})
        integrity = meta.get("integrity")
        if integrity:
            for item, tree in ((self.params_item, restored[self.params_item]), ("train_state", ts)):
                expected = integrity.get(item, {})
                got, bad = fingerprint(tree)
                wrong = [p for p, v in got.items() if expected.get(p) != v] + bad
                if wrong:
                    raise CheckpointCorruptError(
                        f"{where}: {item}{wrong[0]} does not match the fingerprint recorded when it "
                        f"was saved ({len(wrong)} tensor(s) differ)")
        state = TrainState(step=ts["step"], params=restored[self.params_item],
                           opt_state=ts["opt_state"], rng=ts["rng"])
        return state, meta

    def restore_latest(self, target: TrainState) -> tuple[TrainState | None, dict, int | None, list[str]]:
        """(state, meta, step, skipped) from the newest step that restores cleanly.

        Newer steps that fail are moved to <workdir>/checkpoints.corrupt/ (process 0) and listed
        in ``skipped`` as messages saying which step and why; (None, {}, None, skipped) when no
        step is usable. Every process walks the same steps in the same order.
        """
        skipped: list[str] = []
        for step in sorted(self.all_steps(), reverse=True):
            try:
                state, meta = self.restore(target, step)
            except CheckpointCorruptError as err:
                skipped.append(f"skipped checkpoint step {step}: {err}")
                log.warning("%s", skipped[-1])
                self._quarantine(step)
                continue
            if skipped:
                self._reload()
            return state, meta, step, skipped
        if skipped:
            self._reload()
        return None, {}, None, skipped

    def _quarantine(self, step: int) -> None:
        if jax.process_index() != 0:
            return
        src = os.path.join(self.directory, str(step))
        if not os.path.isdir(src):
            return
        dest_root = quarantine_dir(self.workdir)
        os.makedirs(dest_root, exist_ok=True)
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S")
        dest = os.path.join(dest_root, f"{step}-{stamp}")
        shutil.move(src, dest)
        log.warning("moved %s to %s", src, dest)

    def _reload(self) -> None:
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices("mellama_checkpoint_quarantine")
        self.manager.close()
        self.manager = ocp.CheckpointManager(self.directory, options=self._options,
                                             item_names=self._items)

    def restore_params(self, target_params: Any, step: int | None = None) -> Any:
        step = self.latest_step() if step is None else step
        return self.manager.restore(step, args=ocp.args.Composite(**{
            self.params_item: ocp.args.StandardRestore(target_params)}))[self.params_item]

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
