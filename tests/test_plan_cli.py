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
