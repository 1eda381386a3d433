"""One writer per workdir: an advisory lock file holding the owner's host, pid and start time.

Two runs in one workdir used to race inside Orbax (``Directory not empty:
'params.orbax-checkpoint-tmp'``) and write every metrics row twice. Now the second run fails at
once naming the holder.

Mechanism: ``flock`` on ``<workdir>/.lock.p<process_index>`` (every process of a multi-host run
locks its own file, so a second run fails on every host, not only on host 0). The kernel drops a
flock when its process dies, however it dies (kill -9 included), so a stale lock is taken over
without any guessing. Where the filesystem has no flock (some FUSE mounts), the fallback is an
O_EXCL lock file whose owner is checked: on the same host, a dead pid is stale and the file is
moved aside atomically (only one contender's rename wins) before a new one is created; a lock
from another host is never broken automatically.

The lock files are opened with O_NOFOLLOW and must be regular files with one link: a symlink, a
directory, a FIFO or a hard link at that path is refused (WorkdirLockUnsafe, naming the path), so
the owner record is never written through a link into another file.

Taken once per run, by launch.py, before it writes the experiment config; a Python caller of
``train.loop.run`` takes it itself (``with acquire(workdir): loop.run(config, workdir)``).
Re-entrant per process: acquiring a workdir this process already holds is a no-op.
"""
from __future__ import annotations

import datetime
import errno
import fcntl
import json
import os
import socket
import stat
import sys
import threading

from mellama_jax.output_dir import pid_alive as _pid_alive

__all__ = ["WorkdirLocked", "WorkdirLockUnsafe", "WorkdirLock", "acquire", "lock_path"]

_HELD: dict[str, "WorkdirLock"] = {}
_GUARD = threading.Lock()


class WorkdirLocked(RuntimeError):
    """Another live run holds the workdir; the message names its host, pid and start time."""


class WorkdirLockUnsafe(WorkdirLocked):
    """The lock path is not a plain file (a symlink, directory, FIFO, hard link): the workdir cannot
    be locked without writing into something else; the message names the path."""


_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def _open_lock_file(path: str, flags: int) -> int:
    """os.open(path) that never follows a symlink and returns only a regular file with one link."""
    try:
        fd = os.open(path, flags | _NOFOLLOW | getattr(os, "O_NONBLOCK", 0), 0o644)
    except OSError as err:
        if err.errno in (errno.ELOOP, errno.EISDIR, errno.ENXIO, errno.EMLINK) or (
                err.errno == errno.EEXIST and os.path.islink(path)):
            raise WorkdirLockUnsafe(_unsafe_message(path)) from None
        raise
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
        os.close(fd)
        raise WorkdirLockUnsafe(_unsafe_message(path))
    return fd


def _unsafe_message(path: str) -> str:
    try:
        st = os.lstat(path)
        kind = ("a symlink" if stat.S_ISLNK(st.st_mode) else "a directory" if stat.S_ISDIR(st.st_mode)
                else f"a file with {st.st_nlink} hard links" if stat.S_ISREG(st.st_mode)
                else "not a regular file")
    except OSError:
        kind = "not a regular file"
    return (f"lock file {path} is {kind}; refusing to write the lock through it. Remove it (it is not "
            "a lock this tool wrote) and rerun")


def lock_path(workdir: str, process_index: int = 0) -> str:
    return os.path.join(os.path.abspath(workdir), f".lock.p{process_index}")


def _owner() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(),
            "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "argv": " ".join(sys.argv[:1] + [a for a in sys.argv[1:] if a.startswith("--workdir")])}


