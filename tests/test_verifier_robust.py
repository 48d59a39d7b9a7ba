"""Robust mode: extraction, normalisation and the equivalence cascade, run inline.

References: the shared case file's ``expected`` on undisputed any/robust cases (taken from
Math-Verify's, the DAPO scorer's and other graders' own test suites), Math-Verify 0.8's recorded
verdicts on the same cases (robust mode must beat it), and hand-checked mathematics below.
"""

from __future__ import annotations

import pytest
from cpu_scaling import assert_linear
from verifier_cases import CASES_PATH, load_cases

from justrl_jax.verifier import VerdictStatus, robust_verdict
from justrl_jax.verifier.extract import AnswerSource, count_items, final_answer
from justrl_jax.verifier.latex import GuardError, ParseError, parse_answer
from justrl_jax.verifier.normalize import normalize_answer, single_number
from justrl_jax.verifier.robust import prepare

BARE_ANSWER_CHARS = 200  # a response this short without a box is a bare answer, scored inside \boxed{}


def as_model_output(response: str) -> str:
    """Cases whose response is a bare answer test answer equivalence: wrap them in \\boxed{}.
    Longer responses without a box are chain-of-thought text and are scored as they are."""
    if "\\boxed" not in response and len(response) <= BARE_ANSWER_CHARS:
        return "\\boxed{" + response + "}"
    return response


CASES = load_cases()
ROBUST_CASES = [c for c in CASES if c["mode_hint"] in ("any", "robust") and not c["disputed"]]
needs_cases = pytest.mark.skipif(not CASES, reason=f"case file {CASES_PATH} not found")


@needs_cases
@pytest.mark.parametrize("case", ROBUST_CASES, ids=[c["id"] for c in ROBUST_CASES])
def test_robust_matches_expected(case):
    verdict = robust_verdict(as_model_output(case["response"]), case["gold"])
    assert verdict.correct == case["expected"], verdict


@needs_cases
def test_robust_beats_math_verify_on_the_same_cases():
    ours = sum(robust_verdict(as_model_output(c["response"]), c["gold"]).correct == c["expected"] for c in ROBUST_CASES)
    math_verify = sum(c["reference_verdicts"]["math_verify_0_8_0_verl_wrapper"] == c["expected"] for c in ROBUST_CASES)
    assert ours == len(ROBUST_CASES)
    assert ours > math_verify


B = "so the answer is \\boxed{{{}}}.".format


