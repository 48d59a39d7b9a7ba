"""Linearity checks that hold on any CPU: compare a function's CPU time on an input with its time on
the same input at an eighth of the size, on the same machine in the same run (like for like).

A linear pass takes about 8x as long on 8x the input; a quadratic one 64x. The bound (24x) sits between
the two with a factor of ~3 to spare either way, because even thread CPU time moves with what else the
machine runs (shared caches, memory bandwidth: seen 2.5x on a loaded 2-core machine). A pass that
finishes the full input within ``FLOOR_S`` of CPU time passes outright, so a fast function is never
judged on timer noise. Thread CPU time, best of three, with the cyclic garbage collector paused.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable

FLOOR_S = 0.05
SCALE = 8
MAX_RATIO = 24.0


def _best_cpu_seconds(fn: Callable[[], object], repeats: int = 3) -> float:
    best = float("inf")
    gc.disable()
    try:
        for _ in range(repeats):
            start = time.thread_time()
            fn()
            best = min(best, time.thread_time() - start)
    finally:
        gc.enable()
    return best


def assert_linear(build: Callable[[int], str], run: Callable[[str], object], size: int) -> None:
    """``build(n)`` makes an input of scale ``n`` (e.g. ``n`` repetitions); ``run`` is the pass under test."""
    full, small = build(size), build(size // SCALE)
    full_s = _best_cpu_seconds(lambda: run(full))
    if full_s <= FLOOR_S:
        return
    small_s = _best_cpu_seconds(lambda: run(small))
    ratio = full_s / max(small_s, 1e-6)
    assert ratio < MAX_RATIO, f"{ratio:.1f}x the CPU time for {SCALE}x the input ({small_s:.4f} s -> {full_s:.3f} s)"
