"""Preemption and resume of the real CLI: a run killed (SIGKILL, even mid-save) and resumed, or stopped
by SIGTERM, is bitwise the uninterrupted run; --resume PATH and --no-resume; a diverging run stops.

Every run compared bitwise runs in the same kind of process (``python -m justrl_jax.train`` on one
CPU device): XLA's CPU code is deterministic for one configuration, not across configurations.
"""

import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx
from tiny_run import read_jsonl
from xla_flags import cpu_flags

from justrl_jax.checkpoint import complete_steps, read_meta
from justrl_jax.model.source import load_policy
from justrl_jax.rl_loop import RLRunner
from justrl_jax.run_config import load_run_config

# RL runs of the real CLI, killed and resumed. The module's runs (a fixture, timed with the first test) take
# minutes on a loaded machine: the per-test limit (a hang guard) is as generous as the subprocess timeout.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]

STEPS = 6
TIMEOUT_S = 1800  # a guard against a hang only (each wait is for a state): a loaded machine can take many minutes


def _env(cache_dir: Path) -> dict:
    # One CPU device, like every run compared; the compilation cache lets the runs after the first
    # skip most of XLA's compile time (a cached executable is the very code the first run compiled).
    # The test run's own cache (conftest) when there is one: the other one-device CLI runs of the suite
    # (test_gcs_run, test_run_dir) compile the same RL programs.
    return {
        **os.environ,
        "XLA_FLAGS": cpu_flags(1),
        "JAX_PLATFORMS": "cpu",
        "HF_HUB_OFFLINE": "1",
        "JAX_COMPILATION_CACHE_DIR": os.environ.get("JAX_COMPILATION_CACHE_DIR", str(cache_dir)),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
    }


def _train_cmd(run_dir, *sets):
    cmd = [
        sys.executable,
        "-m",
        "justrl_jax.train",
        "--run-dir",
        str(run_dir),
        "--mesh",
        "1x1",
        "--set",
        f"loop.total_steps={STEPS}",
        "--set",
        "demo.sft_steps=30",
    ]
    for s in sets:
        cmd += ["--set", s]
    return cmd


def _with_assets(reference, run_dir):
    """A new run directory with the reference's demo model and data (no warm start to redo)."""
    shutil.copytree(reference / "demo_assets", run_dir / "demo_assets")
    return run_dir


def _raw(step_dir, item):
    with ocp.StandardCheckpointer() as handler:
        return jax.tree.map(np.asarray, handler.restore(step_dir.absolute() / item))


def _flat(tree) -> dict:
    """``{"a/b/0/c": array}``, the same for a train state in memory and Orbax's raw read of it (which
    stores NamedTuples and Variables as dicts and tuples as lists)."""
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        keys = [str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path]
        out["/".join(k for k in keys if k != "value")] = np.asarray(leaf)
    return out


def _assert_equal_trees(expected: dict, actual: dict, what: str) -> None:
    assert expected.keys() == actual.keys(), (what, sorted(expected.keys() ^ actual.keys())[:5])
    differ = [k for k in expected if not np.array_equal(expected[k], actual[k])]
    assert not differ, f"{what} differ at {differ[:5]}"


def _assert_same_checkpoint(a_run, b_run, step):
    for item in ("params", "opt_state"):
        _assert_equal_trees(
            _flat(_raw(a_run / "checkpoints" / str(step), item)),
            _flat(_raw(b_run / "checkpoints" / str(step), item)),
            f"step {step}: {item}",
        )
    meta_a, meta_b = (read_meta(r / "checkpoints" / str(step)) for r in (a_run, b_run))
    assert meta_a["data"] == meta_b["data"]  # the data order continues exactly where it stopped
    assert meta_a["rng"] == meta_b["rng"] and meta_a["train"] == meta_b["train"]


def _comparable(records):
    return [{k: v for k, v in r.items() if not k.startswith(("time/", "perf/"))} for r in records]