@pytest.mark.parametrize(
    "response, gold, correct",
    [
        # several boxes are never merged into a set unless the gold has that many items
        ("\\boxed{8} and then we get \\boxed{9}", "9", True),
        ("\\boxed{8} and then we get \\boxed{9}", "8", False),
        ("\\boxed{1} and \\boxed{2}", "1, 2", True),
        ("\\boxed{1}. Later, \\boxed{2}", "1, 2", False),  # a sentence between them: not one answer
        # numbers: exact unless written as decimals; tolerance is relative only
        (B("\\frac{1}{2006!}"), "\\frac{1}{2004!}", False),
        (B("0.333"), "\\frac13", False),
        (B("\\pi"), "3.14159", True),
        (B("0.0000001"), "0", False),
        (B("1.0000001"), "1", True),
        (B("\\sqrt{2}+10^{-30}"), "\\sqrt2", False),
        (B("10^{100}+1"), "10^{100}", False),
        (B("25.0"), "25", True),
        (B("025"), "25", True),
        (B("+25"), "25", True),
        (B("-0"), "0", True),
        (B("\\dfrac{3}{4}"), "0.75", True),
        (B("75\\%"), "75", True),
        (B("2^{10}"), "1024", True),
        # thousands separators only for a single-number gold, never with a space after the comma
        (B("1{,}000"), "1000", True),
        (B("1,000"), "1000", True),
        (B("1, 000"), "1000", False),
        # symbolic
        (B("(x+1)^2"), "x^2+2x+1", True),
        (B("\\frac{\\sqrt2}{2}"), "\\frac{1}{\\sqrt{2}}", True),
        (B("\\sqrt{3+2\\sqrt{2}}"), "1+\\sqrt{2}", True),
        (B("\\sin^2 x + \\cos^2 x"), "1", True),
        (B("\\ln 8"), "3\\ln 2", True),
        (B("\\log_2 8"), "3", True),
        (B("2x"), "x", False),
        (B("e^{i\\pi}"), "-1", False),  # i is a variable here, not the imaginary unit
        # structure
        (B("(1,2)"), "(2,1)", False),
        (B("[1,2]"), "[1,2)", False),
        (B("-3, 3"), "3,-3", True),
        (B("\\{3, -3\\}"), "\\pm 3", True),
        (B("3"), "\\pm 3", False),
        (B("(-\\infty, 3]"), "x \\le 3", True),
        (B("x > 3"), "(3, \\infty)", True),
        (B("\\begin{pmatrix}1\\\\2\\end{pmatrix}"), "\\begin{pmatrix}1\\\\3\\end{pmatrix}", False),
        # relations
        (B("x=3"), "3", True),
        (B("y=3"), "x=3", True),
        (B("3"), "x^2=9", False),
        (B("3x+2y=6"), "y = 3 - \\frac{3}{2}x", True),
        (B("2x-y<1"), "y > 2x-1", True),
        (B("2x-y<1"), "y < 2x-1", False),
        (B("a=1, b=2"), "a=1,b=2", True),
        (B("a=1, b=2"), "b=1,a=2", False),
        # units, text and choices
        (B("5\\text{ cm}"), "5", True),
        (B("5 cm^2"), "5", True),
        (B("5m"), "5", False),
        (B("\\$5"), "5", True),
        (B("5^\\circ"), "5", True),
        (B("\\text{(B)}"), "B", True),
        (B("B"), "C", False),
        (B("1,\\!000"), "1000", True),
        (B("\\text{5 dollars}"), "5", True),
        (B("12 \\text{ square units}"), "12", True),
        # "6,8" as a gold is the list 6, 8 or the decimal 6.8; "1,000" is a thousand
        (B("6 \\text{ and } 8"), "6,8", True),
        (B("6.8"), "6,8", True),
        (B("68"), "6,8", False),
        (B("1000"), "1,000", True),
        (B("1.22"), "1,22", True),
        # a percentage gold accepts the percent and the fraction
        (B("0.25"), "25\\%", True),
        (B("25"), "25\\%", True),
        (B("0.26"), "25\\%", False),
        (B("0.25"), "25", False),
        (B("|x|"), "x", False),
        (B("\\sqrt{x^2}"), "|x|", True),
        # extraction
        ("<think>so \\boxed{3}</think> the answer is \\boxed{4}", "4", True),
        ("<think>so \\boxed{3}</think> the answer is \\boxed{4}", "3", False),
        ("Final Answer: The final answer is $7$. I hope it is correct.", "7", True),
        ("**Final Answer**\n\\[\\boxed{12}\\]", "12", True),
        ("\\boxed{3}\n\n**Final Answer**", "3", True),
        ("The answer is \\boxed{5", "5", False),  # truncated box
        ("we computed 5 and then the response stopped", "5", False),  # never the last number anywhere
        ("Therefore, the number of ways is 12", "12", False),  # a conclusion cut off mid-sentence
    ],
)
def test_robust_cascade(response, gold, correct):
    assert robust_verdict(response, gold).correct is correct


