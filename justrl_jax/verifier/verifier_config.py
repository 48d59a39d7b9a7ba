"""Verifier configuration: which rule scores a response, the rewards, and the pool's limits.

Example::

    cfg = VerifierConfig()                                   # JustRL: strict box, +1 / -1
    cfg = VerifierConfig(mode=VerifierMode.ROBUST, workers=4, sample_timeout_s=2.0)
    cfg = VerifierConfig(overlong=OverlongConfig(max_response_len=15360))   # DAPO's length penalty
"""

from __future__ import annotations

import dataclasses
import enum
import math


class VerifierMode(enum.Enum):
    """STRICT is JustRL's training reward (DAPO strict box, raw string equality); ROBUST extracts,
    normalises and compares answers mathematically (for ablations and evaluation); JUSTRL is the
    rule stage of JustRL's evaluation grader (``justrl_rule``: last box anywhere, MATH
    normalisation or SymPy), run in the worker pool like ROBUST."""

    STRICT = "strict"
    ROBUST = "robust"
    JUSTRL = "justrl"
    MATH_VERIFY = "math-verify"  # veRL's math_verify reward (optional package); JustRL's validation


@dataclasses.dataclass(frozen=True)
class OverlongConfig:
    """DAPO's soft overlong punishment (off in JustRL's main runs; the paper's ablation).

    penalty = min(-(length - (max_response_len - buffer_len)) / buffer_len * penalty_factor, 0),
    added to the correctness reward. With the defaults it is 0 up to 11,264 tokens and -1 at 15,360.
    """

    max_response_len: int = 15360  # tokens: the rollout's max_new_tokens
    buffer_len: int = 4096  # tokens: the penalty ramps over the last buffer_len tokens
    penalty_factor: float = 1.0  # penalty at max_response_len is -penalty_factor

    def __post_init__(self):
        if self.max_response_len < 1:
            raise ValueError(f"verifier.overlong.max_response_len must be >= 1, got {self.max_response_len}")
        if not 1 <= self.buffer_len <= self.max_response_len:
            raise ValueError(
                f"verifier.overlong.buffer_len must be in [1, max_response_len="
                f"{self.max_response_len}], got {self.buffer_len}"
            )
        if not (math.isfinite(self.penalty_factor) and self.penalty_factor >= 0):
            raise ValueError(
                f"verifier.overlong.penalty_factor must be a finite number >= 0, got {self.penalty_factor}"
            )

    def penalty(self, length: int) -> float:
        """The (non-positive) penalty for a response of ``length`` tokens."""
        expected = self.max_response_len - self.buffer_len
        return min(-(length - expected) / self.buffer_len * self.penalty_factor, 0.0)


@dataclasses.dataclass(frozen=True)
class VerifierConfig:
    """All verifier settings. Strict mode is scored inline in the caller (pure string work, no
    pool); robust mode runs in ``workers`` CPU processes with the deadlines and limits below."""

    mode: VerifierMode = VerifierMode.STRICT
    correct_reward: float = 1.0
    incorrect_reward: float = -1.0  # also the reward of no answer, timeouts, guards and errors
    workers: int = 4  # robust and justrl modes: worker processes (strict mode starts none)
    sample_timeout_s: float = 2.0  # robust mode: a sample running longer gets its worker killed
    batch_timeout_s: float = 300.0  # robust mode: samples unfinished by then score as timeouts
    max_tasks_per_worker: int = 5000  # robust mode: a worker is replaced after this many samples
    memory_limit_mb: int = 2048  # robust mode: address-space cap (RLIMIT_AS) of each worker
    cache_size: int = 100_000  # robust mode: verdicts kept, keyed by (normalised answer, gold)
    max_answer_chars: int = 1000  # robust mode: a longer extracted answer scores as too_long
    overlong: OverlongConfig | None = None  # DAPO's overlong penalty; None = off (JustRL)

    def __post_init__(self):
        if not isinstance(self.mode, VerifierMode):
            raise ValueError(f"verifier.mode must be a VerifierMode, got {self.mode!r}")
        for name in ("correct_reward", "incorrect_reward"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"verifier.{name} must be a finite number, got {value!r}")
        if self.correct_reward <= self.incorrect_reward:
            raise ValueError(
                f"verifier.correct_reward ({self.correct_reward}) must be greater than "
                f"verifier.incorrect_reward ({self.incorrect_reward})"
            )
        for name, low in (
            ("workers", 1),
            ("max_tasks_per_worker", 1),
            ("memory_limit_mb", 256),
            ("cache_size", 0),
            ("max_answer_chars", 1),
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"verifier.{name} must be an integer >= {low}, got {value!r}")
        for name in ("sample_timeout_s", "batch_timeout_s"):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not (math.isfinite(value) and value > 0)
            ):
                raise ValueError(f"verifier.{name} must be > 0, got {value!r}")
        if self.mode is VerifierMode.MATH_VERIFY:
            from justrl_jax.verifier.math_verify_rule import require_math_verify

            require_math_verify("verifier.mode math-verify")
        if self.overlong is not None and not isinstance(self.overlong, OverlongConfig):
            raise ValueError(f"verifier.overlong must be an OverlongConfig or None, got {self.overlong!r}")
