"""Where JustRL's evaluation rule and our robust verifier disagree, on a JSONL of verifier cases.

Both run through ``Verifier`` (worker pool, per-sample deadline), on every case's ``response`` and
``gold``; the table lists the cases where their verdicts differ, with the case's ``expected``
verdict. Prints markdown to stdout and a one-line summary to stderr.

    python scripts/justrl_vs_robust.py --cases /work/shared/verifier_cases_dev.jsonl --workers 2
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from justrl_jax.verifier import Verifier, VerifierConfig, VerifierMode


def _cell(text, width: int = 60) -> str:
    text = repr(text)[1:-1] if isinstance(text, str) else str(text)
    if len(text) > width:
        text = text[: width // 2 - 2] + " ... " + text[-(width // 2 - 3) :]
    return text.replace("|", "\\|")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", type=Path, required=True, help="JSONL with response, gold, expected (and id)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--timeout", type=float, default=VerifierConfig.sample_timeout_s)
    args = p.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    import os

    os.environ["JUSTRL_VERIFIER_CASES"] = str(args.cases)
    from verifier_cases import load_cases

    cases = load_cases()
    if not cases:
        print(f"no cases in {args.cases}", file=sys.stderr)
        return 2
    responses, golds = [c["response"] for c in cases], [c["gold"] for c in cases]
    verdicts = {}
    for mode in (VerifierMode.JUSTRL, VerifierMode.ROBUST):
        cfg = VerifierConfig(mode=mode, workers=args.workers, sample_timeout_s=args.timeout)
        with Verifier(cfg) as verifier:
            verdicts[mode] = verifier.verify(responses, golds)
    rows = []
    agree_expected = {VerifierMode.JUSTRL: 0, VerifierMode.ROBUST: 0}
    for i, case in enumerate(cases):
        j, r = verdicts[VerifierMode.JUSTRL][i], verdicts[VerifierMode.ROBUST][i]
        for mode, v in ((VerifierMode.JUSTRL, j), (VerifierMode.ROBUST, r)):
            agree_expected[mode] += v.correct == bool(case["expected"])
        if j.correct != r.correct:
            rows.append(
                f"| {case['id']} | {_cell(case['gold'], 30)} | {_cell(case['response'])} | {case['expected']} | "
                f"{j.correct} ({j.status.value}) | {r.correct} ({r.status.value}) |"
            )
    print("| id | gold | response | expected | justrl | robust |")
    print("|---|---|---|---|---|---|")
    print("\n".join(rows))
    print(
        f"{len(cases)} cases, {len(rows)} differ; agree with 'expected': justrl "
        f"{agree_expected[VerifierMode.JUSTRL]}, robust {agree_expected[VerifierMode.ROBUST]}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