@pytest.mark.parametrize(
    "response, status",
    [
        ("no box here", VerdictStatus.NO_ANSWER),
        ("\\boxed{" + "1+" * 600 + "1}", VerdictStatus.TOO_LONG),  # over 1,000 characters
        ("\\boxed{" + "\\frac{1}{" * 60 + "2" + "}" * 120 + "}", VerdictStatus.TOO_LONG),  # nesting
        ("\\boxed{10^{10^{10}}}", VerdictStatus.TOO_LONG),  # power tower
        ("\\boxed{(10^{5})!}", VerdictStatus.TOO_LONG),
        ("\\boxed{" + "9" * 4001 + "}", VerdictStatus.TOO_LONG),
        ("\\boxed{__import__('os').system('true')}", VerdictStatus.ERROR),
    ],
)
def test_guards_and_statuses(response, status):
    verdict = robust_verdict(response, "5")
    assert (verdict.status, verdict.correct, verdict.reward) == (status, False, -1.0)


def test_boxed_code_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    for payload in (
        f"__import__('os').system('touch {marker}')",
        f"eval(\"open('{marker}', 'w')\")",
        f"\\text{{__import__('pathlib').Path('{marker}').touch()}}",
    ):
        verdict = robust_verdict(f"so \\boxed{{{payload}}}", "0")
        assert not verdict.correct
        assert not marker.exists()


def test_extraction_prefers_the_later_of_box_and_statement():
    text = "first \\boxed{200}, then \\boxed{255}. Final Answer: The final answer is $10,455$. I hope it is correct."
    found = final_answer(text)
    assert (found.span, found.source) == ("$10,455$", AnswerSource.STATEMENT)
    assert final_answer("Final Answer: see below. \\boxed{7}").span == "7"
    assert final_answer("nothing to see").source is AnswerSource.NONE


def test_count_items_and_single_numbers():
    assert count_items("(1, 2), (3, 4)") == 2
    assert count_items("\\{1, 2, 3\\}") == 3
    assert count_items("6 \\text{ and } 8") == 2
    assert count_items("[0, 1)") == 1
    assert single_number("7,425,000") == "7425000"
    assert single_number("1 000") == "1000"
    assert single_number("2,74") == "2.74"
    assert single_number("0,111") == "0.111"
    assert single_number("1, 2") is None
    assert normalize_answer("\\left( \\dfrac12 \\right)") == "( \\frac{1}{2} )"
    assert normalize_answer("90^\\circ") == "90"
    assert normalize_answer("\\text{Evelyn}") == "\\text{Evelyn}"


def test_parser_builds_sympy_without_eval():
    import sympy

    x = sympy.Symbol("x")
    assert parse_answer("\\frac{x^2}{2} + \\sqrt[3]{8}") == x**2 / 2 + 2
    assert parse_answer("204_5") == 54  # a base-5 numeral
    assert parse_answer("\\binom{5}{2}") == 10
    with pytest.raises(ParseError):
        parse_answer("__import__('os')")
    with pytest.raises(GuardError):
        parse_answer("9^{9^{9^{9}}}")
    with pytest.raises(GuardError):
        parse_answer("\\binom{10^{9}}{10^{5}}")


@pytest.mark.parametrize(
    "build, size",
    [
        (lambda n: " " * n, 10**6),
        (lambda n: "{" * n, 10**6),
        (lambda n: "}" * n, 10**6),
        (lambda n: "$" * n, 10**6),
        (lambda n: "\\boxed{" * n, 10**5),
        (lambda n: "\\boxed{1}" * n, 10**5),
        (lambda n: "\\boxed{" * n + "5" + "}" * n, 50_000),
        (lambda n: "final" + " " * n, 10**6),
        (lambda n: "Final Answer: " * n, 70_000),
        (lambda n: "Therefore 1. " * n, 70_000),
        (lambda n: "I hope it is correct." * n, 50_000),
        (lambda n: "x $y$ \\[z\\] {w} " * n, 50_000),
    ],
    ids=lambda v: repr(v(1))[:16] if callable(v) else str(v),
)
def test_caller_side_preparation_is_linear_on_1mb_inputs(build, size):
    # The parent runs extraction and normalisation itself, without a deadline: it must stay linear.
    assert not prepare(build(size), "5").correct
    assert_linear(build, lambda text: prepare(text, "5"), size)
