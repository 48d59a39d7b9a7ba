"""Building models with their parameters born sharded, and the shardings of their state."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh, NamedSharding

from justrl_jax.global_arrays import place
from justrl_jax.model.qwen2 import Qwen2, Qwen2Config
from justrl_jax.sharding import logical_sharding, replicated


def _axes_of(variable) -> tuple | None:
    meta = variable.get_metadata() if hasattr(variable, "get_metadata") else {}
    return meta.get("logical_axes")


def state_shardings(state: nnx.State, mesh: Mesh) -> nnx.State:
    """A NamedSharding for every variable of ``state`` from its ``logical_axes`` (replicated if none)."""

    def one(variable):
        axes = _axes_of(variable)
        value = variable.get_value()
        if axes is None:
            return variable.replace(replicated(mesh))
        return variable.replace(logical_sharding(mesh, axes, value.shape))

    return jax.tree.map(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def abstract_model(
    config: Qwen2Config, *, param_dtype=jnp.float32, compute_dtype=jnp.float32, remat: bool = False
) -> Qwen2:
    """The model with ShapeDtypeStruct leaves: no memory is allocated (use for planning and restore)."""
    return nnx.eval_shape(
        lambda: Qwen2(config, rngs=nnx.Rngs(0), param_dtype=param_dtype, compute_dtype=compute_dtype, remat=remat)
    )


def create_model(
    config: Qwen2Config,
    mesh: Mesh | None = None,
    *,
    seed: int = 0,
    param_dtype=jnp.float32,
    compute_dtype=jnp.float32,
    remat: bool = False,
) -> Qwen2:
    """A randomly initialised model; on a mesh every parameter is created directly in its shard."""
    build = lambda: Qwen2(
        config,
        rngs=nnx.Rngs(seed),
        param_dtype=param_dtype,  # noqa: E731
        compute_dtype=compute_dtype,
        remat=remat,
    )
    if mesh is None:
        return build()
    graphdef, abstract = nnx.split(nnx.eval_shape(build))
    shardings = state_shardings(abstract, mesh)
    state = jax.jit(lambda: nnx.split(build())[1], out_shardings=shardings)()
    return nnx.merge(graphdef, state)


def from_host_arrays(
    config: Qwen2Config,
    arrays: Callable[[tuple[str, ...]], jax.Array | None],
    mesh: Mesh | None,
    *,
    param_dtype=jnp.float32,
    compute_dtype=jnp.float32,
    remat: bool = False,
) -> Qwen2:
    """Builds a model whose parameters come from ``arrays(path)`` (host numpy arrays).

    On a mesh each device receives only its own slice (:func:`~justrl_jax.global_arrays.place`), so a
    multi-host run never materialises another host's shards on device.
    """
    graphdef, abstract = nnx.split(
        abstract_model(config, param_dtype=param_dtype, compute_dtype=compute_dtype, remat=remat)
    )
    shardings = state_shardings(abstract, mesh) if mesh is not None else None
    flat = dict(nnx.to_flat_state(abstract))
    flat_sh = dict(nnx.to_flat_state(shardings)) if shardings is not None else {}
    leaves = {}
    for path, variable in flat.items():
        host = arrays(tuple(str(p) for p in path))
        want = variable.get_value()
        if host is None:
            raise KeyError(f"no weight provided for parameter {'/'.join(map(str, path))}")
        if tuple(host.shape) != tuple(want.shape):
            raise ValueError(
                f"weight for {'/'.join(map(str, path))} has shape {tuple(host.shape)}, expected {tuple(want.shape)}"
            )
        host = host.astype(want.dtype)
        if mesh is None:
            value = jnp.asarray(host)
        else:
            sharding: NamedSharding = flat_sh[path].get_value()
            value = place(host, sharding)
        leaves[path] = variable.replace(value)
    state = nnx.from_flat_state(leaves)
    return nnx.merge(graphdef, state)


def count_params(model_or_state) -> int:
    state = nnx.state(model_or_state, nnx.Param) if isinstance(model_or_state, nnx.Module) else model_or_state
    return sum(int(x.size) for x in jax.tree.leaves(state))
