"""The linearity check used by the verifier tests can fail: it catches a quadratic pass."""

import pytest
from cpu_scaling import assert_linear


def _quadratic(text: str) -> int:
    return sum(text.count("a", i) for i in range(0, len(text), 50))


def test_a_linear_pass_passes():
    assert_linear(lambda n: "ab" * n, lambda text: sum(1 for c in text if c == "a"), 400_000)


def test_a_quadratic_pass_is_caught():
    with pytest.raises(AssertionError, match="the CPU time for 8x the input"):
        assert_linear(lambda n: "a" * n, _quadratic, 400_000)
