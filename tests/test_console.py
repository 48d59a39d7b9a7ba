"""The first screen: JAX's TPU advisory and transformers' PyTorch advisory are held back, nothing else."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from justrl_jax.console import tpu_library_installed

ROOT = Path(__file__).resolve().parents[1]

_START = textwrap.dedent("""
    import logging, sys
    sys.modules["torch"] = None  # a machine without PyTorch: transformers' find_spec sees none
    if sys.argv[1] == "quiet":
        from justrl_jax.console import quiet_start
        quiet_start()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    import transformers  # noqa: F401
    import jax
    from jax._src import xla_bridge
    jax.devices()
    logging.getLogger("transformers").warning("another transformers warning")
    logging.getLogger("jax._src.xla_bridge").info("another backend message")
    print("tried and failed quietly:", sorted(xla_bridge._backend_errors), flush=True)
""")


def _start(mode: str) -> str:
    env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}  # JAX picks its backends itself
    env["PYTHONPATH"] = str(ROOT)
    done = subprocess.run(
        [sys.executable, "-c", _START, mode], env=env, capture_output=True, text=True, timeout=300, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout + done.stderr


@pytest.mark.slow
@pytest.mark.skipif(tpu_library_installed(), reason="a TPU library is installed: its failures must show")
def test_the_two_advisories_are_held_back_and_nothing_else():
    loud, quiet = _start("loud"), _start("quiet")
    for out in (loud, quiet):
        assert "tried and failed quietly: ['tpu']" in out  # the TPU attempt still happens, as before
        assert "another transformers warning" in out and "another backend message" in out
    assert "Unable to initialize backend 'tpu'" in loud and "PyTorch was not found" in loud
    assert "Unable to initialize backend 'tpu'" not in quiet and "libtpu" not in quiet
    assert "PyTorch was not found" not in quiet
