"""JustRL's evaluation rule (``verify --mode justrl``), checked against the released rule's decisions.

``tests/data/justrl_rule_cases.jsonl`` holds (response, gold, correct) for 285 pairs we wrote by
hand to exercise each step of the rule; ``correct`` is what thunlp/JustRL's released
``evals/utils.py::grade_answer_verl`` (pylatexenc 2.11, SymPy 1.14) returned on them, recorded
once offline (the released function evaluates its input with ``parse_expr``, so it is run only on
these trusted strings, never here and never on model text).
"""

from __future__ import annotations

import json

import pytest
from verifier_cases import data_rows

from justrl_jax.verifier import VerdictStatus, Verifier, VerifierConfig, VerifierMode
from justrl_jax.verifier.justrl_parse import RefusedError, parse_plain
from justrl_jax.verifier.justrl_rule import (
    _normalize_sympy,
    extract_answer,
    justrl_grade,
    latex_to_text,
    mathd_normalize,
)

CASES = data_rows("justrl_rule_cases.jsonl")
# Every gold of MATH-500, OlympiadBench and Minerva (JustRL's data/), with the released rule's two
# normalisations of it (mathd_normalize_answer and _normalize, pylatexenc 2.11): LaTeX from fractions
# and roots to matrices, accents, Greek letters and units, as the benchmarks write it.
GOLDS = data_rows("justrl_normalized_golds.jsonl")


def test_fixture_covers_both_verdicts():
    assert len(CASES) == 285
    assert 0 < sum(c["correct"] for c in CASES) < len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[f"{i}" for i in range(len(CASES))])
def test_matches_the_released_rule(case):
    correct, _ = justrl_grade(case["response"], case["gold"])
    assert correct == case["correct"], (case["response"], case["gold"])


def test_both_normalisations_match_the_released_rule_on_every_benchmark_gold():
    assert len(GOLDS) == 1446
    mathd = [g["gold"] for g in GOLDS if mathd_normalize(g["gold"]) != g["mathd"]]
    sympy_step = [g["gold"] for g in GOLDS if _normalize_sympy(g["gold"]) != g["sympy_normalized"]]
    assert mathd == [] and sympy_step == []


def test_matches_the_released_rule_on_benchmark_golds_and_their_rewrites():
    # 600 (response, gold) pairs from the golds above: a gold boxed after a rewrite (\\frac -> a/b,
    # \\sqrt{n} -> \\sqrt n, \\pi -> π, no \\left/\\right, a unit, parentheses, upper case, ...) or another
    # gold; 300 of them accepted by the SymPy step only. ``correct``: the released rule, recorded offline.
    pairs = data_rows("justrl_rule_benchmark_pairs.jsonl")
    wrong = [(p["response"], p["gold"]) for p in pairs if justrl_grade(p["response"], p["gold"])[0] != p["correct"]]
    assert len(pairs) == 600 and wrong == []


def test_last_box_anywhere_thinking_included():
    assert justrl_grade("<think>so \\boxed{3}</think> The answer is 5.", "3") == (True, "3")
    assert justrl_grade("<think>\\boxed{3}</think> \\boxed{5}", "3") == (False, "5")


def test_unclosed_or_braceless_last_box_is_no_answer():
    assert extract_answer("\\boxed{3} then \\boxed{4") is None
    assert extract_answer("\\boxed{3} then \\boxed 4") is None
    assert justrl_grade("\\boxed{3} then \\boxed 4", "3") == (False, None)


def test_fbox_and_boxed_gold():
    assert justrl_grade("\\fbox{3}", "3") == (False, None)
    assert justrl_grade("\\boxed{3} \\fbox{4}", "3")[0]
    assert justrl_grade("\\boxed{3}", "\\boxed{3}")[0]
    assert not justrl_grade("\\boxed{3}", "\\boxed 3")[0]  # a gold whose box does not open reads as none
    assert not justrl_grade("\\boxed{3}", "")[0]


def test_fractions_integers_and_tuples_as_the_rule_decides():
    assert not justrl_grade("\\boxed{\\frac{2}{4}}", "\\frac{1}{2}")[0]  # unreduced vs reduced: string rule
    assert justrl_grade("\\boxed{\\frac{4}{8}}", "0.5")[0]  # ... but SymPy against a decimal gold
    assert justrl_grade("\\boxed{3.0}", "3")[0]
    assert not justrl_grade("\\boxed{\\frac{9}{3}}", "3")[0]  # an integer gold needs an integer string
    assert justrl_grade("\\boxed{(1,2)}", "(1, 2)")[0]
    assert not justrl_grade("\\boxed{(1,2)}", "[1,2]")[0]  # brackets must match
    assert not justrl_grade("\\boxed{4.5 \\times 10^{33}}", "4.5e33")[0]  # a two-digit exponent is never compared


