"""The run-directory lock on Cloud Storage: one object, created only if absent, kept alive by a heartbeat.

A bucket has no ``flock`` and nothing that notices a dead process, so the lock is the object
``RUN_DIR/run.lock`` written with a generation-match precondition: ``ifGenerationMatch=0`` creates it
only when no other run holds it (the server decides, atomically), and every later write names the
generation this run last wrote, so two runs can never both believe they hold it. The holder rewrites
it every ``HEARTBEAT_S`` seconds; a lock is stale, and a new run takes it over (again under the
precondition), when its heartbeat is older than ``LEASE_S`` or when it was written on this host by a
process that no longer exists (a killed run restarted on the same VM need not wait for the lease).

Example::

    lock = GcsRunLock("gs://bucket/runs/x").acquire()
    ...
    lock.release()
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import socket
import threading
import time

from justrl_jax.storage import split_url

log = logging.getLogger(__name__)

LEASE_S = 180.0  # a holder silent this long is taken for dead
HEARTBEAT_S = 30.0


class LockHeld(ValueError):
    """Another live run holds the lock; the message names it."""


def _record(started: str, released: bool = False) -> bytes:
    return json.dumps(
        {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": started,
            "heartbeat_unix_s": time.time(),
            "released": released,
        }
    ).encode()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive
    return True


def stale_reason(record: dict, now: float) -> str | None:
    """Why a lock record belongs to a run that is gone, or None while it may be alive."""
    if record.get("released"):
        return "it ended"
    if record.get("host") == socket.gethostname() and not _pid_alive(int(record.get("pid", -1))):
        return f"its process {record.get('pid')} on this host is gone"
    silent = now - float(record.get("heartbeat_unix_s", 0.0))
    if silent > LEASE_S:
        return f"no heartbeat for {silent:.0f} s"
    return None


def _holder(record: dict) -> str:
    return f"host {record.get('host')}, pid {record.get('pid')}, started {record.get('started')}"


class GcsRunLock:
    """The exclusive claim of one run on a ``gs://`` run directory (see the module docstring)."""

    def __init__(self, run_dir: str):
        self.url = f"{str(run_dir).rstrip('/')}/run.lock"
        self._bucket, self._name = split_url(self.url)
        self._blob = None
        self._generation: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._started = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")

    def acquire(self) -> GcsRunLock:
        from google.api_core import exceptions
        from google.cloud import storage

        self._blob = storage.Client().bucket(self._bucket).blob(self._name)
        try:
            self._write(0)
        except exceptions.PreconditionFailed:
            self._take_over_if_stale()
        except exceptions.GoogleAPICallError as e:
            raise ValueError(f"cannot write the run lock {self.url}: {e.message}") from None
        self._thread = threading.Thread(target=self._beat, name="gcs-run-lock", daemon=True)
        self._thread.start()
        return self

    def _write(self, if_generation_match: int, released: bool = False) -> None:
        self._blob.upload_from_string(
            _record(self._started, released), content_type="application/json", if_generation_match=if_generation_match
        )
        self._generation = self._blob.generation

    def _take_over_if_stale(self) -> None:
        from google.api_core import exceptions

        try:
            self._blob.reload()
            generation = self._blob.generation
            record = json.loads(self._blob.download_as_bytes(if_generation_match=generation) or b"{}")
        except (exceptions.NotFound, exceptions.PreconditionFailed):
            record, generation = {}, None  # released or replaced while we looked: try once more below
        except ValueError:
            record = {}  # not our JSON: treated as a dead holder's
        why = stale_reason(record, time.time()) if record else "it is unreadable or gone"
        if why is None:
            raise LockHeld(
                f"run directory {self.url.rsplit('/', 1)[0]} is in use by another run ({_holder(record)}); wait for "
                f"it to end or stop it (a holder silent for {LEASE_S:.0f} s is taken for dead), or choose another "
                f"--run-dir"
            )
        try:
            self._write(generation if generation is not None else 0)
        except exceptions.PreconditionFailed:
            raise LockHeld(f"{self.url}: another run took this run directory just now; choose another one") from None
        if not record.get("released"):
            log.warning("took over the run lock %s from a run that is gone (%s: %s)", self.url, _holder(record), why)

    def _beat(self) -> None:
        from google.api_core import exceptions

        while not self._stop.wait(HEARTBEAT_S):
            try:
                self._write(self._generation)
            except exceptions.PreconditionFailed:
                log.error("the run lock %s was taken over by another run: two runs now write this directory", self.url)
                return
            except Exception as e:  # noqa: BLE001 - a missed heartbeat is retried; the lease is 6 beats long
                log.warning("run lock heartbeat failed (%s); retrying in %.0f s", e, HEARTBEAT_S)

    def release(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
        if self._blob is not None and self._generation is not None:
            # Kept, marked released: like the local lock file, it marks the directory as a run directory.
            try:
                self._write(self._generation, released=True)
            except Exception as e:  # noqa: BLE001 - an unreleased lock is only stale; the next run takes it over
                log.warning("could not release the run lock %s (%s)", self.url, e)
            self._generation = None
