"""The demo in a ``gs://`` run directory on a real Cloud Storage server (fake-gcs-server on 127.0.0.1):
killed with SIGKILL once a checkpoint is complete in the bucket, run again, it resumes from the newest
complete checkpoint and ends bitwise where an uninterrupted local run ends; ``convert`` from the bucket
(to a local or a ``gs://`` directory) gives the logits a local copy of the run gives; a run in the bucket is
a ``--model`` and a ``plot`` input like a local one.

Both runs are ``python -m justrl_jax.train`` on one CPU device (XLA's CPU code is deterministic for one
configuration), sharing a compilation cache.
"""

import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
import torch
from gcs_emulator import GcsEmulator
from tiny_run import read_jsonl
from transformers import AutoModelForCausalLM
from xla_flags import cpu_flags

from justrl_jax.checkpoint import complete_steps, read_meta
from justrl_jax.convert import convert
from justrl_jax.metrics import read_metrics
from justrl_jax.model.source import check_model, describe_model
from justrl_jax.plot import plot_run
from justrl_jax.storage import download_dir, run_path

pytestmark = pytest.mark.slow  # two RL runs of the real CLI, one killed and resumed

STEPS = 5
TIMEOUT_S = 1800  # a guard against a hang only (each wait is for a state): a loaded machine can take many minutes


def _env(cache_dir) -> dict:
    return {
        **os.environ,  # STORAGE_EMULATOR_HOST and TENSORSTORE_GCS_HTTP_URL: the emulator
        "XLA_FLAGS": cpu_flags(1),
        "JAX_PLATFORMS": "cpu",
        "HF_HUB_OFFLINE": "1",
        # The test run's own cache (conftest) when there is one: test_resume's one-device CLI runs compile
        # the same RL programs.
        "JAX_COMPILATION_CACHE_DIR": os.environ.get("JAX_COMPILATION_CACHE_DIR", str(cache_dir)),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
    }


def _train_cmd(run_dir, *sets) -> list[str]:
    cmd = [sys.executable, "-m", "justrl_jax.train", "--run-dir", str(run_dir), "--mesh", "1x1"]
    for s in (f"loop.total_steps={STEPS}", "demo.sft_steps=0", "checkpoint.every_steps=1", *sets):
        cmd += ["--set", s]
    return cmd


def _killed_then_resumed(run: str, env: dict) -> tuple[int, int, subprocess.CompletedProcess]:
    """(exit status of the killed run, newest complete step when it died, the resumed run)."""
    cmd = _train_cmd(run, "checkpoint.keep=2")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + TIMEOUT_S
    while 2 not in complete_steps(run):  # a state in the bucket, never a time
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"the run ended ({proc.wait()}) or hung before checkpoint 2 was complete in {run}")
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    killed = proc.wait()
    newest = complete_steps(run)[-1]
    resumed = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    return killed, newest, resumed


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    emulator = GcsEmulator()
    try:
        bucket = emulator.create_bucket("justrl-runs")
        root = tmp_path_factory.mktemp("gcs_run")
        env = _env(root / "xla_cache")
        local, remote = root / "local", f"{bucket}/runs/demo"
        with ThreadPoolExecutor(2) as pool:
            reference = pool.submit(
                subprocess.run, _train_cmd(local), env=env, capture_output=True, text=True, timeout=TIMEOUT_S
            )
            killed = pool.submit(_killed_then_resumed, remote, env)
            yield bucket, local, remote, reference.result(), *killed.result(), root
    finally:
        emulator.stop()


def _raw(step_dir, item):
    with ocp.StandardCheckpointer() as handler:
        return jax.tree.map(np.asarray, handler.restore(step_dir / item))


