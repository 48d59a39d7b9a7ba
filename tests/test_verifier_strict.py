"""Strict mode (JustRL's training reward): faithfulness to veRL's DAPO strict-box rule.

References: ``reference_verdicts.justrl_dapo_strict_box`` recorded in the shared case file (the
DAPO scorer run on every case), the case file's ``expected`` on undisputed any/strict cases, and
the recipe's formulas for the overlong penalty.
"""

from __future__ import annotations

import pytest
from verifier_cases import CASES_PATH, load_cases

from justrl_jax.verifier import (
    OverlongConfig,
    VerdictStatus,
    Verifier,
    VerifierConfig,
    VerifierMode,
    strict_verdict,
)
from justrl_jax.verifier.extract import clean_gold, strict_box

CASES = load_cases()
needs_cases = pytest.mark.skipif(not CASES, reason=f"case file {CASES_PATH} not found")


@needs_cases
@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_strict_matches_dapo_reference(case):
    verdict = strict_verdict(case["response"], case["gold"])
    assert verdict.correct == case["reference_verdicts"]["justrl_dapo_strict_box"]
    assert verdict.reward == (1.0 if verdict.correct else -1.0)
    assert (verdict.status is VerdictStatus.NO_ANSWER) == (verdict.pred is None)


STRICT_CASES = [c for c in CASES if c["mode_hint"] in ("any", "strict") and not c["disputed"]]


@needs_cases
@pytest.mark.parametrize("case", STRICT_CASES, ids=[c["id"] for c in STRICT_CASES])
def test_strict_matches_expected_on_undisputed_cases(case):
    assert strict_verdict(case["response"], case["gold"]).correct == case["expected"]


@pytest.mark.parametrize(
    "response, gold, correct",
    [
        ("so \\boxed{5}", "5", True),
        ("so \\boxed{ 5}", "5", False),  # no stripping
        ("so \\boxed{5.}", "5", False),
        ("so \\boxed{05}", "5", False),  # no integer canonicalisation
        ("so \\boxed{\\text{34}}", "34", False),
        ("so \\boxed{\\frac{1}{2}}", "\\frac{1}{2}", True),
        ("so \\boxed{5}" + "x" * 95, "5", False),  # the box starts before the last 100 characters
        ("so \\boxed{5}" + "x" * 80, "5", True),
        ("\\boxed{" + "1" * 93 + "}", "1" * 93, False),  # an answer over ~92 characters is lost
        ("\\boxed{4} then \\boxed{5", "4", False),  # an incomplete last box: no fallback to an earlier one
        ("\\boxed{4} then \\boxed{5}", "4", False),
        ("\\boxed{{5}}", "{5}", True),  # braces are matched, content kept raw
        ("no box at all", "5", False),
        ("so \\boxed{5}", "$5$", True),  # gold pre-processing: $..$ removed
        ("so \\boxed{5}", "  \\boxed{5} ", True),  # a boxed gold becomes its content
    ],
)
def test_strict_rule(response, gold, correct):
    assert strict_verdict(response, gold).correct is correct


def test_strict_window_is_last_300_then_last_100():
    # A box entirely within the last 100 characters wins over anything earlier.
    response = "\\boxed{1}" + "y" * 500 + "\\boxed{2}"
    assert strict_box(response) == "2"
    assert strict_box("\\boxed{7}" + "z" * 300) is None


def test_gold_cleaning():
    assert clean_gold(" $$\\frac{1}{2}$$ ") == "\\frac{1}{2}"
    assert clean_gold("\\(x+1\\)") == "x+1"
    assert clean_gold("The answer is $\\boxed{14{,}916}$.") == "14{,}916"
    assert clean_gold("$1$ and $2$") == "$1$ and $2$"  # not one delimited block
    assert clean_gold("34") == "34"  # DAPO-Math-17k golds are unchanged


def test_configurable_rewards():
    cfg = VerifierConfig(correct_reward=1.0, incorrect_reward=0.0)
    assert strict_verdict("\\boxed{3}", "3", cfg).reward == 1.0
    assert strict_verdict("\\boxed{4}", "3", cfg).reward == 0.0
    assert strict_verdict("nothing", "3", cfg).reward == 0.0


