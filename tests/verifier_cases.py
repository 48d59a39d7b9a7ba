"""The verifier dev cases, loaded once for the verifier tests (``JUSTRL_VERIFIER_CASES`` overrides).

``tests/verifier_cases_dev.jsonl`` is a copy of ``../shared/verifier_cases_dev.jsonl`` kept in the repository, so a
fresh clone (and CI) runs these tests instead of skipping them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

CASES_PATH = Path(os.environ.get("JUSTRL_VERIFIER_CASES", Path(__file__).resolve().parent / "verifier_cases_dev.jsonl"))


def load_cases() -> list[dict]:
    """Every case, with ``response_build`` (prefix + repeat * times + suffix) expanded into ``response``."""
    if not CASES_PATH.is_file():
        return []
    cases = []
    # errors="surrogatepass": the file may hold a lone surrogate on purpose.
    with CASES_PATH.open(encoding="utf-8", errors="surrogatepass") as f:
        for line in f:
            if line.strip():
                case = json.loads(line)
                if "response" not in case:
                    build = case["response_build"]
                    case["response"] = build["prefix"] + build["repeat"] * build["times"] + build["suffix"]
                cases.append(case)
    return cases


def data_rows(name: str) -> list[dict]:
    """The rows of the JSONL file ``tests/data/<name>`` (fixtures recorded from the released rule and benchmarks)."""
    text = (Path(__file__).resolve().parent / "data" / name).read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines()]
