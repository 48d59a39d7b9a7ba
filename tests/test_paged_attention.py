"""Paged decode attention: the pure-JAX path against dense attention, and the Pallas kernels (interpret
mode on CPU) against the pure-JAX path, on the same pages, tables and lengths."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from justrl_jax.model.paged_attention import paged_decode_attention, ragged_arguments

B, N, K, H, PAGES, PS, NB = 3, 8, 2, 128, 16, 16, 4


def _inputs(dtype=jnp.float32, seed=0):
    rng = np.random.default_rng(seed)
    q = jnp.asarray(rng.standard_normal((B, N, H)), dtype)
    k_pages = jnp.asarray(rng.standard_normal((K, PAGES, PS, H)), dtype)
    v_pages = jnp.asarray(rng.standard_normal((K, PAGES, PS, H)), dtype)
    lengths = jnp.array([1, 37, NB * PS], jnp.int32)  # one token, a partial last page, every page full
    table = jnp.asarray(rng.permutation(np.arange(1, PAGES))[: B * NB].reshape(B, NB), jnp.int32)  # scattered pages
    return q, k_pages, v_pages, lengths, table


def test_pure_jax_path_equals_dense_attention_over_each_rows_tokens():
    q, k_pages, v_pages, lengths, table = _inputs()
    out = paged_decode_attention(q, k_pages, v_pages, lengths, table, kernel="jax")
    for b in range(B):
        n = int(lengths[b])
        keys = k_pages[:, table[b]].reshape(K, -1, H)[:, :n]  # [K, n, H] the row's tokens in order
        values = v_pages[:, table[b]].reshape(K, -1, H)[:, :n]
        qg = q[b].reshape(K, N // K, H)
        probs = jax.nn.softmax(jnp.einsum("kgh,knh->kgn", qg, keys) / np.sqrt(H), axis=-1)
        dense = jnp.einsum("kgn,knh->kgh", probs, values).reshape(N, H)
        np.testing.assert_allclose(out[b], dense, atol=1e-5)
    # what lies past a row's length is never read
    poisoned_k = k_pages.at[:, table[1, 2], 37 - 2 * PS :].set(1e4)
    again = paged_decode_attention(q, poisoned_k, v_pages, lengths, table, kernel="jax")
    np.testing.assert_array_equal(again, out)


@pytest.mark.parametrize("row_group", [1, 2])
def test_row_groups_change_nothing_whatever_the_row_order(row_group):
    q, k_pages, v_pages, lengths, table = _inputs()
    want = paged_decode_attention(q, k_pages, v_pages, lengths, table, kernel="jax")
    for order in map(np.array, ([2, 1, 0], [0, 1, 2], [1, 0, 2])):  # longest first (the scheduler's order), and not
        got = paged_decode_attention(
            q[order], k_pages, v_pages, lengths[order], table[order], kernel="jax", row_group=row_group
        )
        np.testing.assert_allclose(got, want[order], atol=1e-6)


@pytest.mark.filterwarnings("error::DeprecationWarning")  # jax 0.11 deprecates the kernel module: no warning from us
def test_pallas_gpu_kernel_in_interpret_mode_equals_the_pure_jax_path():
    q, k_pages, v_pages, lengths, table = _inputs()
    with jax.default_matmul_precision("highest"):  # exact fp32 on any backend (a GPU would use TF32)
        want = paged_decode_attention(q, k_pages, v_pages, lengths, table, kernel="jax")
        got = paged_decode_attention(q, k_pages, v_pages, lengths, table, kernel="pallas_gpu", interpret=True)
    np.testing.assert_allclose(got, want, atol=2e-6)


@pytest.mark.skipif(jax.default_backend() != "gpu", reason="the compiled Pallas GPU kernel needs a GPU")
@pytest.mark.parametrize("dtype, atol", [(jnp.float32, 1e-2), (jnp.bfloat16, 3e-2)])
def test_pallas_gpu_kernel_compiled_equals_the_pure_jax_path(dtype, atol):
    # Compiled (Triton) rather than interpreted: the kernel the sampler's "auto" picks on a GPU. Matmuls on
    # the GPU run in TF32 by default, hence fp32's tolerance.
    q, k_pages, v_pages, lengths, table = _inputs(dtype)
    want = paged_decode_attention(q, k_pages, v_pages, lengths, table, kernel="jax").astype(jnp.float32)
    got = paged_decode_attention(q, k_pages, v_pages, lengths, table, kernel="pallas_gpu")
    np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want), atol=atol)
    wrong = paged_decode_attention(q, k_pages, v_pages, lengths, table[::-1], kernel="pallas_gpu")
    assert float(jnp.max(jnp.abs(wrong.astype(jnp.float32) - want))) > 0.1


def test_pallas_tpu_kernel_in_interpret_mode_equals_the_pure_jax_path():
    # The TPU interpreter rounds matmul operands to bf16 (a one-token row returns its value rounded to bf16),
    # so the inputs are bf16 and the tolerance is bf16's.
    q, k_pages, v_pages, lengths, table = _inputs(jnp.bfloat16)
    want = paged_decode_attention(q, k_pages, v_pages, lengths, table, kernel="jax").astype(jnp.float32)
    got = paged_decode_attention(q, k_pages, v_pages, lengths, table, kernel="pallas_tpu", interpret=True)
    np.testing.assert_allclose(got.astype(jnp.float32), want, atol=3e-2)
    # and it does read the table: a permuted table gives other rows
    wrong = paged_decode_attention(q, k_pages, v_pages, lengths, table[::-1], kernel="pallas_tpu", interpret=True)
    assert float(jnp.max(jnp.abs(wrong.astype(jnp.float32) - want))) > 0.1


def test_ragged_kernel_arguments_give_the_pure_jax_result_in_the_kernels_reference():
    from jax.experimental.pallas.ops.tpu.ragged_paged_attention.kernel import ref_ragged_paged_attention

    q, k_pages, v_pages, lengths, table = _inputs()
    want = paged_decode_attention(q, k_pages, v_pages, lengths, table, kernel="jax")
    args = ragged_arguments(q * H**-0.5, k_pages, v_pages, lengths, table)
    got = ref_ragged_paged_attention(*args, sm_scale=1.0)
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_unknown_kernel_is_named():
    with pytest.raises(ValueError, match="kernel must be one of"):
        paged_decode_attention(*_inputs(), kernel="flash")