def test_mathd_normalisation_steps():
    assert mathd_normalize("\\text{(A)}") == "(A)"
    assert mathd_normalize("\\dfrac12") == "\\frac{1}{2}"
    assert mathd_normalize("k = 3") == "3"
    assert mathd_normalize("3/4") == "\\frac{3}{4}"
    assert mathd_normalize("0.5") == "\\frac{1}{2}"
    assert mathd_normalize("\\sqrt3 + \\frac") == "\\sqrt3 + \\frac"  # the released code raises: unchanged


def test_latex_rendering_matches_pylatexenc_on_the_common_macros():
    # Each right-hand side is pylatexenc 2.11's latex_to_text output after the rule's replacements.
    assert latex_to_text("\\frac{1}{2+3}") == "1/2+3"
    assert latex_to_text("2\\frac{1}{2}") == "2 1/2"
    assert latex_to_text("\\sqrt[3]{2}") == "sqrt(2)"
    assert latex_to_text("\\alpha \\le \\pi") == "α≤pi"  # a space after a macro name is eaten
    assert latex_to_text("a \\cdot b") == "a *b"
    assert latex_to_text("3\\cdot 10^{5}") == "3*10^5"
    assert latex_to_text("\\text{ cm}") == "cm"


@pytest.mark.parametrize(
    "text",
    [
        "__import__('os').system('true')",
        "().__class__",
        "lambda:1",
        "x=1",
        "(1,2)",
        "2**(10**10)",
        "(9**9)**(9**9)",
        "100000!",
        "0x10",
        "2j",
        "k(d-k)!",
        "007",
        "nan",
        "sqrt",
        "(" * 1000 + "1" + ")" * 1000,
    ],
)
def test_parser_refuses_what_it_must_not_evaluate(text):
    with pytest.raises(RefusedError):
        parse_plain(text)


def test_parser_builds_what_parse_expr_builds():
    import sympy

    x, y = sympy.symbols("x y")
    assert parse_plain("2x**2y") == 2 * x**2 * y
    assert parse_plain("-2**2") == -4
    assert parse_plain("2**-1") == sympy.Rational(1, 2)
    assert parse_plain("2**3**2") == 512
    assert parse_plain("sqrt(3)sqrt(2)") == sympy.sqrt(6)
    assert parse_plain("x2") == 2 * x
    assert parse_plain("1e-5") == sympy.Float("1e-5")
    assert parse_plain("5!") == 120
    assert parse_plain("pi(2)") == 2 * sympy.pi
    assert parse_plain("ln(2)") == sympy.log(2)
    assert parse_plain("52_8") == 528  # a Python literal


def test_verifier_mode_runs_the_rule_in_the_pool():
    sample = CASES[::7] + [{"response": "no box, 3", "gold": "3", "correct": False}]
    cfg = VerifierConfig(mode=VerifierMode.JUSTRL, workers=1, correct_reward=1.0, incorrect_reward=0.0)
    with Verifier(cfg) as verifier:
        verdicts = verifier.verify([c["response"] for c in sample], [c["gold"] for c in sample])
    assert [v.correct for v in verdicts] == [c["correct"] for c in sample]
    assert all(v.reward == float(v.correct) for v in verdicts)
    no_box = [v for v, c in zip(verdicts, sample, strict=True) if "\\boxed" not in c["response"]]
    assert no_box and all(v.status is VerdictStatus.NO_ANSWER for v in no_box)


def test_verify_cli_mode_justrl(tmp_path):
    from justrl_jax.verify import main

    src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    rows = [
        {"response": "<think>\\boxed{7}</think> so \\boxed{\\frac{1}{2}}", "gold": "0.5"},
        {"response": "\\boxed{3} and \\boxed 4", "gold": "3"},
    ]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["--mode", "justrl", "--input", str(src), "--output", str(dst), "--workers", "1"]) == 0
    out = [json.loads(line) for line in dst.read_text().splitlines()]
    assert [(o["correct"], o["pred"], o["status"]) for o in out] == [
        (True, "\\frac{1}{2}", "ok"),
        (False, None, "no_answer"),
    ]
