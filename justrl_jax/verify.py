"""Score a JSONL file of responses: ``python -m justrl_jax.verify``.

Each input line is a JSON object with ``response`` and ``gold`` (strings; a numeric gold is read
as its decimal string); every other field passes through. Each output line is the input object
plus ``reward``, ``correct``, ``pred`` and ``status``. A malformed line is reported on stderr with
its line number and left out of the output; the rest is still scored (exit status 1 if any line
was malformed). A summary (counts per status, accuracy, time) goes to stderr.

Example::

    python -m justrl_jax.verify --mode robust --input rollouts.jsonl --output scored.jsonl --workers 4
    python -m justrl_jax.verify --mode justrl ...   # JustRL's evaluation rule (last box anywhere, MATH or SymPy)
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import time
from pathlib import Path

from justrl_jax.output_file import atomic_file, check_output
from justrl_jax.verifier import VerdictStatus, Verifier, VerifierConfig, VerifierMode

_CHUNK = 4096  # lines scored per submit: bounded memory on big files, batches still large


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m justrl_jax.verify", description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=[m.value for m in VerifierMode], default=VerifierMode.STRICT.value)
    parser.add_argument("--input", required=True, type=Path, help="JSONL with response and gold fields")
    parser.add_argument("--output", required=True, type=Path, help="JSONL written with the verdicts")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    parser.add_argument("--workers", type=int, default=VerifierConfig.workers, help="robust-mode processes")
    parser.add_argument(
        "--timeout",
        type=float,
        default=VerifierConfig.sample_timeout_s,
        help="robust mode: seconds per sample before its worker is killed",
    )
    parser.add_argument(
        "--batch-timeout",
        type=float,
        default=VerifierConfig.batch_timeout_s,
        help="robust mode: seconds per chunk of lines",
    )
    return parser.parse_args(argv)


def _read(path: Path, errors: list[str]):
    """Yields (line number, record) for well-formed lines; appends a message per malformed one."""
    with path.open("r", encoding="utf-8", errors="surrogateescape") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                errors.append(f"line {number}: not valid JSON ({e.msg} at column {e.colno})")
                continue
            if not isinstance(record, dict):
                errors.append(f"line {number}: expected a JSON object, got {type(record).__name__}")
                continue
            bad = _check_fields(record)
            if bad:
                errors.append(f"line {number}: {bad}")
                continue
            yield number, record


def _check_fields(record: dict) -> str | None:
    for field in ("response", "gold"):
        if field not in record:
            return f"missing field {field!r}"
    if not isinstance(record["response"], str):
        return f"field 'response' must be a string, got {type(record['response']).__name__}"
    gold = record["gold"]
    if isinstance(gold, bool) or not isinstance(gold, (str, int, float)):
        return f"field 'gold' must be a string or a number, got {type(gold).__name__}"
    return None


def _score(verifier: Verifier, chunk: list[dict], out, counts: collections.Counter) -> int:
    verdicts = verifier.verify([r["response"] for r in chunk], [str(r["gold"]) for r in chunk])
    correct = 0
    for record, verdict in zip(chunk, verdicts, strict=True):
        record = dict(
            record, reward=verdict.reward, correct=verdict.correct, pred=verdict.pred, status=verdict.status.value
        )
        out.write(json.dumps(record, ensure_ascii=True) + "\n")
        counts[verdict.status.value] += 1
        correct += verdict.correct
    return correct


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    if not args.input.is_file():
        print(f"verify: input file {args.input} does not exist", file=sys.stderr)
        return 2
    try:
        config = VerifierConfig(
            mode=VerifierMode(args.mode),
            workers=args.workers,
            sample_timeout_s=args.timeout,
            batch_timeout_s=args.batch_timeout,
        )
        check_output(args.output, [args.input], overwrite=args.overwrite)
    except ValueError as e:
        print(f"verify: {e}", file=sys.stderr)
        return 2
    errors: list[str] = []
    counts: collections.Counter = collections.Counter()
    correct = scored = 0
    start = time.perf_counter()
    # Written under a temporary name: a failure leaves an existing --output as it was.
    with Verifier(config) as verifier, atomic_file(args.output) as out:
        chunk: list[dict] = []
        for _, record in _read(args.input, errors):
            chunk.append(record)
            if len(chunk) == _CHUNK:
                correct += _score(verifier, chunk, out, counts)
                scored += len(chunk)
                chunk = []
        if chunk:
            correct += _score(verifier, chunk, out, counts)
            scored += len(chunk)
    seconds = time.perf_counter() - start
    for message in errors:
        print(f"verify: {args.input}: {message}", file=sys.stderr)
    by_status = ", ".join(f"{s.value}={counts.get(s.value, 0)}" for s in VerdictStatus)
    accuracy = correct / scored if scored else 0.0
    print(
        f"verify: mode={args.mode} scored={scored} malformed={len(errors)} correct={correct} "
        f"accuracy={accuracy:.4f} [{by_status}] time={seconds:.2f}s "
        f"({scored / max(seconds, 1e-9):.0f}/s)",
        file=sys.stderr,
    )
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
