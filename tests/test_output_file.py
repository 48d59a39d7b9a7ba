"""Outputs never clobbered: overlap with inputs, existing outputs, and atomic replacement on failure."""

from __future__ import annotations

import pytest

from justrl_jax.output_file import OutputError, atomic_dir, atomic_file, check_output


def test_check_output_refuses_inputs_existing_outputs_and_wrong_kinds(tmp_path):
    data = tmp_path / "data.jsonl"
    data.write_text("x\n")
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    with pytest.raises(OutputError, match="is \\(or overlaps\\) the input"):
        check_output(data, [data], overwrite=True)
    (tmp_path / "hard_link.jsonl").hardlink_to(data)
    with pytest.raises(OutputError, match="overlaps"):  # the same file under another name
        check_output(tmp_path / "hard_link.jsonl", [data], overwrite=True)
    with pytest.raises(OutputError, match="overlaps"):  # an output inside an input directory
        check_output(run / "checkpoints" / "hf", [run / "checkpoints"], overwrite=True, directory=True)
    with pytest.raises(OutputError, match="overlaps"):  # an output directory holding an input
        check_output(tmp_path, [run], overwrite=True, directory=True)
    with pytest.raises(OutputError, match="already exists; pass --overwrite"):
        check_output(data, [], overwrite=False)
    with pytest.raises(OutputError, match="is a directory; name a file"):
        check_output(run, [], overwrite=True)
    with pytest.raises(OutputError, match="is a file; name a directory"):
        check_output(data, [], overwrite=True, directory=True)
    assert check_output(data, [], overwrite=True) == data
    (tmp_path / "empty").mkdir()
    assert check_output(tmp_path / "empty", [], overwrite=False, directory=True) == tmp_path / "empty"


def test_atomic_file_keeps_the_old_file_when_writing_fails(tmp_path):
    out = tmp_path / "out.jsonl"
    out.write_text("old\n")
    with pytest.raises(RuntimeError), atomic_file(out) as f:
        f.write("half of the new\n")
        raise RuntimeError("killed mid-write")
    assert out.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["out.jsonl"]
    with atomic_file(out) as f:
        f.write("new\n")
    assert out.read_text() == "new\n" and [p.name for p in tmp_path.iterdir()] == ["out.jsonl"]


def test_atomic_dir_replaces_the_whole_directory_or_nothing(tmp_path):
    out = tmp_path / "export"
    out.mkdir()
    (out / "model-00001-of-00002.safetensors").write_text("stale shard")
    (out / "model.safetensors.index.json").write_text("stale index")
    with pytest.raises(RuntimeError), atomic_dir(out) as tmp:
        (tmp / "model.safetensors").write_text("new")
        raise RuntimeError("failed mid-export")
    assert sorted(p.name for p in out.iterdir()) == ["model-00001-of-00002.safetensors", "model.safetensors.index.json"]
    with atomic_dir(out) as tmp:
        (tmp / "model.safetensors").write_text("new")
    assert [p.name for p in out.iterdir()] == ["model.safetensors"]
    assert [p.name for p in tmp_path.iterdir()] == ["export"]
