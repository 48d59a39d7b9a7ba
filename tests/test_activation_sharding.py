"""The sharded train step keeps activations in the batch layout: no involuntary full rematerialisation.

Without anchors, the hidden states [B, T, D] may follow the weights (split along D over ``fsdp``) and jax
0.11's partitioner then gets back to the row split only by replicating them on every device, which XLA
reports as "Involuntary full rematerialization" (RMSNorm's backward, the embedding's scatter-add).
"""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec
from xla_flags import cpu_flags

from justrl_jax.sharding import activation_mesh, batch_spec, constrain_logical, constrain_rows, make_mesh

# Compiles compute_logps and the train step (plain and rematerialised) of a tiny model on a 2x2 mesh.
_COMPILE_SHARDED_STEP = """
import jax, jax.numpy as jnp, numpy as np
from flax import nnx
from justrl_jax.model.qwen2 import Qwen2, Qwen2Config, positions_from_mask
from justrl_jax.optim import OptimConfig
from justrl_jax.sharding import make_mesh
from justrl_jax.train_step import TrainBatch, TrainConfig, init_train_state, make_compute_logps, make_train_step
from justrl_jax.train_step import state_sharding

n, s = 8, 12
config = Qwen2Config(
    vocab_size=96, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16
)
mesh = make_mesh("2x2")
rng = np.random.default_rng(0)
attn = jnp.ones((n, s), bool)
batch = TrainBatch(
    tokens=jnp.asarray(rng.integers(1, 96, (n, s)), jnp.int32),
    positions=positions_from_mask(attn),
    attn_mask=attn,
    loss_mask=jnp.ones((n, s), jnp.float32),
    advantages=jnp.asarray(rng.normal(size=n), jnp.float32),
    old_logps=jnp.zeros((n, s), jnp.float32),
    completion_start=2,
)
for remat in (False, True):
    cfg = TrainConfig(mini_batch_size=n, micro_batch_size=n, logp_chunk_size=8, remat=remat, optim=OptimConfig())
    graphdef, state = init_train_state(Qwen2(config, rngs=nnx.Rngs(0)), cfg.optim, mesh)
    sharding = state_sharding(state)
    logps = make_compute_logps(graphdef, cfg, mesh, sharding)(state, batch)
    _, metrics = make_train_step(graphdef, cfg, mesh, sharding)(state, batch)
    assert np.isfinite(float(metrics.loss)) and np.isfinite(np.asarray(logps.logps)).all()
print("COMPILED")
"""


@pytest.mark.slow  # a subprocess compiling four sharded programs: ~20-40 s on 2 loaded cores
def test_sharded_train_step_compiles_without_full_rematerialisation():
    env = dict(os.environ)
    env["XLA_FLAGS"] = cpu_flags(4)
    env["TF_CPP_MIN_LOG_LEVEL"] = "0"  # XLA's warnings are what this test reads
    # A cached executable is not compiled again, and only compiling prints the warning.
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    env["JAX_ENABLE_COMPILATION_CACHE"] = "false"
    run = subprocess.run(
        [sys.executable, "-c", _COMPILE_SHARDED_STEP], env=env, capture_output=True, text=True, timeout=600
    )
    assert run.returncode == 0 and "COMPILED" in run.stdout, run.stderr[-4000:]
    bad = [line for line in run.stderr.splitlines() if "Involuntary full rematerialization" in line]
    assert not bad, f"{len(bad)} involuntary full rematerialisations, e.g. {bad[0][:1500]}"


def test_constraints_are_a_no_op_outside_a_sharded_step():
    x = jnp.ones((4, 3, 8))
    assert constrain_rows(x) is x
    assert constrain_logical(x, ("batch", None, "embed")) is x
    with activation_mesh(None):
        assert constrain_rows(x) is x


def test_constraints_pin_rows_and_logical_axes_on_the_mesh():
    mesh = make_mesh("2x2", jax.devices()[:4])
    x = np.arange(4 * 3 * 8, dtype=np.float32).reshape(4, 3, 8)

    def f(x):
        with activation_mesh(mesh):
            return constrain_rows(x * 2), constrain_logical(x, ("vocab", None, "embed")), constrain_rows(x[:3])

    rows, logical, odd = jax.jit(f)(x)
    assert rows.sharding.is_equivalent_to(NamedSharding(mesh, batch_spec(3)), 3)
    assert logical.sharding.is_equivalent_to(NamedSharding(mesh, PartitionSpec("tensor", None, "fsdp")), 3)
    np.testing.assert_array_equal(np.asarray(rows), x * 2)
    np.testing.assert_array_equal(np.asarray(odd), x[:3])  # 3 rows do not split 2 ways: left alone
