"""Unbiased pass@k and avg@N from per-problem correct counts.

With ``n`` samples of a problem of which ``c`` are correct, the unbiased estimator of pass@k
(Chen et al. 2021, "Evaluating Large Language Models Trained on Code") is

    pass@k = 1 - C(n - c, k) / C(n, k)

Binomials of n = 32 are small, but the product form below never builds them at all, so the
estimate stays exact-to-rounding for any ``n`` (C(1024, 512) overflows a float):

    C(n - c, k) / C(n, k) = prod_{i = n - c + 1}^{n} (1 - k / i)

avg@N (the paper's "Pass@1, averaging over N sampled responses") is the mean over problems of
c / n, which is also pass@1 of the estimator above.

Example::

    pass_at_k(n=32, c=4, k=8)                 # one problem
    mean_pass_at_k([4, 0, 32], n=32, k=8)     # a benchmark: mean over problems
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _check(n: int, c: int, k: int) -> None:
    if n < 1:
        raise ValueError(f"n (samples per problem) must be >= 1, got {n}")
    if not 0 <= c <= n:
        raise ValueError(f"c (correct samples) must be in [0, n={n}], got {c}")
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, n={n}], got {k}")


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of k samples drawn without replacement from n is correct."""
    _check(n, c, k)
    if n - c < k:  # every k-subset contains a correct sample
        return 1.0
    i = np.arange(n - c + 1, n + 1, dtype=np.float64)
    return float(1.0 - np.prod(1.0 - k / i))


def mean_pass_at_k(correct_counts: Sequence[int], n: int, k: int) -> float:
    """pass@k of a benchmark: the per-problem estimates averaged with equal weight."""
    if len(correct_counts) == 0:
        raise ValueError("correct_counts is empty: a benchmark needs at least one problem")
    return float(np.mean([pass_at_k(n, int(c), k) for c in correct_counts]))


def avg_at_n(correct_counts: Sequence[int], n: int) -> float:
    """avg@N: mean over problems of the fraction of the n samples that are correct."""
    if len(correct_counts) == 0:
        raise ValueError("correct_counts is empty: a benchmark needs at least one problem")
    for c in correct_counts:
        _check(n, int(c), 1)
    return float(np.mean(np.asarray(correct_counts, dtype=np.float64) / n))


def default_ks(n: int) -> tuple[int, ...]:
    """The k reported for n samples: the powers of two below n, and n itself (32 -> 1, 2, 4, 8, 16, 32)."""
    if n < 1:
        raise ValueError(f"n (samples per problem) must be >= 1, got {n}")
    ks = []
    k = 1
    while k < n:
        ks.append(k)
        k *= 2
    ks.append(n)
    return tuple(ks)