@dataclasses.dataclass
class Outcome:
    run_dir: Path
    returncode: int
    stderr: str
    partial_at_kill: list[str] = dataclasses.field(default_factory=list)  # SIGKILL: tmp dirs it left
    newest_at_kill: int | None = None
    resumed: subprocess.CompletedProcess | None = None


def _reference(run_dir, env) -> Outcome:
    """The uninterrupted run, a checkpoint after every step (all kept): what every other run must equal."""
    done = subprocess.run(
        _train_cmd(run_dir, "checkpoint.every_steps=1", f"checkpoint.keep={STEPS}"),
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    return Outcome(run_dir, done.returncode, done.stderr)


def _killed_during_a_save(run_dir, env) -> Outcome:
    cmd = _train_cmd(run_dir, "checkpoint.every_steps=2", "checkpoint.keep=2")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpts = run_dir / "checkpoints"
    deadline = time.time() + TIMEOUT_S
    # Kill at the first sight of the save of step 4: Orbax writes it under '4.orbax-checkpoint-tmp'
    # for a few hundred ms before renaming it, so the kill almost always lands mid-save.
    while not (ckpts.is_dir() and any(p.name.startswith("4") for p in ckpts.iterdir())):
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            return Outcome(run_dir, proc.wait(), "the run ended or hung before saving step 4")
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    out = Outcome(run_dir, proc.wait(), "")
    out.partial_at_kill = sorted(p.name for p in ckpts.iterdir() if ".orbax-checkpoint-tmp" in p.name)
    out.newest_at_kill = complete_steps(run_dir)[-1]
    # The same command again: it must find the newest complete checkpoint and finish the run.
    out.resumed = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    return out


def _preempted(run_dir, env, sig=signal.SIGTERM) -> Outcome:
    cmd = _train_cmd(run_dir, "loop.total_steps=1000", "checkpoint.every_steps=1000")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    metrics = run_dir / "metrics.jsonl"
    deadline = time.time() + TIMEOUT_S
    while not (metrics.exists() and metrics.read_text().count("\n") >= 1):
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            return Outcome(run_dir, proc.wait(), "the run ended or hung before its first step")
        time.sleep(0.01)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=TIMEOUT_S)
    return Outcome(run_dir, proc.returncode, err)


def _interrupted(run_dir, env) -> Outcome:
    """Ctrl-C: the terminal sends SIGINT to the process."""
    return _preempted(run_dir, env, signal.SIGINT)


