"""A verdict: the reward of one response, whether it was correct, what was extracted, and why."""

from __future__ import annotations

import dataclasses
import enum

from justrl_jax.verifier.verifier_config import VerifierConfig


class VerdictStatus(enum.Enum):
    """How a verdict was reached; every status other than OK scores the incorrect reward."""

    OK = "ok"  # an answer was extracted and compared (correct or not)
    NO_ANSWER = "no_answer"  # no complete final answer (no box in the window, truncated response)
    TIMEOUT = "timeout"  # the sample or its batch ran past its deadline (the worker was killed)
    TOO_LONG = "too_long"  # a guard refused the answer (length, nesting, huge numbers)
    ERROR = "error"  # the answer could not be judged (unparseable, worker crash)


@dataclasses.dataclass(frozen=True)
class Verdict:
    """reward = correct/incorrect reward (+ the overlong penalty when configured)."""

    reward: float
    correct: bool
    pred: str | None  # the extracted answer (None when there is none)
    status: VerdictStatus


def make_verdict(
    correct: bool, pred: str | None, status: VerdictStatus, cfg: VerifierConfig, length: int | None = None
) -> Verdict:
    """Applies the configured rewards (and DAPO's overlong penalty when ``cfg.overlong`` is set)."""
    correct = bool(correct) and status is VerdictStatus.OK
    reward = cfg.correct_reward if correct else cfg.incorrect_reward
    if cfg.overlong is not None:
        if length is None:
            raise ValueError("verifier.overlong is set: response_lengths (tokens) are required")
        reward += cfg.overlong.penalty(int(length))
    return Verdict(reward=float(reward), correct=correct, pred=pred, status=status)
