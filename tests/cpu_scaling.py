"""Linearity checks that hold on any CPU: compare a function's CPU time on an input with its time on
the same input at a quarter of the size, on the same machine in the same run (like for like).

A linear pass takes about 4x as long on 4x the input; a quadratic one 16x. The bound (8x) sits between
the two, and a pass that finishes the full input within ``FLOOR_S`` of CPU time passes outright, so a
fast function is never judged on timer noise. Thread CPU time, best of three: other processes on a
loaded machine do not count.
"""

from __future__ import annotations

import time
from collections.abc import Callable

FLOOR_S = 0.05
MAX_RATIO = 8.0


def _best_cpu_seconds(fn: Callable[[], object], repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.thread_time()
        fn()
        best = min(best, time.thread_time() - start)
    return best


def assert_linear(build: Callable[[int], str], run: Callable[[str], object], size: int) -> None:
    """``build(n)`` makes an input of scale ``n`` (e.g. ``n`` repetitions); ``run`` is the pass under test."""
    full, quarter = build(size), build(size // 4)
    full_s = _best_cpu_seconds(lambda: run(full))
    if full_s <= FLOOR_S:
        return
    quarter_s = _best_cpu_seconds(lambda: run(quarter))
    ratio = full_s / max(quarter_s, 1e-6)
    assert ratio < MAX_RATIO, f"{ratio:.1f}x the CPU time for 4x the input ({quarter_s:.3f} s -> {full_s:.3f} s)"
