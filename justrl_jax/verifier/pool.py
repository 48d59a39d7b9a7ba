"""A pool of long-lived CPU worker processes with hard deadlines.

Decisions, and why:

* **Fresh interpreters, not fork and not multiprocessing's spawn.** Each worker is
  ``python -I -c worker.BOOTSTRAP`` started with ``subprocess`` (fork + immediate exec, safe in a
  threaded JAX process). multiprocessing's spawn would re-run the parent's ``__main__`` module in
  every child (the trainer, which imports JAX); this way a worker imports only the verifier and
  SymPy. Messages go over a socket pair wrapped in ``multiprocessing.connection.Connection``.
* **Deadlines by SIGKILL.** A signal-based timeout cannot interrupt a big-integer operation in C
  and works only in the main thread. The dispatcher thread times each sample from the moment its
  worker starts it, kills the worker at ``sample_timeout_s`` and starts a replacement; the sample
  scores as ``timeout`` and the batch goes on. A batch past ``batch_timeout_s`` gets ``timeout``
  for every unfinished sample (its running workers are killed too).
* **Crashes are contained.** A worker that dies (segfault, OOM kill, ``MemoryError`` under its
  ``RLIMIT_AS`` cap) fails only the sample it was running (``error``); its queued samples are
  re-queued. Workers are recycled after ``max_tasks_per_worker`` samples.
* **No orphans.** Workers ignore SIGINT and die with the parent (``PR_SET_PDEATHSIG`` plus EOF on
  their pipe); ``close()`` stops them (a stop message, then SIGKILL), and a ``weakref.finalize``
  (run at interpreter exit) kills any that remain. Only the dispatcher thread starts workers,
  because PDEATHSIG follows the thread that forked.
* **Any thread may submit.** ``submit`` only appends to a locked queue and wakes the dispatcher;
  results come back through ``Batch.result``.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import json
import os
import socket
import subprocess
import sys
import threading
import time
import weakref
from multiprocessing.connection import Connection, wait
from typing import Any

from justrl_jax.verifier.worker import BOOTSTRAP

_IN_FLIGHT_PER_WORKER = 2  # one running, one queued behind it: hides the round-trip latency
_START_TIMEOUT_S = 120.0  # a worker that is not ready by then is killed and replaced
_MAX_START_FAILURES = 3  # consecutive workers dying before "ready": the pool is broken
_STOP_GRACE_S = 1.0


class PoolError(RuntimeError):
    """The pool is closed or cannot start workers."""


@dataclasses.dataclass(frozen=True)
class TaskResult:
    ok: bool  # False: the task failed (see error)
    value: Any = None
    error: str = ""  # "timeout", "crash", "closed" or the worker's exception text


class Batch:
    """A submitted batch; ``result()`` waits for every task's TaskResult (in submission order)."""

    def __init__(self, size: int, deadline: float):
        self.deadline = deadline
        self.results: list[TaskResult | None] = [None] * size
        self.remaining = size
        self.done = threading.Event()
        if size == 0:
            self.done.set()

    def _finish(self, index: int, result: TaskResult) -> None:
        if self.results[index] is None:
            self.results[index] = result
            self.remaining -= 1
            if self.remaining == 0:
                self.done.set()

    def result(self, timeout: float | None = None) -> list[TaskResult]:
        if not self.done.wait(timeout):
            raise TimeoutError(f"batch not finished after {timeout} s")
        return list(self.results)  # type: ignore[arg-type]


@dataclasses.dataclass
class _Task:
    task_id: int
    kind: str
    args: tuple
    batch: Batch
    index: int
    started: float = 0.0  # monotonic time its worker began it (set when it reaches the head)


@dataclasses.dataclass
class _Worker:
    proc: subprocess.Popen
    conn: Connection
    spawned: float
    ready: bool = False
    served: int = 0
    in_flight: collections.deque = dataclasses.field(default_factory=collections.deque)


