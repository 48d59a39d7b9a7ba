"""GRPO advantages against a NumPy loop written from the recipe's formula (verl 0.4.0 semantics)."""

import numpy as np
import pytest

from justrl_jax.advantages import group_advantages


def _reference(rewards, g, eps=1e-6):
    out = np.zeros(len(rewards))
    for start in range(0, len(rewards), g):
        r = np.asarray(rewards[start : start + g], np.float64)
        if g == 1:
            mean, std = 0.0, 1.0
        else:
            mean = r.sum() / g
            std = np.sqrt(((r - mean) ** 2).sum() / (g - 1))  # unbiased, like torch.std
        out[start : start + g] = (r - mean) / (std + eps)
    return out


def test_matches_formula_with_constant_groups():
    rewards = np.array(
        [
            1,
            -1,
            -1,
            -1,
            1,
            -1,
            -1,
            -1,  # 2 of 8 correct
            1,
            1,
            1,
            1,
            1,
            1,
            1,
            1,  # all correct: advantage 0
            -1,
            -1,
            -1,
            -1,
            -1,
            -1,
            -1,
            -1,  # all wrong: advantage 0
            0.3,
            -2.0,
            0.5,
            1.0,
            -1.0,
            0.0,
            0.25,
            0.7,  # real-valued (overlong-penalty style)
        ],
        np.float32,
    )
    got = np.asarray(group_advantages(rewards, 8))
    np.testing.assert_allclose(got, _reference(rewards, 8), rtol=1e-6, atol=1e-6)
    assert np.all(got[8:24] == 0.0)
    # The classic 2-of-8 case: mean -0.5, squared deviations sum to 6, unbiased std sqrt(6/7).
    np.testing.assert_allclose(got[0], 1.5 / (np.sqrt(6 / 7) + 1e-6), rtol=1e-6)


def test_constant_group_is_exactly_zero_despite_rounding():
    # mean(0.1 x 7) in float32 is not exactly 0.1; without the explicit rule this would be ~1e-2.
    rewards = np.full(7, 0.1, np.float32)
    assert np.all(np.asarray(group_advantages(rewards, 7)) == 0.0)


def test_singleton_groups_follow_verl():
    rewards = np.array([1.0, -1.0, 0.5], np.float32)
    np.testing.assert_allclose(np.asarray(group_advantages(rewards, 1)), _reference(rewards, 1), rtol=1e-7)


@pytest.mark.parametrize(
    "rewards,g,match",
    [
        (np.zeros(6), 4, "multiple of group_size"),
        (np.zeros((2, 4)), 4, "1-D"),
        (np.zeros(4), 0, "group_size"),
    ],
)
def test_bad_input(rewards, g, match):
    with pytest.raises(ValueError, match=match):
        group_advantages(rewards, g)


def test_host_rewards_give_host_advantages_equal_to_the_device_path():
    import jax
    import jax.numpy as jnp

    rewards = np.array([1, -1, -1, -1, 1, 1, 1, 1, 0.5, -1, 1, 0], np.float32)
    host = group_advantages(rewards, 4)
    device = group_advantages(jnp.asarray(rewards), 4)
    assert isinstance(host, np.ndarray) and host.dtype == np.float32  # no device round trip
    assert isinstance(device, jax.Array)
    np.testing.assert_allclose(host, np.asarray(device), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(host, _reference(rewards, 4), rtol=1e-5, atol=1e-6)
    assert (host[4:8] == 0).all()
