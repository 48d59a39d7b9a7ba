"""Math-Verify as veRL's ``math_verify`` reward scores it (what JustRL's in-training validation used).

veRL's ``verl/utils/reward_score/math_verify.py``: the gold is wrapped in ``\\boxed{}`` and read
with LaTeX extraction, the whole response with expression then LaTeX extraction
(``math_metric``); any failure scores 0. Math-Verify is an optional dependency
(``pip install 'justrl-jax[math-verify]'``): :func:`require_math_verify` says so clearly before
anything is compiled. Run in the ``Verifier``'s worker pool (Math-Verify's own timeouts use
``signal``, which works there: each task runs in the worker's main thread).
"""

from __future__ import annotations

import functools
import importlib.util

INSTALL_HINT = "pip install 'justrl-jax[math-verify]' (or math-verify[antlr4_13_2])"


def require_math_verify(what: str) -> None:
    """Raises a one-line ValueError naming ``what`` when the math_verify package is not installed."""
    if importlib.util.find_spec("math_verify") is None:
        raise ValueError(f"{what} needs the optional math-verify package, which is not installed: {INSTALL_HINT}")


@functools.lru_cache(maxsize=1)
def _metric():
    from math_verify.metric import math_metric
    from math_verify.parser import ExprExtractionConfig, LatexExtractionConfig

    return math_metric(
        gold_extraction_target=(LatexExtractionConfig(),),
        pred_extraction_target=(ExprExtractionConfig(), LatexExtractionConfig()),
    )


def math_verify_grade(response: str, gold: str) -> bool:
    """veRL's math_verify score of one response (True = 1.0)."""
    try:
        score, _ = _metric()(["\\boxed{" + gold + "}"], [response])
    except Exception:  # veRL scores any failure (a timeout included) as 0
        return False
    return bool(score)