def _read_owner(path: str) -> dict:
    try:
        fd = os.open(path, os.O_RDONLY | _NOFOLLOW | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return {}
    try:
        with os.fdopen(fd, encoding="utf-8") as f:
            return json.loads(f.read() or "{}")
    except (OSError, ValueError):
        return {}


def _describe(owner: dict) -> str:
    if not owner:
        return "another process (owner unknown)"
    return f"pid {owner.get('pid')} on host {owner.get('host')!r} (since {owner.get('started')})"


class WorkdirLock:
    """Holds the lock until ``release()`` (or process exit). Use ``acquire(workdir)``."""

    def __init__(self, workdir: str, process_index: int = 0):
        self.workdir = os.path.abspath(workdir)
        self.path = lock_path(workdir, process_index)
        self._fd: int | None = None
        self._mode = ""
        self._count = 0

    # ------------------------------------------------------------------ flock (preferred)
    def _try_flock(self) -> bool:
        fd = _open_lock_file(self.path, os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            if err.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise WorkdirLocked(self._held_message(_read_owner(self.path))) from None
            if err.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                return False  # no flock on this filesystem: use the pid-file fallback
            raise
        os.ftruncate(fd, 0)
        os.write(fd, (json.dumps(_owner()) + "\n").encode())
        os.fsync(fd)
        self._fd, self._mode = fd, "flock"
        return True

    # ------------------------------------------------------------------ O_EXCL pid file (fallback)
    def _try_pidfile(self) -> None:
        path = self.path + ".pid"
        for _ in range(3):
            try:
                fd = _open_lock_file(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
            except FileExistsError:
                try:
                    st = os.lstat(path)
                    if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
                        raise WorkdirLockUnsafe(_unsafe_message(path)) from None
                except FileNotFoundError:
                    continue  # removed meanwhile: retry the create
                owner = _read_owner(path)
                same_host = owner.get("host") == socket.gethostname()
                if same_host and isinstance(owner.get("pid"), int) and not _pid_alive(owner["pid"]):
                    stale = f"{path}.stale-{os.getpid()}"
                    try:
                        os.rename(path, stale)  # atomic: one contender takes over
                    except FileNotFoundError:
                        continue  # another process moved it first; retry the create
                    os.remove(stale)
                    continue
                raise WorkdirLocked(self._held_message(owner) + (
                    "" if same_host else f"; if that run is gone, remove {path}")) from None
            os.write(fd, (json.dumps(_owner()) + "\n").encode())
            os.close(fd)
            self._mode = "pidfile"
            return
        raise WorkdirLocked(f"{self.workdir}: could not take the lock file {path}")

    def _held_message(self, owner: dict) -> str:
        return (f"workdir {self.workdir} is in use by {_describe(owner)}: one run per workdir "
                f"(lock {self.path}). Wait for it to finish, stop it, or use another --workdir")

    def acquire(self) -> "WorkdirLock":
        os.makedirs(self.workdir, exist_ok=True)
        if not self._try_flock():
            self._try_pidfile()
        return self

    def release(self) -> None:
        if self._mode == "flock" and self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
        elif self._mode == "pidfile":
            try:
                os.remove(self.path + ".pid")
            except FileNotFoundError:
                pass
        self._mode = ""


class _Handle:
    """What ``acquire`` returns: a context manager that drops one reference."""

    def __init__(self, key: str):
        self._key, self._released = key, False

    def release(self) -> None:
        if self._released:
            return
        self._released = True
        with _GUARD:
            lock = _HELD.get(self._key)
            if lock is None:
                return
            lock._count -= 1
            if lock._count <= 0:
                lock.release()
                del _HELD[self._key]

    def __enter__(self) -> "_Handle":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def acquire(workdir: str, process_index: int | None = None) -> _Handle:
    """Takes (or re-enters) this process's lock on `workdir`; raises WorkdirLocked if held elsewhere."""
    if process_index is None:
        process_index = _process_index()
    key = lock_path(workdir, process_index)
    with _GUARD:
        lock = _HELD.get(key)
        if lock is None:
            lock = WorkdirLock(workdir, process_index).acquire()
            _HELD[key] = lock
        lock._count += 1
    return _Handle(key)


def _process_index() -> int:
    """jax.process_index() if jax is already imported (after distributed init), else 0."""
    jax = sys.modules.get("jax")
    try:
        return int(jax.process_index()) if jax is not None else 0
    except Exception:  # noqa: BLE001 - backend not initialised yet: single process
        return 0
