"""Checkpoints survive preemption: exact resume after SIGKILL, partial saves ignored, SIGTERM saves and
exits 0, any mesh restores, non-finite parameters are never saved, and convert gives transformers' logits."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx
from hf_reference import hf_logits
from tiny_run import read_jsonl

from justrl_jax.checkpoint import CheckpointConfig, Checkpointer
from justrl_jax.convert import convert
from justrl_jax.model_source import load_policy
from justrl_jax.qwen2 import positions_from_mask
from justrl_jax.rl_loop import NonFiniteError, RLRunner
from justrl_jax.run_config import load_run_config
from justrl_jax.sharding import make_mesh

STEPS, EVERY = 6, 3


def _cfg(*extra):
    return load_run_config(None, [f"loop.total_steps={STEPS}", f"checkpoint.every_steps={EVERY}", *extra])


def _runner(run_dir, *extra, mesh="1x1", devices=None, resume=True):
    devices = jax.devices()[:1] if devices is None and mesh == "1x1" else devices
    return RLRunner(_cfg(*extra), run_dir, mesh_spec=mesh, devices=devices, resume=resume)


def _train_cmd(run_dir, *extra):
    return [sys.executable, "-m", "justrl_jax.train", "--run-dir", str(run_dir), "--mesh", "1x1",
            "--set", f"loop.total_steps={STEPS}", "--set", f"checkpoint.every_steps={EVERY}", *extra]


def _env():
    return {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1", "JAX_PLATFORMS": "cpu"}


def _comparable(records):
    return [{k: v for k, v in r.items() if not k.startswith(("time/", "perf/"))} for r in records]


def _restore_raw(step_dir, item):
    import orbax.checkpoint as ocp

    with ocp.StandardCheckpointer() as handler:
        return jax.tree.map(np.asarray, handler.restore(step_dir.absolute() / item))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run, shared by the tests below. Every run compared bitwise runs in the same kind
    of process (1 CPU device): XLA's CPU code is deterministic for one configuration, not across them."""
    run_dir = tmp_path_factory.mktemp("reference")
    subprocess.run(_train_cmd(run_dir), env=_env(), check=True, capture_output=True)
    return run_dir


def test_sigkill_then_resume_is_bitwise_identical(tmp_path, reference):
    ref_dir = reference
    run_dir = tmp_path / "killed"
    proc = subprocess.Popen(_train_cmd(run_dir), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = run_dir / "checkpoints" / str(EVERY) / "meta" / "metadata"
    deadline = time.time() + 300
    while not first.exists():
        assert proc.poll() is None, "the run ended before its first checkpoint"
        assert time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    resumed = subprocess.run(_train_cmd(run_dir), env=_env(), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from step" in resumed.stderr
    for item in ("params", "opt_state"):
        a = _restore_raw(ref_dir / "checkpoints" / str(STEPS), item)
        b = _restore_raw(run_dir / "checkpoints" / str(STEPS), item)
        same = jax.tree.map(np.array_equal, a, b)
        assert all(jax.tree.leaves(same)), f"{item} differ after resume"
    assert _comparable(read_jsonl(run_dir / "metrics.jsonl")) == _comparable(read_jsonl(ref_dir / "metrics.jsonl"))
    meta = [json.loads((d / "checkpoints" / str(STEPS) / "meta" / "metadata").read_text()) for d in (ref_dir, run_dir)]
    assert meta[0]["data"] == meta[1]["data"]  # the data order continues where it stopped
    assert meta[0]["train"] == meta[1]["train"]


def test_a_partial_save_is_invisible(tmp_path, reference):
    ref_dir = reference
    run_dir = tmp_path / "run"
    subprocess.run(["cp", "-r", str(ref_dir), str(run_dir)], check=True)
    # What a kill during an Orbax save leaves behind: a temporary directory, never renamed.
    partial = run_dir / "checkpoints" / f"{STEPS + 3}.orbax-checkpoint-tmp-1700000000"
    (partial / "params").mkdir(parents=True)
    (partial / "params" / "junk").write_bytes(b"\0" * 100)
    runner = _runner(run_dir, f"loop.total_steps={STEPS + 3}")
    assert runner.start_step == STEPS
    assert load_policy(run_dir).step == STEPS


def test_sigterm_saves_and_exits_zero(tmp_path):
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(_train_cmd(run_dir, "--set", "loop.total_steps=100000", "--set",
                                       "checkpoint.every_steps=100000"), env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    metrics = run_dir / "metrics.jsonl"
    deadline = time.time() + 300
    while not (metrics.exists() and metrics.read_text().count("\n") >= 2):
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    sent = time.time()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert time.time() - sent < 60
    steps = [int(p.name) for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit()]
    assert steps and max(steps) == len(read_jsonl(metrics))
    assert "SIGTERM" in err


def test_restore_onto_other_meshes(tmp_path):
    run_dir = tmp_path / "mesh"
    RLRunner(_cfg("loop.total_steps=2", "checkpoint.every_steps=2"), run_dir, mesh_spec="4x4").run()

    def flat(mesh):
        policy = load_policy(run_dir, mesh)
        return {k: np.asarray(v.get_value()) for k, v in nnx.to_flat_state(nnx.state(policy.model, nnx.Param))}

    saved = flat(None)
    for mesh in (make_mesh("2x8"), make_mesh("16x1")):
        other = flat(mesh)
        assert all(np.array_equal(saved[k], other[k]) for k in saved)


def test_non_finite_parameters_are_never_saved(tmp_path):
    ckpt = Checkpointer(tmp_path / "c", CheckpointConfig(async_save=False))
    good = {"w": jnp.ones(3)}
    assert ckpt.save(1, good, {"s": jnp.zeros(())}, {"x": 1})
    assert not ckpt.save(2, {"w": jnp.array([1.0, jnp.nan, 0.0])}, {"s": jnp.zeros(())}, {"x": 2})
    ckpt.wait()
    assert ckpt.all_steps() == [1]
    ckpt.close()


def test_diverging_run_stops_with_a_clear_error(tmp_path):
    runner = _runner(tmp_path / "run", "train.optim.lr=1e30", "loop.max_nonfinite_steps=2", "checkpoint.every_steps=1",
                     "loop.total_steps=20")
    with pytest.raises(NonFiniteError, match="consecutive steps had only non-finite gradients"):
        runner.run()
    policy = load_policy(tmp_path / "run")
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(nnx.state(policy.model, nnx.Param)))


@pytest.mark.parametrize("dtype, tol", [("float32", 1e-5), ("bfloat16", 0.05)])
def test_convert_gives_transformers_the_same_logits(tmp_path, reference, dtype, tol):
    ref_dir = reference
    out = convert(ref_dir, tmp_path / "hf", dtype=dtype)
    for name in ("config.json", "generation_config.json", "tokenizer.json", "model.safetensors"):
        assert (out / name).exists(), name
    hf = transformers.Qwen2ForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    assert tokenizer.eos_token_id == json.loads((out / "generation_config.json").read_text())["eos_token_id"]
    policy = load_policy(ref_dir)
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 400, (2, 12))
    mask = np.ones((2, 12), bool)
    mask[0, :4] = False
    hidden, _ = policy.model(jnp.asarray(tokens), positions_from_mask(jnp.asarray(mask)), jnp.asarray(mask))
    ours = np.asarray(policy.model.logits(hidden))
    np.testing.assert_allclose(hf_logits(hf, tokens, mask)[mask], ours[mask], atol=tol, rtol=tol)
