"""The verifier worker process: a fresh CPU-only interpreter that judges answers for the pool.

It is started by ``pool.WorkerPool`` as ``python -I -c BOOTSTRAP FD MEMORY_MB SYS_PATH PARENT_PID``
(never forked from the trainer, never importing JAX), and it:

* ignores SIGINT (Ctrl-C is the parent's to handle; the parent stops its workers) and asks the
  kernel to SIGKILL it if the parent dies (``PR_SET_PDEATHSIG``); a closed pipe also ends it;
* caps its address space (``RLIMIT_AS``) before importing SymPy, so a runaway allocation raises
  ``MemoryError`` here instead of swapping the host;
* imports SymPy and the parser once, says "ready", then serves requests until told to stop.

Requests are ``(task_id, kind, args)`` with ``kind`` from a fixed table: ``judge`` (the robust
comparison), ``justrl`` (JustRL's evaluation rule on an extracted answer), ``math_verify``
(veRL's Math-Verify score of a whole response), ``probe`` (pid,
limits and imported top-level packages, for health checks), and
``power`` (an exact big-integer power: a real computation stuck in C that only SIGKILL can
stop) and ``allocate`` (a byte buffer of a given size), the last two to exercise the deadline and
the memory cap. Replies are ``(task_id, ok, value)``.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1

BOOTSTRAP = (
    "import json, sys; sys.path[:0] = json.loads(sys.argv[3]); "
    "from justrl_jax.verifier.worker import main; main(sys.argv[1:])"
)


def _die_with_parent(parent_pid: int) -> None:
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


def _limit_memory(megabytes: int) -> None:
    import resource

    limit = megabytes * 1024 * 1024
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def _probe() -> dict:
    import resource

    return {
        "pid": os.getpid(),
        "rlimit_as": resource.getrlimit(resource.RLIMIT_AS)[0],
        "packages": sorted({name.split(".")[0] for name in sys.modules}),
    }


def _power(base: int, exponent: int) -> int:
    return (int(base) ** int(exponent)).bit_length()


def _allocate(size: int) -> int:
    return len(bytearray(int(size)))


def main(argv: list[str]) -> None:
    fd, megabytes, parent_pid = int(argv[0]), int(argv[1]), int(argv[3])
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent(parent_pid)
    _limit_memory(megabytes)
    from multiprocessing.connection import Connection

    from justrl_jax.verifier import equivalence, latex  # noqa: F401  (warm: import SymPy once)
    from justrl_jax.verifier.robust import judge

    latex.parse_answer("x + 1 = \\frac{1}{2}")
    from justrl_jax.verifier.justrl_rule import grade_extracted

    tasks = {
        "judge": lambda pred, gold: _judge(judge, pred, gold),
        "justrl": lambda answer, gold: (grade_extracted(answer, gold), "ok"),
        "math_verify": lambda response, gold: (_math_verify(response, gold), "ok"),
        "probe": _probe,
        "power": _power,
        "allocate": _allocate,
    }
    conn = Connection(fd)
    conn.send(("ready", True, os.getpid()))
    while True:
        try:
            request = conn.recv()
        except (EOFError, OSError):
            return
        if request is None:
            os._exit(0)  # nothing to flush; skipping interpreter teardown (~0.2 s with SymPy)
        task_id, kind, args = request
        out_of_memory = False
        try:
            reply = (task_id, True, tasks[kind](*args))
        except MemoryError:
            reply, out_of_memory = (task_id, False, "MemoryError"), True
        except Exception as e:  # a task's failure is its verdict, never the worker's end
            reply = (task_id, False, f"{type(e).__name__}: {e}"[:500])
        try:
            conn.send(reply)
        except (EOFError, OSError):
            return
        if out_of_memory:  # the heap may be in a bad state: let the pool start a fresh worker
            return


def _math_verify(response: str, gold: str) -> bool:
    from justrl_jax.verifier.math_verify_rule import math_verify_grade

    return math_verify_grade(response, gold)


def _judge(judge, pred: str, gold: str) -> tuple[bool, str]:
    correct, status = judge(pred, gold)
    return correct, status.value
