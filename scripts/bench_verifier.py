"""Verifier throughput: strict mode per core, and robust mode against Math-Verify.

Robust mode and Math-Verify (``math_verify.parse``/``verify`` as veRL's wrapper calls them: the gold
wrapped in ``\\boxed{}`` and parsed with LatexExtractionConfig, the response with Expr + Latex) score
the same generated chain-of-thought responses (a few KB each, ending in a box, some truncated),
with the same number of worker processes, after both pools are warm. Each response carries its
true verdict by construction, so both are also scored for accuracy.

A last line scores both on Math-Verify's own test pairs (tests/math_verify_cases.jsonl, the inputs
and settings of tests/math_verify_suite.py), inline in this process, one pass each with cold
caches: agreement with the expected verdicts, false positives, and mean time per case.

    python scripts/bench_verifier.py --n 512 --workers 2
    python scripts/bench_verifier.py --suite-only
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import random
import statistics
import sys
import time
from pathlib import Path

from justrl_jax.verifier import Verifier, VerifierConfig, VerifierMode, strict_verdict


def _answer(rng: random.Random) -> tuple[str, list[str], list[str]]:
    """(gold, answers a model may write for it that are correct, wrong answers), with random numbers
    so that almost every (answer, gold) pair is new: no dedupe or cache helps the robust verifier."""
    a, b, k = rng.randint(2, 999), rng.randint(2, 999), rng.randint(2, 9)
    kind = rng.randrange(10)
    if kind == 0:
        n = rng.randint(1000, 999_999)
        return str(n), [str(n), f"{n:,}", f"{n}.0", f"0{n}"], [str(n + 1), str(n * 10)]
    if kind == 1:
        g = math.gcd(a, b)
        p, q = a // g, b // g
        right = [f"\\frac{{{p}}}{{{q}}}", f"\\dfrac{{{k * p}}}{{{k * q}}}", f"{p}/{q}"]
        if q in (2, 4, 5, 8, 10, 16, 20, 25, 40, 50, 80, 100):
            right.append(repr(p / q))
        return f"\\frac{{{p}}}{{{q}}}", right, [f"\\frac{{{p + 1}}}{{{q}}}", f"{p / q + 0.01:.4f}"]
    if kind == 2:
        return (
            f"{k}\\sqrt{{{a}}}",
            [f"{k}\\sqrt{{{a}}}", f"\\sqrt{{{k * k * a}}}"],
            [f"{k + 1}\\sqrt{{{a}}}", f"\\sqrt{{{k * a}}}"],
        )
    if kind == 3:
        return (f"({a}, {b})", [f"({a},{b})", f"\\left({a}, {b}\\right)"], [f"({b}, {a + 1})", f"({a}, {b + 1})"])
    if kind == 4:
        lo, hi = sorted((a, b + 1000))
        return (f"[{lo}, {hi})", [f"[{lo},{hi})", f"\\left[{lo}, {hi}\\right)"], [f"[{lo},{hi}]", f"({lo}, {hi})"])
    if kind == 5:
        return (f"x^2+{2 * a}x+{a * a}", [f"(x+{a})^2", f"x^2 + {2 * a}x + {a * a}"], [f"(x-{a})^2", f"x^2+{a * a}"])
    if kind == 6:
        return (
            f"\\frac{{{k}\\pi}}{{{a}}}",
            [f"\\dfrac{{{k}\\pi}}{{{a}}}", f"{k}\\pi/{a}"],
            [f"\\frac{{\\pi}}{{{a}}}", f"\\frac{{{k}\\pi}}{{{a + 1}}}"],
        )
    if kind == 7:
        return f"{a}, {b + 1000}", [f"{b + 1000}, {a}", f"x = {a}, x = {b + 1000}"], [f"{a}, {b}", str(a)]
    if kind == 8:
        return f"{a}\\%", [f"{a}\\%", str(a), f"{a} \\%", f"{a / 100}"], [f"{a + 1}\\%", f"{(a + 1) / 100}"]
    return (
        f"-\\frac{{{a}}}{{{b + 1000}}}",
        [f"\\frac{{-{a}}}{{{b + 1000}}}", f"-{a}/{b + 1000}"],
        [f"\\frac{{{a}}}{{{b + 1000}}}", f"-\\frac{{{b + 1000}}}{{{a}}}"],
    )


_WORDS = (
    "we consider the expression and simplify each term carefully so that the result follows from "
    "the previous step where substituting the value gives a consistent equation which we now solve "
    "for the unknown while checking the boundary cases and the sign of every factor"
).split()


def _paragraph(rng: random.Random) -> str:
    words = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(25, 60)))
    a, b, c = rng.randint(2, 99), rng.randint(2, 99), rng.randint(2, 9)
    math = rng.choice(
        [
            f"$\\frac{{{a}}}{{{b}}} + {c} = \\frac{{{a + b * c}}}{{{b}}}$",
            f"\\[ x^{{{c}}} - {a}x + {b} = 0 \\]",
            f"$\\sqrt{{{a * a}}} = {a}$",
            f"$({a} + {b})^2 = {(a + b) ** 2}$",
        ]
    )
    return f"{words.capitalize()} {math}. "


def make_responses(n: int, seed: int) -> tuple[list[str], list[str], list[bool]]:
    """n responses of ~2-5 KB: reasoning paragraphs, then a boxed answer (or a truncated end)."""
    rng = random.Random(seed)
    responses, golds, truths = [], [], []
    for _ in range(n):
        gold, right, wrong = _answer(rng)
        body = "".join(_paragraph(rng) for _ in range(rng.randint(8, 20)))
        kind = rng.random()
        if kind < 0.1:  # truncated at the length limit: no final answer
            responses.append("<think>" + body[: len(body) * 2 // 3])
            truths.append(False)
        else:
            correct = kind < 0.55
            answer = rng.choice(right if correct else wrong)
            ending = rng.choice(
                [
                    f"Therefore, the final answer is $\\boxed{{{answer}}}$.",
                    f"**Final Answer**\n\\[\\boxed{{{answer}}}\\]",
                    f"So the answer is \\boxed{{{answer}}}.",
                ]
            )
            responses.append("<think>" + body + "</think>\n" + _paragraph(rng) + ending)
            truths.append(correct)
        golds.append(gold)
    return responses, golds, truths


def bench_strict(n: int) -> float:
    responses, golds, _ = make_responses(min(n, 2000), seed=1)
    responses, golds = (responses * (n // len(responses) + 1))[:n], (golds * (n // len(golds) + 1))[:n]
    start = time.thread_time()
    for response, gold in zip(responses, golds, strict=True):
        strict_verdict(response, gold)
    return n / (time.thread_time() - start)


def bench_robust(responses, golds, workers: int, cache: bool) -> tuple[float, list[bool]]:
    cfg = VerifierConfig(mode=VerifierMode.ROBUST, workers=workers, cache_size=100_000 if cache else 0)
    with Verifier(cfg) as verifier:
        verifier.pool.wait_ready()
        verifier.verify(["\\boxed{\\frac{1}{2}}"] * workers, ["0.5"] * workers)  # warm
        start = time.perf_counter()
        verdicts = verifier.verify(responses, golds)
        elapsed = time.perf_counter() - start
    return elapsed, [v.correct for v in verdicts]


def _mv_init():
    import math_verify  # noqa: F401  (warm the import in each worker)


def _mv_score(item: tuple[str, str]) -> bool:
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

    response, gold = item
    try:
        parsed_gold = parse(f"\\boxed{{{gold}}}", extraction_config=[LatexExtractionConfig()])
        parsed = parse(response, extraction_config=[ExprExtractionConfig(), LatexExtractionConfig()])
        return bool(verify(parsed_gold, parsed))
    except Exception:
        return False


def bench_math_verify(responses, golds, workers: int) -> tuple[float, list[bool]]:
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(workers, initializer=_mv_init) as pool:
        pool.map(_mv_score, [("\\boxed{1}", "1")] * (4 * workers))  # warm
        start = time.perf_counter()
        verdicts = pool.map(_mv_score, list(zip(responses, golds, strict=True)), chunksize=4)
        elapsed = time.perf_counter() - start
    return elapsed, verdicts


def bench_math_verify_suite() -> str:
    """One line: robust mode and Math-Verify on Math-Verify's test pairs (accuracy, false positives,
    mean time per case), both inline, each case scored once after a warm-up on other inputs."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from math_verify_suite import load_cases, math_verify_verdict, response_of, scored_cases

    from justrl_jax.verifier import robust

    cases = scored_cases(load_cases())
    inputs = [(response_of(c), c["gold"]) for c in cases]
    # Warm both (imports, SymPy's and Math-Verify's first-call set-up) on inputs outside the suite.
    warm = {"gold": "\\frac{1}{2}", "pred": "0.5", "settings": {"call": "verify(parse(gold), parse(pred))"}}
    robust.robust_verdict("\\boxed{x^2+1}", "1+x^2")
    math_verify_verdict(warm)
    robust.prepare_gold.cache_clear()
    robust._parse_gold.cache_clear()
    start = time.perf_counter()
    ours = [robust.robust_verdict(response, gold).correct for response, gold in inputs]
    ours_s = (time.perf_counter() - start) / len(cases)
    start = time.perf_counter()
    theirs = [math_verify_verdict(c) for c in cases]
    theirs_s = (time.perf_counter() - start) / len(cases)

    def score(verdicts):
        right = sum(v == c["expected"] for v, c in zip(verdicts, cases, strict=True))
        false_pos = sum(v and not c["expected"] for v, c in zip(verdicts, cases, strict=True))
        return f"{right}/{len(cases)} agree (false +{false_pos})"

    return (
        f"Math-Verify test suite, inline: justrl_jax robust {score(ours)}, {1000 * ours_s:.2f} ms/case; "
        f"math-verify {score(theirs)}, {1000 * theirs_s:.2f} ms/case; robust is {theirs_s / ours_s:.1f}x faster"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=512, help="robust-mode responses")
    parser.add_argument("--strict-n", type=int, default=200_000, help="strict-mode responses")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--suite-only", action="store_true", help="only the Math-Verify test-suite line")
    args = parser.parse_args()
    if args.suite_only:
        print(bench_math_verify_suite())
        return

    rate = bench_strict(args.strict_n)
    print(f"strict: {rate:,.0f} responses/s on one core (target >= 100,000)")

    responses, golds, truths = make_responses(args.n, args.seed)
    sizes = [len(r) for r in responses]
    print(
        f"robust: {args.n} responses, {statistics.mean(sizes) / 1024:.1f} KB mean "
        f"({min(sizes) / 1024:.1f}-{max(sizes) / 1024:.1f} KB), {sum(truths)} truly correct, "
        f"{args.workers} workers"
    )
    results = {
        "justrl_jax robust, no cache": bench_robust(responses, golds, args.workers, cache=False),
        "justrl_jax robust, cache": bench_robust(responses, golds, args.workers, cache=True),
        "math-verify": bench_math_verify(responses, golds, args.workers),
    }
    for name, (elapsed, verdicts) in results.items():
        accuracy = sum(v == t for v, t in zip(verdicts, truths, strict=True)) / len(truths)
        false_pos = sum(v and not t for v, t in zip(verdicts, truths, strict=True))
        false_neg = sum(t and not v for v, t in zip(verdicts, truths, strict=True))
        print(
            f"  {name:28s} {elapsed:7.2f} s  {args.n / elapsed:8.1f} responses/s  "
            f"{1000 * elapsed * args.workers / args.n:6.2f} ms/response/worker  accuracy {accuracy:.4f} "
            f"(false +{false_pos} / -{false_neg})"
        )
    ours = results["justrl_jax robust, no cache"][0]
    theirs = results["math-verify"][0]
    print(f"robust (no cache) is {theirs / ours:.1f}x faster than math-verify, {args.workers} workers each")
    print(bench_math_verify_suite())


if __name__ == "__main__":
    main()
