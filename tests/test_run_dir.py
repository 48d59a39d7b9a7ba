"""A run directory is owned: one run at a time (the holder named), never a foreign directory, and a
start that fails on a user's mistake says so in one line (exit 2) and leaves no directory behind."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from tiny_run import make_tiny_model_dir, read_jsonl, write_dapo_parquet
from xla_flags import cpu_flags

from justrl_jax.checkpoint import complete_steps
from justrl_jax.run_dir import LOCK_FILE, RunDirError, RunDirLock

TIMEOUT_S = 1800  # a guard against a hang only (each wait is for a state): a loaded machine can take many minutes


def _env() -> dict:
    return {**os.environ, "XLA_FLAGS": cpu_flags(1), "JAX_PLATFORMS": "cpu"}


def _train(run_dir, *sets, config=None) -> list[str]:
    cmd = [sys.executable, "-m", "justrl_jax.train", "--run-dir", str(run_dir), "--mesh", "1x1"]
    if config is not None:
        cmd += ["--config", str(config)]
    for s in sets:
        cmd += ["--set", s]
    return cmd


def _snapshot(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def _wait_for(condition, proc, what: str) -> None:
    deadline = time.time() + TIMEOUT_S
    while not condition():
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            pytest.fail(f"the process ended or hung before {what} (exit {proc.wait()})")
        time.sleep(0.01)


def test_the_lock_names_its_holder_and_a_sigkill_releases_it(tmp_path):
    run = tmp_path / "run"
    with subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from justrl_jax.run_dir import RunDirLock; "
            f"lock = RunDirLock({str(run)!r}).acquire(); print('held', flush=True); sys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as holder:  # leaving it waits for the process and closes its pipes
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(RunDirError, match=f"is in use by another run \\(host .+, pid {holder.pid}, started 20"):
            RunDirLock(run).acquire()
        holder.kill()  # SIGKILL: no cleanup runs, the OS drops the lock with the process
        holder.wait()
    with RunDirLock(run) as lock:
        record = json.loads((run / LOCK_FILE).read_text())
        assert record["pid"] == os.getpid() and lock.created is None


def test_foreign_directories_are_refused_unless_adopted(tmp_path):
    foreign = tmp_path / "mine"
    (foreign / "hf_assets").mkdir(parents=True)
    (foreign / "config.yaml").write_text("my: own config\n")
    (foreign / "metrics.jsonl").write_text('{"step": 0}\nnot json, but mine\n')
    (foreign / "hf_assets" / "tokenizer.json").write_text("{}")
    before = _snapshot(foreign)
    done = subprocess.run(_train(foreign), env=_env(), capture_output=True, text=True, timeout=TIMEOUT_S)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        f"error: run directory {foreign} is not empty (config.yaml, hf_assets, metrics.jsonl...) and is not a "
        f"justrl_jax run directory; choose a new or empty --run-dir, or pass --adopt-run-dir to run there anyway"
    )
    assert "Traceback" not in done.stderr
    assert _snapshot(foreign) == before and sorted(p.name for p in foreign.iterdir()) == sorted(
        ["config.yaml", "hf_assets", "metrics.jsonl"]
    )
    with RunDirLock(foreign, adopt=True):  # the user said so explicitly
        assert (foreign / LOCK_FILE).is_file()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_a_read_only_run_directory_is_refused_before_the_model_loads(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    run.chmod(0o555)
    try:
        with pytest.raises(RunDirError, match="is not writable"):
            RunDirLock(run).acquire()
    finally:
        run.chmod(0o755)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("inputs")
    model = make_tiny_model_dir(root / "model")
    return model, write_dapo_parquet(root / "data.parquet")


def test_user_errors_at_start_are_one_line_and_leave_no_run_directory(tmp_path, inputs):
    model, data = inputs
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "garbage.parquet").write_bytes(b"PAR1 this is not parquet")
    for name, damage in (
        ("corrupt_config", lambda d: (d / "config.json").write_text('{"hidden_size": 3')),
        ("truncated_weights", lambda d: os.truncate(d / "model.safetensors", 5000)),
        ("empty_weights", lambda d: os.truncate(d / "model.safetensors", 0)),
    ):
        shutil.copytree(model, bad / name)
        damage(bad / name)
    fresh = ["demo.enabled=false", f"model.path={model}", f"data.path={data}"]
    cases = {
        "config_is_a_directory": ([], bad, f"config file {bad} is a directory"),
        "data_is_a_directory": ([*fresh, f"data.path={bad}"], None, f"data path {bad} is a directory"),
        "garbage_parquet": (
            [*fresh, f"data.path={bad / 'garbage.parquet'}"],
            None,
            f"{bad / 'garbage.parquet'} is not a readable parquet file",
        ),
        "corrupt_config_json": (
            [*fresh, f"model.path={bad / 'corrupt_config'}"],
            None,
            f"{bad / 'corrupt_config' / 'config.json'} is not valid JSON",
        ),
        "truncated_safetensors": (
            [*fresh, f"model.path={bad / 'truncated_weights'}"],
            None,
            f"{bad / 'truncated_weights' / 'model.safetensors'} is truncated or not a safetensors file",
        ),
        "empty_safetensors": (
            [*fresh, f"model.path={bad / 'empty_weights'}"],
            None,
            f"{bad / 'empty_weights' / 'model.safetensors'} is truncated or not a safetensors file (0 bytes)",
        ),
        "model_dir_without_config": (
            [*fresh, f"model.path={bad}"],
            None,
            f"{bad / 'config.json'} not found",
        ),
    }
    (tmp_path / "empty_existing").mkdir()

    def run(name):
        sets, config, _ = cases[name]
        run_dir = tmp_path / ("empty_existing" if name == "garbage_parquet" else f"runs/{name}")
        return subprocess.run(
            _train(run_dir, *sets, config=config), env=_env(), capture_output=True, text=True, timeout=TIMEOUT_S
        )

    with ThreadPoolExecutor(2) as pool:
        results = dict(zip(cases, pool.map(run, cases), strict=True))
    for name, done in results.items():
        message = cases[name][2]
        assert done.returncode == 2, (name, done.stderr[-2000:])
        assert "Traceback" not in done.stderr, (name, done.stderr[-2000:])
        last = done.stderr.strip().splitlines()[-1]
        assert last.startswith("error: ") and message in last, (name, last)
    assert not (tmp_path / "runs").exists()  # no run directory was left behind
    assert list((tmp_path / "empty_existing").iterdir()) == []  # emptied again, not removed


def test_two_trains_on_one_directory(tmp_path, inputs):
    """The second refuses at once naming the first; the first runs on and stops cleanly; every step
    is in metrics.jsonl exactly once."""
    model, data = inputs
    run_dir = tmp_path / "run"
    cmd = _train(
        run_dir,
        "demo.enabled=false",
        f"model.path={model}",
        f"data.path={data}",
        "rollout.prompts_per_step=2",
        "rollout.samples_per_prompt=2",
        "rollout.max_new_tokens=8",
        "train.mini_batch_size=4",
        "train.micro_batch_size=4",
        "data.max_prompt_tokens=512",
        "loop.total_steps=1000",
        "checkpoint.every_steps=1000",
    )
    first = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lock = run_dir / LOCK_FILE

    def first_holds_the_lock():
        try:
            return json.loads(lock.read_text())["pid"] == first.pid
        except (OSError, ValueError, KeyError):
            return False

    _wait_for(first_holds_the_lock, first, "taking the lock")
    second = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=TIMEOUT_S)
    assert second.returncode == 2, second.stderr[-2000:]
    last = second.stderr.strip().splitlines()[-1]
    assert f"error: run directory {run_dir} is in use by another run (host " in last, last
    assert f"pid {first.pid}, started " in last, last
    metrics = run_dir / "metrics.jsonl"
    _wait_for(lambda: metrics.exists() and metrics.read_text().count("\n") >= 2, first, "two steps")
    first.send_signal(signal.SIGTERM)
    _, err = first.communicate(timeout=TIMEOUT_S)
    assert first.returncode == 0, err[-3000:]
    steps = [r["step"] for r in read_jsonl(metrics)]
    assert steps == list(range(len(steps))) and len(steps) >= 2
    assert complete_steps(run_dir) == [len(steps)]