def _damaged(run_dir, env, reference) -> Outcome:
    """The reference run as it was after step 4, with checkpoint 4's largest params file cut in half,
    then the same command: it must resume from step 3 and redo steps 3..5 exactly."""
    shutil.copytree(reference, run_dir)
    for step in range(5, STEPS + 1):
        shutil.rmtree(run_dir / "checkpoints" / str(step))
    params = run_dir / "checkpoints" / "4" / "params"
    largest = max((p for p in params.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    largest.write_bytes(largest.read_bytes()[: largest.stat().st_size // 2])
    done = subprocess.run(
        _train_cmd(run_dir, "checkpoint.every_steps=1", f"checkpoint.keep={STEPS}"),
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    return Outcome(run_dir, done.returncode, done.stderr)


def _diverging(run_dir, env) -> Outcome:
    done = subprocess.run(
        _train_cmd(
            run_dir,
            "train.optim.lr=1e30",
            "loop.max_nonfinite_steps=2",
            "checkpoint.every_steps=1",
            "checkpoint.keep=2",
            "loop.total_steps=20",
        ),
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    return Outcome(run_dir, done.returncode, done.stderr)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Outcome]:
    """The CLI runs of this module, side by side (each process keeps about one core busy)."""
    root = tmp_path_factory.mktemp("runs")
    env = _env(root / "xla_cache")
    ref = _reference(root / "reference", env)  # first and alone: it fills the compilation cache
    assert ref.returncode == 0, ref.stderr[-3000:]
    assert complete_steps(ref.run_dir) == list(range(1, STEPS + 1))
    scenarios = {
        "killed": _killed_during_a_save,
        "preempted": _preempted,
        "interrupted": _interrupted,
        "diverging": _diverging,
        "damaged": lambda run_dir, env: _damaged(run_dir, env, ref.run_dir),
    }
    # Every scenario starts from the reference's demo assets (its warm-started model and data), as the
    # damaged one does: the same files a fresh warm start writes, without redoing it in four processes.
    for name in ("killed", "preempted", "interrupted", "diverging"):
        _with_assets(ref.run_dir, root / name)
    with ThreadPoolExecutor(len(scenarios)) as pool:
        futures = {name: pool.submit(fn, root / name, env) for name, fn in scenarios.items()}
        return {"reference": ref, **{name: f.result() for name, f in futures.items()}}


@pytest.fixture(scope="module")
def reference(runs) -> Path:
    return runs["reference"].run_dir


def test_sigkill_during_a_save_then_resume_is_bitwise_identical(runs, reference):
    killed = runs["killed"]
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    newest = killed.newest_at_kill
    # Mid-save (the usual case) the tmp directory of step 4 is left and step 2 is the newest complete one.
    assert newest == (2 if killed.partial_at_kill else 4), (killed.partial_at_kill, newest)
    resumed = killed.resumed
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    ckpts = killed.run_dir / "checkpoints"
    assert f"resuming from step {newest} ({ckpts / str(newest)})" in resumed.stderr
    assert not any(".orbax-checkpoint-tmp" in p.name for p in ckpts.iterdir())  # the leftover is gone
    assert complete_steps(killed.run_dir) == [4, STEPS]
    for step in complete_steps(killed.run_dir):
        _assert_same_checkpoint(reference, killed.run_dir, step)
    ours, ref = read_jsonl(killed.run_dir / "metrics.jsonl"), read_jsonl(reference / "metrics.jsonl")
    assert [r["step"] for r in ours] == list(range(STEPS))
    assert _comparable(ours) == _comparable(ref)


def test_sigterm_saves_the_exact_state_and_exits_zero(runs, reference):
    preempted = runs["preempted"]
    assert preempted.returncode == 0, preempted.stderr[-3000:]
    assert "SIGTERM" in preempted.stderr
    saved = complete_steps(preempted.run_dir)
    n_metrics = len(read_jsonl(preempted.run_dir / "metrics.jsonl"))
    assert len(saved) == 1 and saved[0] == n_metrics, (saved, n_metrics)
    assert saved[0] <= STEPS, "the steps ran faster than the signal arrived; nothing to compare with"
    _assert_same_checkpoint(reference, preempted.run_dir, saved[0])


def test_ctrl_c_saves_the_exact_state_and_exits_zero(runs, reference):
    interrupted = runs["interrupted"]
    assert interrupted.returncode == 0, interrupted.stderr[-3000:]
    assert "SIGINT received: saving a checkpoint after this step" in interrupted.stderr
    assert "Traceback" not in interrupted.stderr and "KeyboardInterrupt" not in interrupted.stderr
    saved = complete_steps(interrupted.run_dir)
    n_metrics = len(read_jsonl(interrupted.run_dir / "metrics.jsonl"))
    assert len(saved) == 1 and saved[0] == n_metrics, (saved, n_metrics)
    assert saved[0] <= STEPS, "the steps ran faster than the signal arrived; nothing to compare with"
    _assert_same_checkpoint(reference, interrupted.run_dir, saved[0])


def test_a_second_ctrl_c_exits_at_once_without_saving(tmp_path):
    """The loop's own handlers in a bare process: the first SIGINT only asks to stop, the second ends
    the process then and there (status 130), whatever it was doing."""
    script = (
        "import os, signal, sys, time\n"
        "from justrl_jax.preemption import StopRequest\n"
        "stop = StopRequest().__enter__()\n"
        "os.kill(os.getpid(), signal.SIGINT)\n"
        "print('first', stop.requested, stop.signal_name, flush=True)\n"
        "os.kill(os.getpid(), signal.SIGINT)\n"
        "print('still running', flush=True)\n"
        "sys.exit(0)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 130, done.stderr
    assert done.stdout == "first True SIGINT\n"
    assert "second SIGINT: exiting now without saving" in done.stderr


def test_a_damaged_newest_checkpoint_is_set_aside_and_the_resume_is_bitwise(runs, reference):
    damaged = runs["damaged"]
    run_dir = damaged.run_dir
    assert damaged.returncode == 0, damaged.stderr[-3000:]
    ckpts, aside = run_dir / "checkpoints", run_dir / "checkpoints_damaged"
    assert f"checkpoint 4 ({ckpts / '4'}) does not restore" in damaged.stderr
    assert f"damaged checkpoint 4 moved aside (kept, not deleted): {ckpts / '4'} -> {aside / '4'}" in damaged.stderr
    assert f"resuming from step 3 ({ckpts / '3'})" in damaged.stderr
    assert [p.name for p in aside.iterdir()] == ["4"] and (aside / "4" / "params").is_dir()
    assert complete_steps(run_dir) == list(range(1, STEPS + 1))
    for step in range(1, STEPS + 1):
        _assert_same_checkpoint(reference, run_dir, step)
    ours, ref = read_jsonl(run_dir / "metrics.jsonl"), read_jsonl(reference / "metrics.jsonl")
    assert [r["step"] for r in ours] == list(range(STEPS))
    assert _comparable(ours) == _comparable(ref)


def test_a_diverging_run_stops_and_keeps_a_finite_checkpoint(runs):
    diverging = runs["diverging"]
    run_dir = diverging.run_dir
    assert diverging.returncode != 0
    newest = complete_steps(run_dir)[-1]
    message = diverging.stderr.strip().splitlines()[-1]
    assert message.startswith("justrl_jax.rl_loop.NonFiniteError: 2 consecutive steps"), message
    assert "had only non-finite gradients (up to step 3)" in message
    assert f"the newest checkpoint, {run_dir / 'checkpoints' / str(newest)}, holds the last good state" in message
    records = read_jsonl(run_dir / "metrics.jsonl")
    assert [r["actor/updates"] for r in records[-2:]] == [0, 0] and len(records) < 20
    policy = load_policy(run_dir)
    assert policy.step == newest
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(nnx.state(policy.model, nnx.Param)))
    opt = _flat(_raw(run_dir / "checkpoints" / str(newest), "opt_state"))
    assert all(np.all(np.isfinite(x)) for x in opt.values())


def _cfg(*overrides):
    return load_run_config(None, [f"loop.total_steps={STEPS}", "demo.sft_steps=30", *overrides])


def test_resume_path_onto_another_mesh(tmp_path, reference):
    """--resume another run's step: this run continues from it, on a 2x8 mesh instead of one device."""
    run_dir = _with_assets(reference, tmp_path / "branch")
    source = reference / "checkpoints" / "3"
    runner = RLRunner(_cfg(), run_dir, mesh_spec="2x8", resume=str(source))
    assert runner.start_step == 3
    assert runner.stream.get_state() == read_meta(source)["data"]
    _assert_equal_trees(_flat(_raw(source, "params")), _flat(runner.state.params), "params")
    other = _raw(source, "opt_state")
    _assert_equal_trees(_flat(other["opt_state"]), _flat(runner.state.opt_state), "optimizer state")
    assert int(runner.state.step) == int(other["step"]) > 0
    assert dict(next(iter(jax.tree.leaves(runner.state.params))).sharding.mesh.shape) == {"fsdp": 2, "tensor": 8}
    runner.close()


def test_no_resume_starts_the_run_directory_over(tmp_path, reference):
    run_dir = tmp_path / "again"
    shutil.copytree(reference, run_dir)
    runner = RLRunner(_cfg(), run_dir, mesh_spec="1x1", devices=jax.devices()[:1], resume=False)
    assert runner.start_step == 0
    assert complete_steps(run_dir) == []  # else a later save of step 1 would meet the old run's step 1
    assert read_jsonl(run_dir / "metrics.jsonl") == []
    assert not (run_dir / "hf_assets").exists()  # copied afresh from this run's model at its first save
    runner.close()
