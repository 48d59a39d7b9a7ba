"""``validation.grader: math-verify`` (veRL's Math-Verify score, JustRL's validation): an optional package."""

import sys

import pytest

from justrl_jax.run_config import ValidationConfig
from justrl_jax.verifier import Verifier, VerifierConfig, VerifierMode
from justrl_jax.verifier.math_verify_rule import math_verify_grade

CASES = [
    ("so $\\boxed{\\frac{1}{2}}$", "0.5", True),
    ("The answer is $\\boxed{34}$.", "34", True),
    ("The answer is $\\boxed{35}$.", "34", False),
    ("no answer at all", "34", False),
    ("$x \\in \\boxed{[1, 2)}$", "[1,2)", True),
]


def test_math_verify_mode_in_the_pool_equals_the_direct_score():
    for response, gold, expected in CASES:
        assert math_verify_grade(response, gold) is expected, (response, gold)
    cfg = VerifierConfig(mode=VerifierMode.MATH_VERIFY, workers=1, correct_reward=1.0, incorrect_reward=0.0)
    with Verifier(cfg) as verifier:
        verdicts = verifier.verify([c[0] for c in CASES], [c[1] for c in CASES])
    assert [v.correct for v in verdicts] == [c[2] for c in CASES]


def test_validation_grader_is_checked():
    assert ValidationConfig().grader == "robust"
    assert ValidationConfig(enabled=True, data_dir="data", grader="math-verify").grader == "math-verify"
    with pytest.raises(ValueError, match=r"validation.grader must be one of \['robust', 'math-verify', 'justrl'\]"):
        ValidationConfig(grader="mathverify")


def test_missing_math_verify_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "math_verify", None)  # what an environment without the package sees
    with pytest.raises(ValueError, match=r"validation.grader: math-verify needs the optional math-verify package"):
        ValidationConfig(enabled=True, data_dir="data", grader="math-verify")
    with pytest.raises(ValueError, match="pip install 'justrl-jax\\[math-verify\\]'"):
        VerifierConfig(mode=VerifierMode.MATH_VERIFY)
    ValidationConfig(enabled=True, data_dir="data", grader="robust")  # other graders do not need it


def test_justrl_presets_validate_with_math_verify():
    from pathlib import Path

    from justrl_jax.config_io import from_dict, load_yaml
    from justrl_jax.run_config import RunConfig

    for name in ("justrl_deepseek_1p5b.yaml", "justrl_nemotron_1p5b.yaml"):
        cfg = from_dict(RunConfig, load_yaml(Path(__file__).parents[1] / "configs" / name))
        assert cfg.validation.grader == "math-verify" and cfg.validation.enabled
