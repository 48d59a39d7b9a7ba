"""Multi-host array movement, in one place: host numpy <-> global arrays split over the batch axis.

Every process of a run holds the same host arrays (each reads the same global batch; cheap host work).
:func:`to_global` builds the global array from them, each device taking only its own rows, so nothing
crosses hosts; :func:`to_host` brings a global array back whole to every process (an all-gather across
processes only when some of its shards live on another host). The batch axis is the one the sharding
rules map ``batch`` to; :func:`place` does the same for any other sharding (parameters).

Example::

    batch = to_global(host_batch, mesh)      # a pytree of numpy [N, ...] -> global arrays, rows split
    tokens = to_host(state.tokens)           # -> numpy [N, ...] on every process
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, Sharding

from justrl_jax.sharding import batch_sharding, data_parallel_size


def place(x: np.ndarray, sharding: Sharding) -> jax.Array:
    """One host array (identical on every process) -> the global array of that sharding; each device
    copies only its own slice of ``x``."""
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])


def to_global(tree, mesh: Mesh | None):
    """Host arrays (identical on every process) -> global arrays split over the batch axis (dim 0).

    Without a mesh: plain device arrays on the default device.
    """

    def one(x):
        x = np.asarray(x)
        return jnp.asarray(x) if mesh is None else place(x, batch_sharding(mesh, x.ndim))

    return jax.tree.map(one, tree)


def rows_to_global(x: np.ndarray, mesh: Mesh | None) -> jax.Array:
    """One host array whose row count need not divide the data axis (generate's rows = prompts x n) -> a global
    array of exactly those rows. A sharding cannot split a ragged dim 0, so the rows are zero-padded to the next
    multiple of the data axis, placed split over it, and the padding dropped on device (what the static waves
    scheduler does with its filler rows)."""
    x = np.asarray(x)
    rows = x.shape[0]
    pad = 0 if mesh is None else -rows % data_parallel_size(mesh)
    if pad == 0:
        return to_global(x, mesh)
    padded = to_global(np.concatenate([x, np.zeros((pad, *x.shape[1:]), x.dtype)]), mesh)
    return padded[:rows]


def to_host(tree):
    """Global (or local) arrays -> numpy arrays holding every row, on every process."""

    def one(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            from jax.experimental import multihost_utils

            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(x)

    return jax.tree.map(one, tree)
