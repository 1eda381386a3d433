"""Output directories that CLIs own: never write into, or delete, what the tool did not create.

    with StagedOutput(out_dir, tool="mellama_jax.cli.convert", overwrite=args.overwrite) as staging:
        write everything under `staging`
        # on normal exit: staging is renamed to out_dir; on an exception it is removed

Rules (so no tool ever deletes or mixes into files it did not write): the output must not exist, be an empty directory, or be a directory this same
tool created (an owner file lists the tool and every file it wrote); an owned output is replaced
only with ``overwrite=True``, and only if it holds nothing but the files it lists. The tool writes
into a temporary sibling ``<out>.partial-<host>-<pid>`` and renames it into place at the end, so an
interrupted run leaves either nothing or the old output (plus a partial sibling that the next run
of the tool removes once its process is gone), and a rerun works.
"""
from __future__ import annotations

import datetime
import glob
import json
import os
import shutil
import socket
from typing import Callable

__all__ = ["OWNER_FILE", "OutputDirError", "StagedOutput", "read_owner", "check_output_dir"]

OWNER_FILE = ".mellama_output.json"


class OutputDirError(ValueError):
    """The output directory cannot be used; nothing was changed."""


def read_owner(path: str) -> dict | None:
    try:
        with open(os.path.join(path, OWNER_FILE), encoding="utf-8") as f:
            owner = json.load(f)
        return owner if isinstance(owner, dict) else None
    except (OSError, ValueError):
        return None


def _entries(path: str) -> list[str]:
    """Relative paths of every file (and empty directory) under `path`."""
    out = []
    for root, dirs, files in os.walk(path):
        rel = os.path.relpath(root, path)
        for name in files:
            out.append(os.path.normpath(os.path.join(rel, name)))
        if not dirs and not files and rel != ".":
            out.append(rel + "/")
    return sorted(out)


def check_output_dir(path: str, tool: str, overwrite: bool,
                     legacy_manifest: Callable[[str], list[str] | None] | None = None,
                     is_complete: Callable[[str], bool] | None = None) -> str:
    """"new", "empty" or "owned" (replaceable); raises OutputDirError otherwise.

    `legacy_manifest(path)` may recognise outputs of the tool written before owner files existed
    and return the files they consist of. `is_complete(path)`: an owned output that is not complete
    (e.g. only the report of a failed run) is replaced without `overwrite`.
    """
    if not os.path.exists(path):
        return "new"
    if not os.path.isdir(path):
        raise OutputDirError(f"{path}: exists and is not a directory; nothing was changed")
    names = os.listdir(path)
    if not names:
        return "empty"
    owner = read_owner(path)
    manifest = None
    if owner is not None and owner.get("tool") == tool:
        manifest = list(owner.get("files", [])) + [OWNER_FILE]
    elif owner is None and legacy_manifest is not None:
        manifest = legacy_manifest(path)
    if manifest is None:
        who = f"by {owner.get('tool')!r}" if owner else "by this tool"
        raise OutputDirError(
            f"{path}: directory is not empty and was not created {who} ({len(names)} entries, e.g. "
            f"{sorted(names)[:3]}); refusing to write into it or delete anything. Use a new or empty "
            "directory")
    if not overwrite and (is_complete is None or is_complete(path)):
        raise OutputDirError(f"{path}: already holds output of {tool}; pass --overwrite to replace it")
    foreign = sorted(set(_entries(path)) - {os.path.normpath(m) for m in manifest})
    if foreign:
        raise OutputDirError(
            f"{path}: holds {len(foreign)} file(s) that {tool} did not write (e.g. {foreign[:3]}); "
            "--overwrite replaces only what the tool created, so nothing was changed. Move them away "
            "or use another directory")
    return "owned"


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host (also used by the workdir lock)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class StagedOutput:
    """Context manager: yields a fresh staging directory; on success it becomes `path`."""

    def __init__(self, path: str, tool: str, overwrite: bool = False,
                 legacy_manifest: Callable[[str], list[str] | None] | None = None,
                 is_complete: Callable[[str], bool] | None = None):
        self.path = os.path.abspath(path.rstrip(os.sep) or path)
        self.tool, self.overwrite, self.legacy_manifest = tool, overwrite, legacy_manifest
        self.is_complete = is_complete
        self.host = socket.gethostname()
        self.staging = f"{self.path}.partial-{self.host}-{os.getpid()}"
        self.state = ""

    def check(self) -> str:
        self.state = check_output_dir(self.path, self.tool, self.overwrite, self.legacy_manifest,
                                      self.is_complete)
        return self.state

    def _remove_stale_partials(self) -> None:
        for d in glob.glob(glob.escape(self.path) + ".partial-*"):
            owner = read_owner(d)
            if not owner or owner.get("tool") != self.tool or d == self.staging:
                continue
            if owner.get("host") == self.host and isinstance(owner.get("pid"), int) \
                    and not pid_alive(owner["pid"]):
                shutil.rmtree(d, ignore_errors=True)

    def __enter__(self) -> str:
        self.check()
        parent = os.path.dirname(self.path)
        os.makedirs(parent, exist_ok=True)
        self._remove_stale_partials()
        if os.path.exists(self.staging):
            shutil.rmtree(self.staging)
        os.makedirs(self.staging)
        self._write_owner(files=None)
        return self.staging

    def _write_owner(self, files: list[str] | None) -> None:
        owner = {"tool": self.tool, "host": self.host, "pid": os.getpid(),
                 "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                 "complete": files is not None, "files": files or []}
        tmp = os.path.join(self.staging, OWNER_FILE + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(owner, f, indent=2)
            f.write("\n")
        os.replace(tmp, os.path.join(self.staging, OWNER_FILE))

    def commit(self) -> None:
        files = [e for e in _entries(self.staging) if e != OWNER_FILE]
        self._write_owner(files)
        state = self.check()  # the output may have changed while we worked
        if state in ("new", "empty"):
            if state == "empty":
                os.rmdir(self.path)
            os.rename(self.staging, self.path)
            return
        old = f"{self.path}.old-{self.host}-{os.getpid()}"
        os.rename(self.path, old)
        os.rename(self.staging, self.path)
        shutil.rmtree(old)  # only the files the tool listed (checked by check())

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            shutil.rmtree(self.staging, ignore_errors=True)
