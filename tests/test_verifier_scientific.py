"""Scientific notation in the robust verifier: ``4.5e33`` is one number, in golds and in answers.

``tests/data/minerva_e_notation_golds.jsonl``: the 58 golds of Minerva (thunlp/JustRL
``data/Minerva/test.parquet``, ``reward_model.ground_truth``) written in e-notation, with their row.
"""

from __future__ import annotations

import re

import pytest
from verifier_cases import data_rows

from justrl_jax.verifier import robust_verdict
from justrl_jax.verifier.normalize import scientific_notation

GOLDS = data_rows("minerva_e_notation_golds.jsonl")
_SPLIT = re.compile(r"^([0-9.]+)[eE]([+-]?[0-9]+)$")


def _box(answer: str) -> str:
    return f"Thus the answer is $\\boxed{{{answer}}}$."


def _parts(gold: str) -> tuple[str, int]:
    m = _SPLIT.match(gold)
    assert m is not None, gold
    return m.group(1), int(m.group(2))


def test_every_e_notation_gold_of_minerva_is_here():
    assert len(GOLDS) == 58
    assert all(_SPLIT.match(g["gold"]) for g in GOLDS)


@pytest.mark.parametrize("gold", [g["gold"] for g in GOLDS])
def test_minerva_gold_matches_its_times_ten_form(gold):
    mantissa, exponent = _parts(gold)
    assert robust_verdict(_box(f"{mantissa} \\times 10^{{{exponent}}}"), gold).correct
    assert robust_verdict(_box(f"{mantissa}\\cdot10^{{{exponent}}}"), gold).correct
    assert robust_verdict(_box(gold), gold).correct
    assert not robust_verdict(_box(f"{mantissa} \\times 10^{{{exponent + 1}}}"), gold).correct


@pytest.mark.parametrize(
    ("answer", "gold", "correct"),
    [
        ("4.5 \\times 10^{33}", "4.5e33", True),
        ("4.5\\cdot10^{33}", "4.5e33", True),
        ("4.5 \\times 10^{33}\\,\\mathrm{cm}", "4.5e33", True),
        ("4.5e33", "4.5 \\times 10^{33}", True),
        ("10^{-5}", "1e-5", True),
        ("0.00001", "1e-5", True),
        ("2.7778 \\times 10^{-6}", "2.7778e-6", True),
        ("6.02 \\times 10^{23}", "6.02E+23", True),
        ("6.02e23", "6.02E+23", True),
        ("e^{-5}", "1e-5", False),
        ("4.6 \\times 10^{33}", "4.5e33", False),
    ],
)
def test_scientific_notation_cases(answer, gold, correct):
    assert robust_verdict(_box(answer), gold).correct is correct


def test_what_is_not_e_notation_is_left_alone():
    assert scientific_notation("4.5e33") == "4.5\\times 10^{33}"
    assert scientific_notation("1e-5") == "1\\times 10^{-5}"
    assert scientific_notation("6.02E+23") == "6.02\\times 10^{23}"
    for text in ("e^{-5}", "2e", "3e^{2}", "x1e5", "\\frac{e}{2}", "2e^x"):
        assert scientific_notation(text) == text