class _Registry:
    """The live worker processes, shared with the exit-time finalizer (which must not hold the pool)."""

    def __init__(self):
        self.procs: set[subprocess.Popen] = set()
        self.lock = threading.Lock()
        self.closed = False  # set by kill_all: no worker may be started afterwards

    def kill_all(self) -> None:
        with self.lock:
            self.closed = True
            procs = list(self.procs)
            self.procs.clear()
        for proc in procs:
            _kill(proc)


def _kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        try:
            proc.kill()
        except OSError:
            pass
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL is not ignorable
        pass


class WorkerPool:
    """``workers`` long-lived processes running ``worker.main``; see the module docstring.

    Example::

        with WorkerPool(workers=2, sample_timeout_s=2.0) as pool:
            batch = pool.submit([("judge", ("1/2", "0.5"))], batch_timeout_s=60)
            batch.result()   # [TaskResult(ok=True, value=(True, 'ok'))]
    """

    def __init__(
        self,
        workers: int = 2,
        sample_timeout_s: float = 2.0,
        max_tasks_per_worker: int = 5000,
        memory_limit_mb: int = 2048,
    ):
        if workers < 1:
            raise ValueError(f"verifier.workers must be >= 1, got {workers}")
        if sample_timeout_s <= 0:
            raise ValueError(f"verifier.sample_timeout_s must be > 0, got {sample_timeout_s}")
        self.size = workers
        self.sample_timeout_s = float(sample_timeout_s)
        self.max_tasks_per_worker = max_tasks_per_worker
        self.memory_limit_mb = memory_limit_mb
        self._lock = threading.Lock()
        self._queue: collections.deque[_Task] = collections.deque()
        self._batches: list[Batch] = []
        self._ids = itertools.count()
        self._closing = False
        self._broken: str | None = None
        self._start_failures = 0
        self._workers: list[_Worker] = []
        self._registry = _Registry()
        self._wake_recv, self._wake_send = socket.socketpair()
        self._wake_recv.setblocking(False)
        self.restarts = 0  # workers replaced after a kill or a crash (for logs and tests)
        self._finalizer = weakref.finalize(self, self._registry.kill_all)
        self._thread = threading.Thread(target=self._run, name="verifier-pool", daemon=True)
        self._thread.start()

    # -- public ---------------------------------------------------------------------------
    def submit(self, calls: list[tuple[str, tuple]], batch_timeout_s: float) -> Batch:
        """Queues ``(kind, args)`` calls; never blocks. Raises PoolError once closed or broken."""
        batch = Batch(len(calls), time.monotonic() + batch_timeout_s)
        with self._lock:
            if self._closing:
                raise PoolError("the verifier pool is closed")
            if self._broken:
                raise PoolError(f"the verifier pool is broken: {self._broken}")
            if calls:
                self._batches.append(batch)
                for index, (kind, args) in enumerate(calls):
                    self._queue.append(_Task(next(self._ids), kind, tuple(args), batch, index))
        self._wake()
        return batch

    def pids(self) -> list[int]:
        """Process ids of the current workers (started or starting)."""
        with self._registry.lock:
            return [p.pid for p in self._registry.procs]

    def wait_ready(self, timeout: float = 120.0) -> bool:
        """Waits until all ``size`` workers have started (imports done); True if they did."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            workers = list(self._workers)
            if len(workers) == self.size and all(w.ready for w in workers):
                return True
            if self._broken or self._closing:
                return False
            time.sleep(0.02)
        return False

    def close(self) -> None:
        """Stops the workers and fails unfinished batches (status ``closed``). Idempotent."""
        with self._lock:
            self._closing = True
        self._wake()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout=30)
        self._registry.kill_all()
        for sock in (self._wake_recv, self._wake_send):
            try:
                sock.close()
            except OSError:
                pass

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- dispatcher thread ----------------------------------------------------------------
    def _wake(self) -> None:
        try:
            self._wake_send.send(b"x")
        except OSError:
            pass

    def _run(self) -> None:
        try:
            while True:
                with self._lock:
                    if self._closing:
                        break
                self._fill()
                self._assign()
                self._poll(self._next_timeout())
                self._enforce_deadlines()
        except Exception as e:  # pragma: no cover - a bug here must not hang callers
            with self._lock:
                self._broken = f"dispatcher failed: {type(e).__name__}: {e}"
        finally:
            self._shutdown()

    def _spawn(self) -> _Worker:
        parent_sock, child_sock = socket.socketpair()
        child_fd = child_sock.fileno()
        paths = [p for p in sys.path if p]
        cmd = [
            sys.executable,
            "-I",
            "-c",
            BOOTSTRAP,
            str(child_fd),
            str(self.memory_limit_mb),
            json.dumps(paths),
            str(os.getpid()),
        ]
        try:
            # Started and registered under the registry lock: the exit-time kill_all (which runs
            # while this daemon thread may still be alive) either sees the new process or stops it
            # from being started at all.
            with self._registry.lock:
                if self._registry.closed:
                    parent_sock.close()
                    raise OSError("the verifier pool is shutting down")
                proc = subprocess.Popen(cmd, pass_fds=(child_fd,), stdin=subprocess.DEVNULL, close_fds=True)
                self._registry.procs.add(proc)
        finally:
            child_sock.close()
        return _Worker(proc, Connection(parent_sock.detach()), time.monotonic())

    def _fill(self) -> None:
        while len(self._workers) < self.size and not self._broken:
            try:
                self._workers.append(self._spawn())
            except OSError as e:
                self._fail_pool(f"cannot start a worker: {e}")

    def _assign(self) -> None:
        now = time.monotonic()
        for worker in self._workers:
            if not worker.ready or worker.served + len(worker.in_flight) >= self.max_tasks_per_worker:
                continue
            while len(worker.in_flight) < _IN_FLIGHT_PER_WORKER:
                with self._lock:
                    task = self._next_task()
                if task is None:
                    return
                try:
                    worker.conn.send((task.task_id, task.kind, task.args))
                except (OSError, ValueError):
                    with self._lock:
                        self._queue.appendleft(task)
                    break
                if not worker.in_flight:
                    task.started = now
                worker.in_flight.append(task)

    def _next_task(self) -> _Task | None:
        while self._queue:
            task = self._queue.popleft()
            if task.batch.results[task.index] is None:  # not already failed by its batch deadline
                return task
        return None

    def _next_timeout(self) -> float:
        now = time.monotonic()
        deadlines = [now + 1.0]
        for worker in self._workers:
            if worker.in_flight:
                deadlines.append(worker.in_flight[0].started + self.sample_timeout_s)
            elif not worker.ready:
                deadlines.append(worker.spawned + _START_TIMEOUT_S)
        with self._lock:
            deadlines.extend(b.deadline for b in self._batches)
        return max(0.0, min(deadlines) - now)

    def _poll(self, timeout: float) -> None:
        conns = {w.conn: w for w in self._workers}
        try:
            ready = wait([*conns, self._wake_recv], timeout)
        except OSError:  # pragma: no cover - a connection closed under us; the next loop cleans up
            return
        for obj in ready:
            if obj is self._wake_recv:
                try:
                    while self._wake_recv.recv(4096):
                        pass
                except (BlockingIOError, OSError):
                    pass
                continue
            worker = conns[obj]
            try:
                # _handle may retire or replace the worker (closing its pipe): stop reading then.
                while worker in self._workers and worker.conn.poll():
                    self._handle(worker, worker.conn.recv())
            except (EOFError, OSError):
                if worker in self._workers:
                    self._replace(worker, TaskResult(False, error="crash"))

    def _handle(self, worker: _Worker, message) -> None:
        task_id, ok, value = message
        if task_id == "ready":
            worker.ready = True
            self._start_failures = 0
            return
        if not worker.in_flight or worker.in_flight[0].task_id != task_id:  # pragma: no cover
            return
        task = worker.in_flight.popleft()
        worker.served += 1
        if worker.in_flight:
            worker.in_flight[0].started = time.monotonic()
        self._complete(task, TaskResult(True, value) if ok else TaskResult(False, error=str(value)))
        if not ok and value == "MemoryError":  # the worker exits after it: requeue what it holds
            self._replace(worker, None)
        elif worker.served >= self.max_tasks_per_worker and not worker.in_flight:
            self._retire(worker)

    def _complete(self, task: _Task, result: TaskResult) -> None:
        with self._lock:
            task.batch._finish(task.index, result)
            if task.batch.done.is_set() and task.batch in self._batches:
                self._batches.remove(task.batch)

    def _enforce_deadlines(self) -> None:
        now = time.monotonic()
        for worker in list(self._workers):
            if worker.in_flight and now - worker.in_flight[0].started > self.sample_timeout_s:
                self._replace(worker, TaskResult(False, error="timeout"))
            elif not worker.ready and now - worker.spawned > _START_TIMEOUT_S:
                self._replace(worker, TaskResult(False, error="crash"), starting=True)
            elif not worker.ready and worker.proc.poll() is not None:
                self._replace(worker, TaskResult(False, error="crash"), starting=True)
        with self._lock:
            expired = [b for b in self._batches if now > b.deadline]
        for batch in expired:
            for worker in list(self._workers):
                # Kill only a worker busy with this batch; a task of it queued behind another
                # batch's sample is answered and ignored (its result is set below).
                if worker.in_flight and worker.in_flight[0].batch is batch:
                    self._replace(worker, TaskResult(False, error="timeout"))
            with self._lock:
                for index, result in enumerate(batch.results):
                    if result is None:
                        batch._finish(index, TaskResult(False, error="timeout"))
                if batch in self._batches:
                    self._batches.remove(batch)

    def _replace(self, worker: _Worker, head_result: TaskResult | None, starting: bool = False) -> None:
        """Kills ``worker``: its running task gets ``head_result`` (None: it is re-queued too), its
        queued ones go back to the queue."""
        self._stop(worker, graceful=False)
        if worker.in_flight and head_result is not None:
            self._complete(worker.in_flight.popleft(), head_result)
        with self._lock:
            self._queue.extendleft(reversed(worker.in_flight))
        worker.in_flight.clear()
        self.restarts += 1
        if starting:
            self._start_failures += 1
            if self._start_failures >= _MAX_START_FAILURES:
                self._fail_pool(
                    f"{_MAX_START_FAILURES} workers in a row died while starting "
                    f"(is verifier.memory_limit_mb={self.memory_limit_mb} too small?)"
                )

    def _retire(self, worker: _Worker) -> None:
        self._stop(worker, graceful=True)

    def _stop(self, worker: _Worker, graceful: bool) -> None:
        if worker in self._workers:
            self._workers.remove(worker)
        if graceful:
            try:
                worker.conn.send(None)
                worker.proc.wait(timeout=_STOP_GRACE_S)
            except (OSError, ValueError, subprocess.TimeoutExpired):
                pass
        _kill(worker.proc)
        with self._registry.lock:
            self._registry.procs.discard(worker.proc)
        worker.conn.close()

    def _fail_pool(self, reason: str) -> None:
        with self._lock:
            self._broken = reason
            tasks = list(self._queue)
            self._queue.clear()
        for task in tasks:
            self._complete(task, TaskResult(False, error="crash"))

    def _shutdown(self) -> None:
        workers = list(self._workers)
        asked = set()
        for worker in workers:
            for task in worker.in_flight:
                self._complete(task, TaskResult(False, error="closed"))
            if worker.ready and not worker.in_flight:
                try:
                    worker.conn.send(None)  # ask the idle ones first, all at once
                    asked.add(id(worker))
                except (OSError, ValueError):
                    pass
            worker.in_flight.clear()
        deadline = time.monotonic() + _STOP_GRACE_S
        for worker in workers:
            if id(worker) in asked:
                try:
                    worker.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    pass
            self._stop(worker, graceful=False)  # SIGKILL whoever is still there (busy or starting)
        with self._lock:
            tasks = list(self._queue)
            self._queue.clear()
            self._closing = True
        for task in tasks:
            self._complete(task, TaskResult(False, error="closed"))
