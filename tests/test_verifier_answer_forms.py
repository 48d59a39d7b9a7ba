"""Robust mode on the answer forms of issue 16, each class with hand-checked verdicts: undefined
values, numbers as written, words, relations and assignments, several boxes, free-text answers.
Strict mode is unchanged by all of these (checked at the end)."""

from __future__ import annotations

import pytest

from justrl_jax.verifier import robust_verdict, strict_verdict

B = "The final answer is \\boxed{{{}}}.".format


def _check(response, gold, correct):
    verdict = robust_verdict(response, gold)
    assert verdict.correct is correct, verdict


@pytest.mark.parametrize(
    "pred, gold",
    [
        ("1:00", "12:00"),
        ("1/0", "5/0"),
        ("\\frac{1}{0}", "\\frac{2}{0}"),
        ("x/0", "y/0"),
        ("\\frac{1}{1-1}", "\\frac{2}{2-2}"),
        ("0/0", "1"),
        ("(1/0, 2)", "(3/0, 2)"),
        ("\\frac{0}{0}", "\\frac{1}{0}"),
    ],
)
def test_undefined_equals_nothing(pred, gold):
    _check(B(pred), gold, False)


def test_defined_values_still_compare():
    _check(B("\\infty"), "\\infty", True)
    _check(B("-\\infty"), "\\infty", False)
    _check(B("12:00"), "12:00", True)  # the same text is the same answer


@pytest.mark.parametrize(
    "response, gold, pred",
    [
        ("Answer: $9$", "9", None),
        ("the final answer is 1,000.99", "1000.99", None),
        ("28 percent", "28\\%", None),
        ("\\boxed{1,\\!000}", "1000", "1,\\!000"),
        ("\\boxed{odd}", "\\text{odd}", "odd"),
        ("\\boxed{1} papers and \\boxed{2} bins", "1, 2", "2"),
    ],
)
def test_strict_mode_is_unchanged(response, gold, pred):
    """Strict mode is raw string equality of the last box: none of the robust forms apply."""
    verdict = strict_verdict(response, gold)
    assert not verdict.correct
    assert verdict.pred == pred


@pytest.mark.parametrize(
    "pred, gold, correct",
    [
        # thousands separators as LaTeX writes them
        ("1,\\!000", "1000", True),
        ("11,\\! 111,\\! 111,\\! 100", "11111111100", True),
        ("1{,}000", "1000", True),
        ("1{,}000", "1", False),
        ("2{,}5", "2.5", True),  # {,} before other than three digits is a decimal comma
        ("2{,}5", "25", False),
        # mixed numbers where the answer is one number; a product elsewhere
        ("2\\frac{1}{3}", "\\frac{7}{3}", True),
        ("2\\frac{1}{3}", "\\frac{2}{3}", False),
        ("-3\\frac{3}{4}", "-3.75", True),
        ("2\\frac{x}{3}", "\\frac{2x}{3}", True),
        # percentages against decimals, both ways; two percentages compare as written
        ("10\\%", "0.1", True),
        ("0.1", "10\\%", True),
        ("10\\%", "10", True),
        ("10\\%", "0.2", False),
        ("10\\%", "1000\\%", False),
        ("x + 10\\%", "0.1", False),
        # \approx: the exact part and the approximate part are each a reading
        ("x = 3 \\approx 3.0", "3", True),
        ("x = \\frac{1}{3} \\approx 0.33", "\\frac{1}{3}", True),
        ("x = \\frac{1}{3} \\approx 0.33", "0.33", True),
        ("x = \\frac{1}{3} \\approx 0.33", "0.34", False),
        ("x = 5+5+1 = 1/3 \\approx 11", "x = 1/3", True),
        ("x \\approx 2", "3", False),
    ],
)
def test_numbers_as_written(pred, gold, correct):
    _check(B(pred), gold, correct)
