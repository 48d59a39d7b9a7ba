"""Robust mode on the answer forms of issue 16, each class with hand-checked verdicts: undefined
values, numbers as written, words, relations and assignments, several boxes, free-text answers.
Strict mode is unchanged by all of these (checked at the end)."""

from __future__ import annotations

import pytest

from justrl_jax.verifier import robust_verdict, strict_verdict

B = "The final answer is \\boxed{{{}}}.".format
IDENTITY = "\\begin{pmatrix}1&0\\\\0&1\\end{pmatrix}"


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
        ("7 3/4", "7.75", True),
        # units typeset after a number
        ("300 \\mathrm{~K}", "300", True),
        ("4.5 \\mathrm{~m/s}", "4.5", True),
        ("9.8\\,\\mathrm{m\\,s^{-2}}", "9.8", True),
        ("1.3 \\times 10^{-3}\\ \\mathrm{m}", "1.3e-3", True),
        ("300 \\mathrm{~K}", "301", False),
        # repeating decimals
        ("0.\\overline{3}", "\\frac13", True),
        ("1.2\\overline{45}", "\\frac{137}{110}", True),
        ("0.\\overline{3}", "0.3", False),
        ("7 3/4", "\\frac{21}{4}", False),
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
        # scientific notation; commas grouping thousands against any one-value gold
        ("1.5e3", "1500", True),
        ("2E-4", "0.0002", True),
        ("1.5e3", "1.5", False),
        ("1,000,000", "10^6", True),
        ("1,000,000", "(1, 0, 0)", False),
    ],
)
def test_numbers_as_written(pred, gold, correct):
    _check(B(pred), gold, correct)


@pytest.mark.parametrize(
    "pred, gold, correct",
    [
        ("odd", "\\text{odd}", True),
        ("\\text{Odd}", "odd", True),
        ("\\mathrm{EVEN}", "\\text{even}", True),
        ("even", "\\text{odd}", False),
        ("Yes", "\\text{yes}", True),
        ("no", "\\text{yes}", False),
        ("None", "\\textbf{none}", True),
        ("odd", "d^2 o", False),  # a word is not a product of its letters
        ("xy", "yx", True),  # other short runs of letters still are
    ],
)
def test_words_are_words(pred, gold, correct):
    _check(B(pred), gold, correct)


def test_answer_words_parse_as_words():
    from justrl_jax.verifier.answer import Word
    from justrl_jax.verifier.latex import parse_answer

    assert parse_answer("odd") == Word("odd")
    assert parse_answer("YES") == Word("YES")


@pytest.mark.parametrize(
    "pred, gold, correct",
    [
        ("1", "|AB| = 1", True),
        ("2", "|AB| = 1", False),
        ("|x| = 2", "x = 2", False),  # a condition on x, not x's value
        ("3", "|\\overline{AB}| = 3", True),
        ("(5, 2)", "p=5, q=2", True),
        ("5, 2", "p=5, q=2", True),
        ("2, 5", "p=5, q=2", False),  # ordered as written
        ("(2, 5)", "p=5, q=2", False),
        ("q=2, p=5", "p=5, q=2", True),  # labelled on both sides: the labels decide
        ("q=5, p=2", "p=5, q=2", False),
        ("x=1, x=2", "2, 1", True),  # one unknown's roots stay unordered
        ("(5,2),(7,2)", "p=5,q=2;p=7,q=2", True),
        ("(5,2),(2,7)", "p=5,q=2;p=7,q=2", False),
        ("4, 5", "AB=4,CD=5", True),
        ("2x+1+x^2", "y = x^2+2x+1", True),
        ("y = 2x+1+x^2", "x^2+2x+1", True),
        ("2x+1+x^2", "y = x^2+2x+2", False),
        ("f^{-1}(x) = 2x+3", "2x+3", True),
        ("f^{-1}(x) = 2x+4", "2x+3", False),
        ("19, 46, \\text{ and } 82", "19, 46, and 82", True),
        ("3, 1", "(1, 3)", False),
        ("m+n=5", "5", True),  # a sum of unknowns names the quantity asked for
        ("2m+n=5", "5", False),
        ("x<-2 \\text{ or } x>3", "(-\\infty,-2)\\cup(3,\\infty)", True),
        ("x<-2 \\text{ or } x>4", "(-\\infty,-2)\\cup(3,\\infty)", False),
        ("\\mathbb{R}", "(-\\infty, \\infty)", True),
        ("\\mathbb{R}", "\\mathbb{Z}", False),
    ],
)
def test_relations_and_assignments(pred, gold, correct):
    _check(B(pred), gold, correct)


def test_inverse_function_parses():
    import sympy

    from justrl_jax.verifier.latex import parse_answer

    assert parse_answer("f^{-1}(2)") == sympy.Function("f^{-1}")(sympy.Integer(2))
    assert parse_answer("x^{-1}(x+1)") == (sympy.Symbol("x") + 1) / sympy.Symbol("x")


