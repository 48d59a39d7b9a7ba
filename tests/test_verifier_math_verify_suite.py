"""Robust mode on Math-Verify's own test pairs (tests/math_verify_cases.jsonl), against Math-Verify
itself run on the same inputs (see math_verify_suite for the inputs and the settings chosen)."""

from __future__ import annotations

import pytest
from math_verify_suite import OUR_SETTINGS, load_cases, math_verify_verdict, response_of, scored_cases

from justrl_jax.verifier import robust_verdict

pytest.importorskip("math_verify")

ALL_CASES = load_cases()
CASES = scored_cases(ALL_CASES)


def test_case_file_is_the_suite_with_sources():
    ids = [c["id"] for c in ALL_CASES]
    assert len(ids) == len(set(ids)) and len(ids) > 250
    for case in ALL_CASES:
        assert case["source"].startswith("huggingface/Math-Verify/tests/test_") and "::test_" in case["source"]
        assert isinstance(case["expected"], bool) and isinstance(case["gold"], str) and isinstance(case["pred"], str)
    # the pairs left out are exactly those expected the other way under a setting robust mode does not have
    left_out = [c for c in ALL_CASES if c not in CASES]
    assert len(left_out) == 2 and all(any(c["settings"][k] != v for k, v in OUR_SETTINGS.items()) for c in left_out)
    for case in left_out:  # its twin, checked under our settings, is kept and expected the other way
        twins = [c for c in CASES if (c["gold"], c["pred"]) == (case["gold"], case["pred"])]
        assert twins and all(c["expected"] != case["expected"] for c in twins)


@pytest.fixture(scope="module")
def robust():
    return {c["id"]: robust_verdict(response_of(c), c["gold"]) for c in CASES}


def test_robust_never_accepts_a_pair_expected_false(robust):
    false_positives = [c["id"] for c in CASES if robust[c["id"]].correct and not c["expected"]]
    assert false_positives == []


def test_robust_agrees_at_least_as_often_as_math_verify(robust):
    ours = sum(robust[c["id"]].correct == c["expected"] for c in CASES)
    theirs = sum(math_verify_verdict(c) == c["expected"] for c in CASES)
    assert ours >= theirs, (ours, theirs, len(CASES))
