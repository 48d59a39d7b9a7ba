"""Row counts that are not a multiple of the data axis (18 or 5 rows on a 4x1 mesh): generate pads what it
places over the data axis and drops the padding, so every row (tokens, lengths, finish, log-probs) is the
one-device row, with either scheduler."""

import functools

import jax
import numpy as np
import pytest
from paged_setup import EOS, NEW, ragged_prompts, tiny_model

from justrl_jax.sampler import Sampler, SamplerConfig
from justrl_jax.sampling import Temperature
from justrl_jax.sharding import make_mesh


@pytest.fixture(scope="module")
def model():
    return tiny_model()


def _generate(model, mesh, scheduler: str, prompts: int, n: int):
    config = SamplerConfig(
        max_new_tokens=NEW,
        strategy=Temperature(1.0),
        prompt_bucket=4,
        page_size=4,
        steps_per_call=3,
        max_concurrent_rows=8,
        scheduler=scheduler,
    )
    sampler = Sampler(model, config, mesh=mesh, eos_ids=EOS, pad_id=0)
    ids, mask = ragged_prompts()
    with jax.set_mesh(mesh):
        return sampler.generate(model, ids[:prompts], mask[:prompts], n=n, key=7, logprobs=True)


@pytest.fixture(scope="module")
def one_device(model):
    """The one-device rows of (prompts, n), made once for both schedulers' mesh runs: the static waves, which
    compile a few programs where continuous batching compiles every prefill and decode bucket, and give the
    same rows (test_continuous_batching checks that equality)."""
    return functools.cache(
        lambda prompts, n: _generate(model, make_mesh("1x1", devices=jax.devices()[:1]), "waves", prompts, n)
    )


_SLOW = pytest.mark.slow


@pytest.mark.parametrize(
    ("scheduler", "prompts", "n"),  # 5 and 18 rows over 4 data shards; the first was the IndivisibleError
    [
        ("continuous", 5, 1),
        pytest.param("continuous", 6, 3, marks=_SLOW),
        pytest.param("waves", 5, 1, marks=_SLOW),
        pytest.param("waves", 6, 3, marks=_SLOW),
    ],
)
def test_rows_not_a_multiple_of_the_data_axis_equal_one_device(model, one_device, scheduler, prompts, n):
    one = one_device(prompts, n)
    sharded = _generate(model, make_mesh("4x1", devices=jax.devices()[:4]), scheduler, prompts, n)
    rows = prompts * n
    assert sharded.completion_ids.shape == (rows, NEW) and sharded.logprobs.shape == (rows, NEW)
    np.testing.assert_array_equal(sharded.completion_ids, one.completion_ids)
    np.testing.assert_array_equal(sharded.lengths, one.lengths)
    np.testing.assert_array_equal(sharded.finish, one.finish)
    np.testing.assert_array_equal(sharded.completion_mask, one.completion_mask)
    np.testing.assert_allclose(np.asarray(sharded.logprobs), np.asarray(one.logprobs), atol=1e-5)
    assert len(set(sharded.lengths.tolist())) > 1  # rows end apart, so the padding would show if kept