@pytest.mark.parametrize(
    "response, gold, correct",
    [
        ("\\boxed{1} papers and \\boxed{2} bins", "1, 2", True),
        ("$$\\boxed{(3, 3)} \\text{ for part (a) and } \\boxed{(1, 1)}$$", "(3, 3), (1, 1)", True),
        ("$$\\boxed{(3, 3)} \\text{ for part (a) and } \\boxed{(1, 1)}$$", "(1, 1), (3, 3)", True),
        ("\\boxed{1,2}", "\\boxed{1} papers and \\boxed{2} bins", True),  # a gold split over boxes
        ("\\boxed{1,2}", "\\boxed{1} no no no no no \\boxed{2}", False),  # too much text: the last box
        ("\\boxed{2}", "\\boxed{1} no no no no no \\boxed{2}", True),
        ("\\boxed{1}. Later, \\boxed{2}", "1, 2", False),  # a new sentence: not one answer
        ("\\boxed{8} and then we get \\boxed{9}", "9", True),  # a one-item gold takes the last box
        ("\\boxed{8} and then we get \\boxed{9}", "8", False),
    ],
)
def test_several_boxes(response, gold, correct):
    _check(response, gold, correct)


@pytest.mark.parametrize(
    "response, gold, correct",
    [
        ("Answer: $9$", "9", True),
        ("Answer $ 9 $", "9", True),
        ("Answer \\[ \n 9 \n \\]", "9", True),  # display math may span lines
        ("Answer $ \n 9 \n $", "9", False),  # inline math may not
        ("Answer \\( (9+1) \\)", "10", True),
        ("the final answer is 1,000.99", "1000.99", True),
        ("the number is not 10 which is 1,000.99€", "1000.99", True),
        ("so the number is 10 which is 1,000.99m²", "1000.99", True),
        ("28 percent", "28\\%", True),
        ("$28$ percent", "0.28", True),
        ("We find that $x \\lt 3$.", "x < 3", True),
        ("The identity matrix is $ \\begin{pmatrix}1 & 0 \\\\ 0 & 1\\end{pmatrix} $.", IDENTITY, True),
        ("Lots of work.\nSo $y = 6$ So, the ordered pair is $(7, 6)$.", "(7, 6)", True),
        # no statement: a response cut off, or one that ends in a digit without a period
        ("Let me think. First we have $x=5$ and then", "5", False),
        ("Therefore, the number of ways is 12", "12", False),
        ("Step 1.\nWe get $x = 5$ and", "5", False),
        ("Some text without a final answer", "5", False),
        ("<think>Lots of work.\nSo the total is $12$.", "12", False),  # thinking never finished
        ("<think>Lots of work.</think>\nSo the total is $12$.", "12", True),
    ],
)
def test_free_text_answers(response, gold, correct):
    _check(response, gold, correct)


def test_free_text_extraction_source():
    from justrl_jax.verifier.extract import AnswerSource, final_answer

    found = final_answer("The identity matrix is $I$.")
    assert found.source is AnswerSource.FINAL_SENTENCE and found.span == "The identity matrix is $I$"
    assert final_answer("Answer: $9$").source is AnswerSource.STATEMENT
    assert final_answer("Let me think. First we have $x=5$ and then").source is AnswerSource.NONE


@pytest.mark.parametrize(
    "build, size, gold",
    [
        (lambda n: "$$" * n, 500_000, "5"),
        (lambda n: "\\[" * n, 500_000, "5"),
        (lambda n: "1 " * n, 500_000, "5"),
        (lambda n: "$1$ " * n, 250_000, "5"),
        (lambda n: "$ So" * n, 250_000, "5"),
        (lambda n: "\\boxed{1} papers and " * n, 50_000, "1, 2"),
        (lambda n: "\\boxed{1} a " * n, 80_000, "1, 2, 3"),
        (lambda n: "1,\\!" * n, 250_000, "1000"),
        (lambda n: "2{,}" * n, 250_000, "1000"),
    ],
    ids=lambda v: repr(v(1))[:16] if callable(v) else str(v),
)
def test_new_forms_stay_linear_on_1mb_inputs(build, size, gold):
    # The parent runs extraction and normalisation without a deadline: it must stay linear.
    from cpu_scaling import assert_linear

    from justrl_jax.verifier.robust import prepare

    assert_linear(build, lambda text: prepare(text, gold), size)


@pytest.mark.parametrize(
    "response, gold, correct",
    [
        ("The answer is 4", "4", True),
        ("The answer is 5", "4", False),
        ("So the answer is $\\frac{1}{2}$, I think.", "0.5", True),
        ("\\boxed{5}. I checked it twice: the answer is correct.", "5", True),  # a remark, not a statement
        ("\\boxed{5}. Wait, the answer is $6$.", "6", True),  # a later statement overrides the box
    ],
)
def test_answer_is_statements(response, gold, correct):
    _check(response, gold, correct)