@pytest.mark.parametrize(
    "length, penalty",
    [
        (0, 0.0),
        (11264, 0.0),
        (12288, -0.25),
        (13312, -0.5),
        (15360, -1.0),
        (16384, -1.25),
    ],
)
def test_overlong_penalty_follows_dapo_formula(length, penalty):
    overlong = OverlongConfig(max_response_len=15360, buffer_len=4096, penalty_factor=1.0)
    # DAPO: expected_len = max_len - L; penalty = min(-(len - expected_len) / L * factor, 0)
    assert overlong.penalty(length) == pytest.approx(min(-(length - (15360 - 4096)) / 4096, 0.0))
    assert overlong.penalty(length) == pytest.approx(penalty)
    cfg = VerifierConfig(overlong=overlong)
    assert strict_verdict("\\boxed{3}", "3", cfg, length).reward == pytest.approx(1.0 + penalty)
    assert strict_verdict("\\boxed{4}", "3", cfg, length).reward == pytest.approx(-1.0 + penalty)


def test_overlong_needs_lengths():
    cfg = VerifierConfig(overlong=OverlongConfig())
    with Verifier(cfg) as verifier:
        with pytest.raises(ValueError, match="response_lengths"):
            verifier.verify(["\\boxed{3}"], ["3"])
        assert [v.reward for v in verifier.verify(["\\boxed{3}"], ["3"], [15360])] == [0.0]


def test_strict_verifier_is_inline_and_async_api_works():
    with Verifier() as verifier:
        assert verifier.pool is None  # strict mode starts no processes
        pending = verifier.submit(["a \\boxed{1}", "b \\boxed{2}", "c"], ["1", "1", "1"])
        assert pending.done()
        verdicts = pending.result(timeout=0)
    assert [v.reward for v in verdicts] == [1.0, -1.0, -1.0]
    assert [v.status for v in verdicts] == [VerdictStatus.OK, VerdictStatus.OK, VerdictStatus.NO_ANSWER]
    assert [v.pred for v in verdicts] == ["1", "2", None]


def test_verify_rejects_mismatched_inputs():
    with Verifier() as verifier:
        with pytest.raises(ValueError, match="2 responses but 1 golds"):
            verifier.verify(["a", "b"], ["1"])
        with pytest.raises(TypeError, match=r"golds\[0\] must be a str"):
            verifier.verify(["a"], [1])
        with pytest.raises(ValueError, match="response_lengths"):
            verifier.verify(["a"], ["1"], [1, 2])


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"workers": 0}, "verifier.workers"),
        ({"sample_timeout_s": -1.0}, "verifier.sample_timeout_s"),
        ({"batch_timeout_s": 0}, "verifier.batch_timeout_s"),
        ({"max_tasks_per_worker": 0}, "verifier.max_tasks_per_worker"),
        ({"memory_limit_mb": 10}, "verifier.memory_limit_mb"),
        ({"correct_reward": -1.0, "incorrect_reward": 1.0}, "verifier.correct_reward"),
        ({"correct_reward": float("nan")}, "verifier.correct_reward"),
        ({"mode": "strict"}, "verifier.mode"),
        ({"max_answer_chars": 0}, "verifier.max_answer_chars"),
    ],
)
def test_config_validation_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        VerifierConfig(**kwargs)


def test_overlong_config_validation():
    with pytest.raises(ValueError, match=r"verifier\.overlong\.buffer_len"):
        OverlongConfig(max_response_len=100, buffer_len=200)
    with pytest.raises(ValueError, match=r"verifier\.overlong\.penalty_factor"):
        OverlongConfig(penalty_factor=-1.0)


def test_config_loads_from_plain_data():
    from justrl_jax.config_io import from_dict

    cfg = from_dict(
        VerifierConfig, {"mode": "robust", "workers": 2, "overlong": {"max_response_len": 8192}}, "verifier"
    )
    assert cfg.mode is VerifierMode.ROBUST and cfg.overlong.max_response_len == 8192


def test_importing_the_verifier_loads_neither_sympy_nor_jax():
    import subprocess
    import sys

    code = "import sys, justrl_jax.verifier, justrl_jax.verify; print(sorted({'sympy', 'jax'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
