"""``python -m justrl_jax.plot``: one-line errors for a missing or empty run, and no clobbered figure."""

from __future__ import annotations

import json

from justrl_jax.plot import main


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_plot_names_a_missing_or_empty_run(tmp_path, capsys):
    assert main([str(tmp_path / "nope")]) == 2
    assert f"run directory {tmp_path / 'nope'} does not exist" in _one_line(capsys)
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty")]) == 2
    assert "metrics.jsonl not found" in _one_line(capsys)
    (tmp_path / "empty" / "metrics.jsonl").write_text("")
    assert main([str(tmp_path / "empty")]) == 2
    assert "holds no steps yet" in _one_line(capsys)
    assert sorted(p.name for p in (tmp_path / "empty").iterdir()) == ["metrics.jsonl"]


def test_plot_replaces_an_existing_figure_only_with_overwrite(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    lines = [{"step": s, "reward/mean": 0.1 * s, "actor/entropy": 1.0, "response/length_mean": 10.0} for s in range(3)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    png = run / "training_dynamics.png"
    png.write_bytes(b"the user's figure")
    assert main([str(run)]) == 2
    assert "already exists; pass --overwrite" in _one_line(capsys)
    assert png.read_bytes() == b"the user's figure"
    assert main([str(run), "--out", str(run / "metrics.jsonl"), "--overwrite"]) == 2
    assert "overlaps) the input" in _one_line(capsys)
    assert main([str(run), "--overwrite"]) == 0
    assert png.read_bytes().startswith(b"\x89PNG")
    assert sorted(p.name for p in run.iterdir()) == ["metrics.jsonl", "training_dynamics.png"]
