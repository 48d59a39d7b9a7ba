"""The code base stays ruff-clean (the one linter and formatter rules of pyproject.toml), and the mesh's
axis names stay in the one module that maps the model onto the mesh."""

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from justrl_jax.sharding import AXES

ROOT = Path(__file__).resolve().parent.parent


def _ruff() -> str:
    ruff = shutil.which("ruff") or (Path(sys.executable).parent / "ruff")
    if not Path(ruff).exists():
        pytest.skip("ruff is not installed (it is part of the test extra)")
    return str(ruff)


@pytest.mark.parametrize("command", [["check"], ["format", "--check"]], ids=["check", "format"])
def test_ruff_clean(command):
    out = subprocess.run(
        [_ruff(), *command, "justrl_jax", "tests", "scripts"], cwd=ROOT, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout + out.stderr


def _axis_name_spellings(source: str) -> list[int]:
    """Lines where ``source`` spells a mesh axis name as a string of its own (not inside prose)."""
    return [n.lineno for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Constant) and n.value in AXES]


def test_only_sharding_spells_a_mesh_axis_name():
    """Layouts go through the logical rules of justrl_jax/sharding.py (e.g. ``batch_spec``, ``axis_size``);
    a module that wrote ``"fsdp"`` itself would silently keep the old layout when the rules change."""
    assert _axis_name_spellings('spec = PartitionSpec("fsdp")\nn = mesh.shape["tensor"]') == [1, 2]  # it can fail
    assert _axis_name_spellings('log.info(f"mesh fsdp={n}, tensor={t}")') == []
    package = ROOT / "justrl_jax"
    found = {
        str(path.relative_to(ROOT)): lines
        for path in sorted(package.rglob("*.py"))
        if path != package / "sharding.py" and (lines := _axis_name_spellings(path.read_text()))
    }
    assert not found, f"mesh axis names {AXES} spelled outside justrl_jax/sharding.py (file: lines): {found}"
