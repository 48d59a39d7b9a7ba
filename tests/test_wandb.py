"""Weights & Biases logging (``loop.wandb``), offline: what the offline run directories hold after a run
and its resume, and the config errors given before anything compiles."""

import json
import struct
import sys

import jax
import pytest
from tiny_run import read_jsonl

from justrl_jax import train
from justrl_jax.rl_loop import RLRunner
from justrl_jax.run_config import load_run_config
from justrl_jax.wandb_run import ID_FILE, WandbConfig, WandbRun


def test_wandb_config_validates_itself():
    assert not WandbConfig().enabled
    assert WandbConfig(project="justrl", tags=("grpo",)).enabled
    with pytest.raises(ValueError, match=r"loop.wandb.project 'a/b' holds '/'"):
        WandbConfig(project="a/b")
    with pytest.raises(ValueError, match="need loop.wandb.project"):
        WandbConfig(tags=("x",))
    with pytest.raises(ValueError, match="loop.wandb.tags must be a list of non-empty strings"):
        WandbConfig(project="p", tags=("",))
    with pytest.raises(ValueError, match="unknown config key 'loop.wandb.team'"):
        load_run_config(None, ["loop.wandb.team=x"])


def test_wandb_asked_for_but_not_installed_is_one_line_before_anything_compiles(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "wandb", None)  # what an install without the [wandb] extra looks like
    assert train.main(["--set", "loop.wandb.project=justrl"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and "loop.wandb.project is set but wandb is not installed" in err[-1]
    assert "pip install -e '.[wandb]'" in err[-1]


# --- reading an offline run: W&B's transaction log (LevelDB log format, one protobuf Record per entry) ---

_BLOCK, _HEADER = 32768, 7


def _records(path) -> list:
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B", path
    out, pos, pending = [], _HEADER, b""
    while pos + 7 <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < 7:  # a block's tail too short for a header is padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0 and length == 0:
            break
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST: a whole record
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            out.append(record)
            pending = b""
    return out


def _history(records) -> dict[int, dict]:
    steps = {}
    for r in records:
        if r.WhichOneof("record_type") == "history":
            items = {(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in r.history.item}
            steps.setdefault(int(items.pop("_step")), {}).update(items)
    return steps


def _config(records) -> dict:
    """The run's config: sent with the run record at init (and in config records after it)."""
    out = {}
    for r in records:
        kind = r.WhichOneof("record_type")
        updates = r.run.config.update if kind == "run" else r.config.update if kind == "config" else []
        out.update({(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in updates})
    return out


@pytest.mark.slow  # two short demo runs (3 steps in all)
def test_offline_run_holds_every_step_and_a_resume_continues_the_same_run(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run_dir = tmp_path / "run"
    wandb_keys = ["loop.wandb.project=justrl-test", "loop.wandb.name=demo", "loop.wandb.tags=[grpo,demo]"]
    for total in (2, 3):  # the second run resumes from the checkpoint after step 2 and runs step 2
        cfg = load_run_config(None, [f"loop.total_steps={total}", "demo.sft_steps=0", *wandb_keys])
        RLRunner(cfg, run_dir, mesh_spec="1x1", devices=jax.devices()[:1]).run()

    run_id = (run_dir / ID_FILE).read_text().strip()
    offline = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline) == 2 and all(d.name.endswith(f"-{run_id}") for d in offline)  # one W&B run, appended to
    first, second = (_records(d / f"run-{run_id}.wandb") for d in offline)
    metrics = {r["step"]: r for r in read_jsonl(run_dir / "metrics.jsonl")}
    history = {**_history(first), **_history(second)}
    assert sorted(_history(first)) == [0, 1] and sorted(_history(second)) == [2]
    assert sorted(history) == sorted(metrics) == [0, 1, 2]
    for step, record in metrics.items():  # every metric of every step, with the value metrics.jsonl holds
        logged = history[step]
        for key, value in record.items():
            if key != "step":
                assert logged[key] == pytest.approx(value), (step, key)
    config = _config(first)
    assert config["loop"]["total_steps"] == 2 and config["loop"]["wandb"]["tags"] == ["grpo", "demo"]
    assert config["rollout"]["samples_per_prompt"] == 16 and config["demo"]["sft_steps"] == 0  # resolved, every section
    for d in offline:  # the final figure of each run, as an image of the run
        assert list((d / "files" / "media" / "images").glob("training_dynamics_*.png")), d

    # A start at step 0 (--no-resume, or no checkpoint yet) rewrites the history: a new W&B run.
    fresh = WandbRun(cfg.loop.wandb, run_dir, {}, resumed=False)
    fresh_id = fresh.id
    fresh.close()
    assert fresh_id != run_id and (run_dir / ID_FILE).read_text().strip() == fresh_id
