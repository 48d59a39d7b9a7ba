"""Builds tests/math_verify_cases.jsonl: every (gold, prediction, expected) pair of Math-Verify's
own test suite, with its source file, test function and the Math-Verify settings it is checked
under. Cases only: no Math-Verify code is copied.

    git -C MIRROR archive HEAD tests | tar -x -C /tmp/mv      # a checkout of huggingface/Math-Verify
    python scripts/make_math_verify_cases.py /tmp/mv --ref 5d148cf... > tests/math_verify_cases.jsonl

The test modules are imported (math-verify is a test dependency) and each parametrized test's
arguments are read from its ``pytest.mark.parametrize`` marks; the settings (``match_types``,
``precision``, ``strict``, ``allow_set_relation_comp``) are read from the keyword arguments of the
``compare_strings`` call in the test body (a parameter name there means the value comes from the
case). Tests that are not (gold, prediction) pairs (string extraction, configs, timeouts) are skipped.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import inspect
import json
import sys
from pathlib import Path

DEFAULTS = {"match_types": ["latex", "expr"], "precision": 6, "strict": True, "allow_set_relation_comp": False}
# Test parameter names for the prediction and the expected verdict across the suite's files.
_PRED = ("pred",)
_EXPECTED = ("expected", "result")


def _settings(func) -> dict | None:
    """{setting: literal value or ("param", name)} from the compare_strings / verify call in ``func``,
    None when the test does not compare a pair."""
    tree = ast.parse(inspect.getsource(func).lstrip())
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "compare_strings":
            out = {}
            for kw in node.keywords:
                if isinstance(kw.value, ast.Name):
                    out[kw.arg] = ("param", kw.value.id)
                else:
                    out[kw.arg] = ast.literal_eval(kw.value)
            return {"call": "compare_strings", **out}
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "verify":
            if all(isinstance(a, ast.Call) and getattr(a.func, "id", None) == "parse" for a in node.args):
                return {"call": "verify(parse(gold), parse(pred))"}
    return None


def cases(root: Path, ref: str):
    sys.path.insert(0, str(root))
    for path in sorted((root / "tests").glob("test_*.py")):
        module = importlib.import_module(f"tests.{path.stem}")
        for name, func in inspect.getmembers(module, inspect.isfunction):
            if not name.startswith("test_") or func.__module__ != module.__name__:
                continue
            marks = [m for m in getattr(func, "pytestmark", []) if m.name == "parametrize"]
            settings = _settings(func)
            if not marks or settings is None:
                continue
            names = [n.strip() for n in marks[0].args[0].split(",")]
            for k, values in enumerate(marks[0].args[1]):
                row = dict(zip(names, values, strict=True))
                resolved = {"call": settings["call"]}
                for key, default in DEFAULTS.items():
                    value = settings.get(key, default)
                    if isinstance(value, tuple) and value[0] == "param":
                        value = row[value[1]]
                    resolved[key] = value
                if resolved["call"] != "compare_strings":
                    del resolved["match_types"]  # parse()'s own default extraction configs
                pred = next(row[n] for n in _PRED if n in row)
                expected = next(row[n] for n in _EXPECTED if n in row)
                yield {
                    "id": f"mv-{path.stem.removeprefix('test_')}-{name.removeprefix('test_')}-{k:03d}",
                    "source": f"huggingface/Math-Verify/tests/{path.name}::{name}",
                    "source_ref": ref,
                    "gold": row["gold"],
                    "pred": pred,
                    "expected": bool(expected),
                    "settings": resolved,
                }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path, help="a checkout of huggingface/Math-Verify (its tests/ is read)")
    parser.add_argument("--ref", required=True, help="the commit of that checkout, recorded in each case")
    args = parser.parse_args()
    for case in cases(args.root, args.ref):
        print(json.dumps(case, ensure_ascii=False))


if __name__ == "__main__":
    main()