def test_a_killed_run_in_a_bucket_resumes_bitwise_from_its_newest_complete_checkpoint(runs):
    _, local, remote, reference, killed, newest, resumed, _ = runs
    assert reference.returncode == 0, reference.stderr[-3000:]
    assert killed == -signal.SIGKILL and 2 <= newest < STEPS
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming from step {newest} (gs://" in resumed.stderr
    ours, theirs = run_path(remote) / "checkpoints" / str(STEPS), local.absolute() / "checkpoints" / str(STEPS)
    for item in ("params", "opt_state"):
        a, b = _raw(theirs, item), _raw(ours, item)
        flat_a, flat_b = jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves_with_path(b)
        assert [p for p, _ in flat_a] == [p for p, _ in flat_b]
        pairs = zip(flat_a, flat_b, strict=True)
        differ = [jax.tree_util.keystr(p) for (p, x), (_, y) in pairs if not np.array_equal(x, y)]
        assert not differ, f"{item} differs at {differ[:5]}"
    meta_local, meta_remote = read_meta(theirs), read_meta(ours)
    assert meta_local["data"] == meta_remote["data"] and meta_local["rng"] == meta_remote["rng"]

    def comparable(records):
        return [{k: v for k, v in r.items() if not k.startswith(("time/", "perf/"))} for r in records]

    assert comparable(read_metrics(remote)) == comparable(read_jsonl(local / "metrics.jsonl"))
    assert sorted(p.name for p in (run_path(remote) / "checkpoints").iterdir()) == [str(STEPS - 1), str(STEPS)]


def test_convert_from_the_bucket_gives_the_logits_of_a_local_copy(runs):
    bucket, _, remote, *_, root = runs
    local_copy = download_dir(remote)  # every object of the run, as plain files
    from_bucket = convert(remote, root / "from_bucket", dtype="float32")
    from_local = convert(local_copy, root / "from_local", dtype="float32")
    to_bucket = convert(remote, f"{bucket}/exports/demo", dtype="float32")
    assert str(to_bucket) == f"{bucket}/exports/demo"
    exported = download_dir(to_bucket)
    tokens = torch.tensor([[1, 5, 9, 23, 42, 7, 3]])
    logits = []
    for model_dir in (from_local, from_bucket, exported):
        model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32)
        with torch.no_grad():
            logits.append(model(tokens).logits)
    assert torch.equal(logits[0], logits[1]) and torch.equal(logits[0], logits[2])
    assert (from_local / "model.safetensors").read_bytes() == (exported / "model.safetensors").read_bytes()


def test_generate_evaluate_and_plot_read_a_run_in_the_bucket(runs):
    """``--model gs://...`` resolves (newest complete step, tokenizer copied down) as a local run does;
    ``plot`` writes its figure into the bucket."""
    _, local, remote, *_ = runs
    arch_remote, tokenizer_remote = describe_model(remote)
    arch_local, _ = describe_model(local)
    assert arch_remote == arch_local and (tokenizer_remote / "tokenizer_config.json").is_file()
    check_model(f"{remote}/checkpoints/{STEPS}")
    assert str(plot_run(remote)) == f"{remote}/training_dynamics.png"
    assert run_path(f"{remote}/training_dynamics.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_generate_from_the_bucket_equals_generate_from_the_local_run(runs):
    """``generate --model gs://...`` end to end: the run in the bucket ends bitwise where the local run
    ends, so its greedy completions are the local run's, token for token."""
    _, local, remote, *_, root = runs
    prompts = root / "prompts.jsonl"
    prompts.write_text('{"prompt": "What is 2 + 3?"}\n{"prompt": "Compute 7 * 6."}\n')
    outputs = []
    for name, model in (("local", local), ("bucket", remote)):
        out = root / f"generate_{name}.jsonl"
        cmd = [sys.executable, "-m", "justrl_jax.generate", "--model", str(model), "--prompts", str(prompts)]
        cmd += ["--output", str(out), "--greedy", "--max-new-tokens", "8"]
        res = subprocess.run(cmd, env=_env(root / "xla_cache"), capture_output=True, text=True, timeout=TIMEOUT_S)
        assert res.returncode == 0, res.stderr[-3000:]
        outputs.append([[s["completion_ids"] for s in row["samples"]] for row in read_jsonl(out)])
    assert outputs[0] == outputs[1] and all(len(ids[0]) > 0 for ids in outputs[0])
