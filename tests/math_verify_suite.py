"""Math-Verify's own test pairs (tests/math_verify_cases.jsonl, built by scripts/make_math_verify_cases.py)
as a benchmark for robust mode, and Math-Verify itself scored on the same inputs.

Inputs: the gold as written; the prediction as written, except that a *bare* prediction (no box, no
line break and no word of prose outside math: ``$[0,1)$``, ``7,425,000``, ``$Even$``) is given as a
model would write it, ``The final answer is \\boxed{...}.``. Free text (``Answer $ 9 $``,
``28 percent``, a chain of thought) stays as it is.

Settings: the pairs are checked by Math-Verify under several settings. Robust mode has one behaviour,
which is Math-Verify's ``strict=True`` (``f(x)`` is not ``f(y)``) and ``allow_set_relation_comp=True``
(``x \\in [-2, 7]`` is the condition ``-2 <= x <= 7``, from either side); the pairs whose expected
verdict holds only under the other value are left out (``scored``). Float rounding (``precision``)
and extraction targets (``match_types``) are not exposed: every pair counts, and Math-Verify runs
with the pair's own settings, so it has that advantage.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

CASES_PATH = Path(__file__).resolve().parent / "math_verify_cases.jsonl"
OUR_SETTINGS = {"strict": True, "allow_set_relation_comp": True}

_MATH = re.compile(r"\$\$.*?\$\$|\$.*?\$|\\\(.*?\\\)|\\\[.*?\\\]|\\[A-Za-z]+", re.DOTALL)
_PROSE_WORD = re.compile(r"[A-Za-z]{3,}")


def load_cases() -> list[dict]:
    with CASES_PATH.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def scored_cases(cases: list[dict]) -> list[dict]:
    """The pairs robust mode is held to: where the same (gold, prediction) is expected both ways
    under different settings, only the pair whose varying settings are OUR_SETTINGS."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for case in cases:
        groups.setdefault((case["gold"], case["pred"]), []).append(case)

    def keep(case: dict) -> bool:
        group = groups[case["gold"], case["pred"]]
        if len({c["expected"] for c in group}) == 1:
            return True
        varying = [k for k in OUR_SETTINGS if len({c["settings"].get(k) for c in group}) > 1]
        return bool(varying) and all(case["settings"].get(k) == OUR_SETTINGS[k] for k in varying)

    return [case for case in cases if keep(case)]


def is_bare(pred: str) -> bool:
    """No box, one line, and no prose word outside math and LaTeX commands."""
    if "\\boxed" in pred or "\\fbox" in pred or "\n" in pred.strip():
        return False
    return not _PROSE_WORD.search(_MATH.sub(" ", pred))


def _strip_math_delimiters(text: str) -> str:
    text = text.strip()
    for left, right in (("$$", "$$"), ("\\[", "\\]"), ("\\(", "\\)"), ("$", "$")):
        inner = text[len(left) : len(text) - len(right)]
        if len(text) > len(left) + len(right) and text.startswith(left) and text.endswith(right) and "$" not in inner:
            return inner.strip()
    return text


def response_of(case: dict) -> str:
    """The prediction as the response both verifiers score."""
    pred = case["pred"]
    if is_bare(pred):
        return f"The final answer is \\boxed{{{_strip_math_delimiters(pred)}}}."
    return pred


def math_verify_verdict(case: dict) -> bool:
    """Math-Verify on (gold, response_of(case)), called as the pair's own test calls it."""
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

    settings = case["settings"]
    response = response_of(case)
    try:
        if settings["call"] == "compare_strings":
            targets = [
                LatexExtractionConfig(boxed_match_priority=0) if t == "latex" else ExprExtractionConfig()
                for t in settings["match_types"]
            ]
            gold, pred = parse(case["gold"], targets), parse(response, targets)
            return bool(
                verify(
                    gold,
                    pred,
                    float_rounding=settings["precision"],
                    strict=settings["strict"],
                    allow_set_relation_comp=settings["allow_set_relation_comp"],
                )
            )
        return bool(verify(parse(case["gold"]), parse(response)))
    except Exception:  # Math-Verify's own errors count as a "no"
        return False
