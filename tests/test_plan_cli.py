"""``python -m justrl_jax.plan``: the DeepSeek plan without hardware, and a refusal that says what to change."""

import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # subprocess CLIs


def _plan(*args):
    return subprocess.run(
        [sys.executable, "-m", "justrl_jax.plan", "--config", "configs/justrl_deepseek_1p5b.yaml", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_plan_deepseek_on_4x4():
    out = _plan("--mesh", "4x4", "--device", "tpu-v5p")
    assert out.returncode == 0, out.stderr
    assert "model parameters: 1,777,088,000" in out.stdout
    assert "fits" in out.stdout


def test_plan_refuses_one_small_chip():
    out = _plan("--mesh", "1x1", "--device", "tpu-v5e")
    assert out.returncode == 1
    assert "does not fit in tpu-v5e memory" in out.stderr and "micro_batch_size" in out.stderr


def test_bad_input_is_one_line_and_exit_2_not_the_does_not_fit_status(tmp_path):
    cases = [
        (("--mesh", "4y4"), "cannot parse mesh spec '4y4'"),
        (("--mesh", "4x4", "--set", "rollout.top_p=3"), "rollout.top_p must be in (0, 1], got 3"),
        (("--mesh", "4x4", "--set", f"model.path={tmp_path}"), f"{tmp_path / 'config.json'} not found"),
    ]
    for args, message in cases:
        out = _plan(*args, "--device", "tpu-v5p")
        assert out.returncode == 2, out.stderr
        assert len(out.stderr.strip().splitlines()) == 1 and message in out.stderr, out.stderr
    out = subprocess.run(
        [sys.executable, "-m", "justrl_jax.plan", "--config", str(tmp_path), "--mesh", "4x4", "--device", "tpu-v5p"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2 and f"config file {tmp_path} is a directory" in out.stderr, out.stderr
