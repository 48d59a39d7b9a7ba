"""``python -m justrl_jax.verify``: JSONL in, verdicts out, malformed lines reported by number."""

from __future__ import annotations

import json

import pytest

from justrl_jax.verify import main


def _write(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def test_strict_cli_scores_and_passes_fields_through(tmp_path, capsys):
    src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    _write(
        src,
        [
            json.dumps({"response": "so \\boxed{34}", "gold": "34", "id": 1}),
            json.dumps({"response": "so \\boxed{34.}", "gold": 34, "id": 2}),
            "{not json",
            json.dumps({"response": "so \\boxed{1}"}),
            "",
            json.dumps({"response": "no box \ud800", "gold": "1", "meta": {"k": [1, 2]}}),
        ],
    )
    assert main(["--mode", "strict", "--input", str(src), "--output", str(dst)]) == 1
    out = [json.loads(line) for line in dst.read_text().splitlines()]
    assert [(r["correct"], r["reward"], r["pred"], r["status"]) for r in out] == [
        (True, 1.0, "34", "ok"),
        (False, -1.0, "34.", "ok"),
        (False, -1.0, None, "no_answer"),
    ]
    assert out[0]["id"] == 1 and out[2]["meta"] == {"k": [1, 2]}
    err = capsys.readouterr().err
    assert "line 3: not valid JSON" in err and "line 4: missing field 'gold'" in err
    assert "scored=3 malformed=2 correct=1" in err and "no_answer=1" in err


@pytest.mark.slow
def test_robust_cli_uses_the_pool(tmp_path, capsys):
    src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    _write(
        src,
        [
            json.dumps({"response": "so \\boxed{\\frac{1}{2}}", "gold": "0.5"}),
            json.dumps({"response": "so \\boxed{x^2-1}", "gold": "(x-1)(x+1)"}),
            json.dumps({"response": "so \\boxed{10^{10^{10}}}", "gold": "1"}),
        ],
    )
    assert (
        main(["--mode", "robust", "--input", str(src), "--output", str(dst), "--workers", "1", "--timeout", "5"]) == 0
    )
    out = [json.loads(line) for line in dst.read_text().splitlines()]
    assert [(r["correct"], r["status"]) for r in out] == [(True, "ok"), (True, "ok"), (False, "too_long")]
    assert "accuracy=0.6667" in capsys.readouterr().err


def test_cli_reports_a_missing_input(tmp_path, capsys):
    assert main(["--input", str(tmp_path / "nope.jsonl"), "--output", str(tmp_path / "o.jsonl")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_cli_refuses_an_output_that_is_its_input(tmp_path, capsys):
    src = tmp_path / "in.jsonl"
    _write(src, [json.dumps({"response": "so \\boxed{34}", "gold": "34"})])
    before = src.read_bytes()
    assert main(["--input", str(src), "--output", str(src)]) == 2
    assert src.read_bytes() == before
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"--output {src} is (or overlaps) the input {src}" in err


def test_cli_replaces_an_existing_output_only_with_overwrite(tmp_path, capsys):
    src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    _write(src, [json.dumps({"response": "so \\boxed{34}", "gold": "34"})])
    dst.write_text("the user's own results\n")
    assert main(["--input", str(src), "--output", str(dst)]) == 2
    assert dst.read_text() == "the user's own results\n"
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    assert main(["--input", str(src), "--output", str(dst), "--overwrite"]) == 0
    assert [json.loads(line)["correct"] for line in dst.read_text().splitlines()] == [True]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "out.jsonl"]  # no temporary left
