"""Ownership of a run directory: one run at a time, and never a directory that holds other files.

A run holds an exclusive ``fcntl.flock`` on ``RUN_DIR/run.lock`` for its lifetime. The OS releases
it when the process ends in any way (SIGKILL included), so a dead run never leaves it stuck; a
second run on the same directory is refused at once, naming the holder (host, pid, start time)
that the lock file records. On a multi-host run process 0 holds it for all.

A directory that exists, is not empty and is not a justrl_jax run directory (it has neither
``run.lock``, nor ``checkpoints/``, nor ``demo_assets/``) is refused, its files untouched, unless
the user adopts it explicitly (``train --adopt-run-dir``). A start that fails leaves no directory
it created behind.

A ``gs://`` run directory is claimed by :class:`justrl_jax.gcs_lock.GcsRunLock` instead (a bucket has no
``flock``: a generation-match precondition and a heartbeat); the other rules are the same.

Example::

    with RunDirLock("runs/deepseek") as lock:
        ...  # the whole run
"""

from __future__ import annotations

import datetime
import fcntl
import json
import os
import shutil
import socket
from pathlib import Path

from justrl_jax.storage import is_remote, rmtree, run_path

LOCK_FILE = "run.lock"
# Entries only a justrl_jax run creates: one of them marks a directory as a run directory.
_RUN_MARKERS = (LOCK_FILE, "checkpoints", "demo_assets")


class RunDirError(ValueError):
    """The run directory cannot be used (in use, foreign, not writable); the message says why."""


def is_run_dir(path: str | Path) -> bool:
    """True when ``path`` holds something only a justrl_jax run writes."""
    return any((run_path(path) / name).exists() for name in _RUN_MARKERS)


class RunDirLock:
    """The exclusive claim of one run on its directory (see the module docstring)."""

    def __init__(self, run_dir: str | Path, *, adopt: bool = False):
        self.run_dir = run_path(run_dir)
        self.adopt = adopt
        self.created: Path | None = None  # the topmost directory this start made (a failed start removes it)
        self.was_empty = False  # it was empty (so a failed start empties it again)
        self._fd: int | None = None
        self._remote = None  # the GcsRunLock of a gs:// run directory

    def acquire(self) -> RunDirLock:
        if is_remote(self.run_dir):
            return self._acquire_remote()
        d = self.run_dir
        if d.exists() and not d.is_dir():
            raise RunDirError(f"run directory {d} is a file; name a directory")
        if d.is_dir() and any(d.iterdir()) and not is_run_dir(d) and not self.adopt:
            shown = ", ".join(sorted(p.name for p in d.iterdir())[:5])
            raise RunDirError(
                f"run directory {d} is not empty ({shown}...) and is not a justrl_jax run directory; "
                f"choose a new or empty --run-dir, or pass --adopt-run-dir to run there anyway"
            )
        self.was_empty = d.is_dir() and not any(d.iterdir())
        if not d.exists():
            top = d.absolute()
            while not top.parent.exists():
                top = top.parent
            try:
                d.mkdir(parents=True)
            except OSError as e:
                raise RunDirError(f"cannot create run directory {d}: {e.strerror}") from e
            self.created = top
        if not os.access(d, os.W_OK | os.X_OK):
            raise RunDirError(f"run directory {d} is not writable; fix its permissions or choose another --run-dir")
        try:
            fd = os.open(d / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise RunDirError(f"run directory {d} is not writable ({e.strerror}); choose another --run-dir") from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise RunDirError(
                f"run directory {d} is in use by another run ({holder}); wait for it to end or stop it, "
                f"or choose another --run-dir"
            ) from None
        self._fd = fd
        record = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        }
        # Written in place under the lock (the file itself is the lock: it is never replaced).
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        os.fsync(fd)
        return self

    def _acquire_remote(self) -> RunDirLock:
        from justrl_jax.gcs_lock import GcsRunLock, LockHeld

        d = run_path(self.run_dir)
        entries = sorted(p.name for p in d.iterdir()) if d.is_dir() else []
        if entries and not is_run_dir(d) and not self.adopt:
            raise RunDirError(
                f"run directory {d} is not empty ({', '.join(entries[:5])}...) and is not a justrl_jax run "
                f"directory; choose a new or empty --run-dir, or pass --adopt-run-dir to run there anyway"
            )
        self.was_empty = not entries  # a prefix with no objects: everything a failed start wrote is its own
        try:
            self._remote = GcsRunLock(str(d)).acquire()
        except LockHeld as e:
            raise RunDirError(str(e)) from None
        return self

    def release(self) -> None:
        if self._remote is not None:
            self._remote.release()
            self._remote = None
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def discard_failed_start(self) -> None:
        """Releases the lock; removes the directory (and the parents) this start created, and empties it
        again when it was empty (everything in it is then this start's own)."""
        if is_remote(self.run_dir):
            held = self._remote is not None
            self.release()
            if held and self.was_empty:
                rmtree(self.run_dir)
            return
        held = self._fd is not None
        self.release()
        if held and self.created is not None:
            shutil.rmtree(self.created, ignore_errors=True)
        elif held and self.was_empty:
            for child in self.run_dir.iterdir():
                shutil.rmtree(child) if child.is_dir() else child.unlink()

    def __enter__(self) -> RunDirLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read_holder(fd: int) -> str:
    try:
        record = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
        return f"host {record['host']}, pid {record['pid']}, started {record['started']}"
    except (ValueError, KeyError, UnicodeDecodeError):
        return "holder unknown: the lock file is being written"
