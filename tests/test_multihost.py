"""Multi-host runs on loopback: 2 processes x 2 CPU devices form a 2x2 mesh (data and tensor axes both
split, the data axis across the processes), as a TPU slice would.

Each test launches real `python -m justrl_jax.train` processes with jax.distributed on 127.0.0.1.
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from flax import nnx
from xla_flags import cpu_flags

from justrl_jax.model.source import load_policy

pytestmark = pytest.mark.slow  # two processes of the real CLI

STEPS = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(devices: int) -> dict:
    env = dict(os.environ)
    env["XLA_FLAGS"] = cpu_flags(devices)
    env["JAX_PLATFORMS"] = "cpu"
    env["HF_HUB_OFFLINE"] = "1"
    return env


def _train_cmd(run_dir, *extra):
    return [
        sys.executable,
        "-m",
        "justrl_jax.train",
        "--run-dir",
        str(run_dir),
        "--mesh",
        "2x2",  # both axes split, across the two processes: the 4x4 paths at a quarter of the devices
        "--set",
        f"loop.total_steps={STEPS}",
        "--set",
        f"checkpoint.every_steps={STEPS}",
        *extra,
    ]


def _launch_pair(run_dir, logs, *extra):
    """Two processes of one run; each writes its output to a file of ``logs`` (a pipe nobody reads while the
    test waits for a state would block a process once its output passes the pipe's buffer)."""
    port = _free_port()
    procs = []
    for i, log in enumerate(logs):
        with open(log, "w") as out:  # the child holds its own copy of the descriptor
            procs.append(
                subprocess.Popen(
                    _train_cmd(
                        run_dir,
                        *("--coordinator", f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", str(i)),
                        *extra,
                    ),
                    env=_env(2),
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            )
    return procs


def _params(run_dir):
    policy = load_policy(run_dir)
    return {
        "/".join(map(str, k)): np.asarray(v.get_value())
        for k, v in nnx.to_flat_state(nnx.state(policy.model, nnx.Param))
    }


def test_two_processes_match_one_process(tmp_path):
    multi, single = tmp_path / "multi", tmp_path / "single"
    logs = [tmp_path / f"process{i}.log" for i in range(2)]
    procs = _launch_pair(multi, logs)
    for p in procs:
        p.wait(timeout=600)
    outs = [log.read_text() for log in logs]
    # The reference runs after the pair: on a 2-core machine a third busy process can delay one of the
    # pair past gloo's 30 s rendezvous deadline. It starts from the very model the pair started from:
    # the demo's warm start is itself a (device-count dependent) XLA computation, and two builds of it
    # can differ in the last bits, which 2 Adam steps then amplify past any meaningful tolerance.
    shutil.copytree(multi / "demo_assets", single / "demo_assets")
    ref = subprocess.run(_train_cmd(single), env=_env(4), capture_output=True, text=True, timeout=600)
    assert ref.returncode == 0, ref.stdout + ref.stderr
    for p, out in zip(procs, outs, strict=True):
        assert p.returncode == 0, out
    assert f"step {STEPS}/{STEPS}" in outs[0] and f"step {STEPS}/{STEPS}" not in outs[1]  # only process 0 reports
    a, b, init = _params(multi), _params(single), _params_initial(multi)
    assert a.keys() == b.keys() == init.keys()
    # Same up to the order of floating-point reductions across processes, which Adam's normalised
    # update can amplify for near-zero gradients: far below how far the 2 steps moved the parameters.
    moved = max(float(np.abs(b[k] - init[k]).max()) for k in a)
    differ = max(float(np.abs(a[k] - b[k]).max()) for k in a)
    assert moved > 1e-4, moved
    assert differ < 0.05 * moved, (differ, moved)
    for key in a:
        np.testing.assert_allclose(a[key], b[key], rtol=1e-4, atol=5e-5, err_msg=key)


def _params_initial(run_dir):
    from justrl_jax.model.hf_io import load_hf_model

    model = load_hf_model(str(run_dir / "demo_assets" / "base_model"))
    return {"/".join(map(str, k)): np.asarray(v.get_value()) for k, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def test_a_dead_host_fails_the_other(tmp_path):
    timeout_s = 20
    sets = ["loop.total_steps=100000", f"loop.distributed_timeout_s={timeout_s}", "demo.sft_steps=0"]
    # No warm start: what dies mid-run is the point, not what the model has learnt.
    logs = [tmp_path / f"process{i}.log" for i in range(2)]
    procs = _launch_pair(tmp_path / "run", logs, *[a for s in sets for a in ("--set", s)])
    metrics = tmp_path / "run" / "metrics.jsonl"
    deadline = time.time() + 300
    while not (metrics.exists() and metrics.read_text().count("\n") >= 1):
        assert time.time() < deadline, "the pair never completed a step"
        assert all(p.poll() is None for p in procs), logs[0].read_text() + logs[1].read_text()
        time.sleep(0.5)
    procs[1].send_signal(signal.SIGKILL)
    killed = time.time()
    procs[1].wait()
    try:
        procs[0].wait(timeout=3 * timeout_s + 30)
    finally:
        if procs[0].poll() is None:
            procs[0].kill()
            procs[0].wait()
    elapsed = time.time() - killed
    assert procs[0].returncode not in (0, None), "the surviving process must fail, not succeed or hang: " + (
        logs[0].read_text()
    )
    assert elapsed < 3 * timeout_s + 30
