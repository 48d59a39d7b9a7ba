"""Robust mode, split where the process boundary goes.

``prepare`` is cheap string work with linear-time patterns on capped input (extraction, guards on
length and nesting, normalisation): the parent runs it to build the cache key and to settle the
easy verdicts (no answer, too long, equal strings) without a round trip to a worker.
``judge`` parses both answers into SymPy and runs the equivalence cascade; it is the part that
can take unbounded time on hostile input, so the pool runs it under a deadline it enforces by
killing the worker.

``robust_verdict`` chains the two in the calling process (no deadline: for tests, tools and
trusted input; the training loop uses ``Verifier``, which adds the pool).
"""

from __future__ import annotations

import dataclasses
import functools
import re

from justrl_jax.verifier import extract, normalize
from justrl_jax.verifier.verdict import Verdict, VerdictStatus, make_verdict
from justrl_jax.verifier.verifier_config import VerifierConfig

MAX_BRACE_DEPTH = 50


@dataclasses.dataclass(frozen=True)
class Prepared:
    """The string stage's result. ``status`` is set when the verdict is already decided."""

    pred: str | None  # the extracted answer, for the verdict
    pred_key: str  # normalised prediction (with gold_key: the cache key and the judge's input)
    gold_key: str  # normalised gold
    status: VerdictStatus | None = None
    correct: bool = False


def _brace_depth(text: str) -> int:
    depth = deepest = 0
    for char in text:
        if char == "{":
            depth += 1
            deepest = max(deepest, depth)
        elif char == "}":
            depth -= 1
    return deepest


_PERCENT = re.compile(r"^[^%]*[0-9][^%]*\\?%\s*$|percent(?:age)?\s*$")
PERCENT_MARK = "%"  # ends the key of a percentage: "25%" is 25 or 0.25


def _is_percent(span: str) -> bool:
    return bool(_PERCENT.search(span.replace("\\%", "%").replace("$", "").strip()))


@functools.lru_cache(maxsize=4096)
def prepare_gold(gold: str) -> tuple[str, bool, int]:
    """(normalised gold, whether it is one number, its number of top-level items). A gold that is
    one number with a percent sign keeps a trailing ``%`` in its key: 25% is 25 or 0.25."""
    span = extract.gold_span(gold)
    try:
        key = normalize.normalize_answer(span)
    except normalize.NestingError:
        key = span
    number = normalize.single_number(key)
    if number is None or normalize.decimal_comma_reading(key) is not None:
        # "6,8": a list or 6.8, so not one number for the prediction's normalisation; the judge
        # accepts either reading.
        return key, False, extract.count_items(span)
    return number + (PERCENT_MARK if _is_percent(span) else ""), True, 1


def prepare(response: str, gold: str, max_answer_chars: int = 1000) -> Prepared:
    """Extraction, guards on size, normalisation and the string-equality step."""
    gold_key, gold_is_number, gold_items = prepare_gold(gold)
    found = extract.final_answer(response, gold_items)
    if found.span is None:
        return Prepared(None, "", gold_key, VerdictStatus.NO_ANSWER)
    span = found.span.strip()
    if len(span) > max_answer_chars:
        return Prepared(span[:max_answer_chars], "", gold_key, VerdictStatus.TOO_LONG)
    if _brace_depth(span) > MAX_BRACE_DEPTH:
        return Prepared(span, "", gold_key, VerdictStatus.TOO_LONG)
    refined = extract.refine_span(span)
    try:
        key = normalize.normalize_answer(refined, gold_is_number)
    except normalize.NestingError:
        return Prepared(span, "", gold_key, VerdictStatus.TOO_LONG)
    if not key:
        return Prepared(span, "", gold_key, VerdictStatus.NO_ANSWER)
    if gold_items == 1 and normalize.thousands_number(key) is not None:
        key = normalize.thousands_number(key)  # "1,000,000" against one value (10^6) is one number
    if (_is_percent(refined) or _is_percent(span)) and normalize.single_number(key) is not None:
        key = normalize.single_number(key) + PERCENT_MARK  # "10%": 10 or 0.1, as for the gold
    if key.removesuffix(PERCENT_MARK) == gold_key.removesuffix(PERCENT_MARK):
        return Prepared(span, key, gold_key, VerdictStatus.OK, correct=True)
    return Prepared(span, key, gold_key)


@functools.lru_cache(maxsize=4096)
def _parse_gold(gold_key: str):
    from justrl_jax.verifier.latex import parse_answer

    return parse_answer(gold_key)


def judge(pred_key: str, gold_key: str) -> tuple[bool, VerdictStatus]:
    """Parses both normalised answers and compares them: (correct, status)."""
    from justrl_jax.verifier.equivalence import equivalent
    from justrl_jax.verifier.latex import GuardError, ParseError, parse_answer

    if pred_key.replace(" ", "").casefold() == gold_key.replace(" ", "").casefold():
        return True, VerdictStatus.OK
    golds = [gold_key]
    if pred_key.endswith(PERCENT_MARK) and gold_key.endswith(PERCENT_MARK):
        pred_key, gold_key = pred_key[:-1], gold_key[:-1]  # both percentages: the numbers compare
        golds = [gold_key]
    elif pred_key.endswith(PERCENT_MARK):  # "10%" against 0.1 or 10
        pred_key, golds = pred_key[:-1], [gold_key, f"{gold_key} \\cdot 100"]
    elif gold_key.endswith(PERCENT_MARK):  # "25%": 25 or 0.25
        golds = [gold_key[:-1], f"\\frac{{{gold_key[:-1]}}}{{100}}"]
    elif normalize.decimal_comma_reading(gold_key) is not None:  # "6,8": the list or 6.8
        golds.append(normalize.decimal_comma_reading(gold_key))
    try:
        golds = [_parse_gold(g) for g in golds]
    except (ParseError, GuardError):
        return False, VerdictStatus.OK  # an unparseable gold is matched by its string only
    try:
        pred = parse_answer(pred_key)
    except GuardError:
        return False, VerdictStatus.TOO_LONG
    except ParseError:
        return False, VerdictStatus.ERROR
    try:
        return any(equivalent(pred, gold) for gold in golds), VerdictStatus.OK
    except (RecursionError, MemoryError, OverflowError):
        return False, VerdictStatus.TOO_LONG
    except GuardError:
        return False, VerdictStatus.TOO_LONG
    except Exception:  # SymPy raises many types on odd input; any of them means unjudgeable
        return False, VerdictStatus.ERROR


_DEFAULT = VerifierConfig()


def robust_verdict(
    response: str, gold: str, cfg: VerifierConfig | None = None, response_length: int | None = None
) -> Verdict:
    """The robust verdict of one response, computed inline (no deadline, no pool).

    Example::

        robust_verdict("... so the answer is \\\\boxed{\\\\frac{1}{2}}", "0.5").correct   # True
    """
    cfg = cfg or _DEFAULT
    prepared = prepare(response, gold, cfg.max_answer_chars)
    if prepared.status is not None:
        return make_verdict(prepared.correct, prepared.pred, prepared.status, cfg, response_length)
    correct, status = judge(prepared.pred_key, prepared.gold_key)
    return make_verdict(correct, prepared.pred, status, cfg, response_length)
