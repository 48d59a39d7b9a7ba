"""Meshes and the one logical-axis table that maps model axes onto them.

The mesh has two axes, always in this order:

* ``fsdp``   data parallelism *and* parameter sharding (ZeRO-3 style): the batch is split over it and
  every parameter is split along its ``embed`` dimension.
* ``tensor`` Megatron-style tensor parallelism: attention heads, the MLP hidden dimension and the
  vocabulary are split over it.

``--mesh 4x4`` means ``fsdp=4, tensor=4``; the named form ``fsdp=8,tensor=2`` says the same thing
explicitly (an omitted axis has size 1).

Example::

    mesh = make_mesh(MeshConfig.parse("4x4"))
    sharding = logical_sharding(mesh, ("embed", "heads", "head_dim"), shape=(1536, 12, 128))
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from collections.abc import Iterator, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

AXES: tuple[str, ...] = ("fsdp", "tensor")

# Logical axis -> mesh axis. The only place where the model's layout meets the hardware.
LOGICAL_RULES: dict[str, str | None] = {
    "batch": "fsdp",
    "embed": "fsdp",
    "vocab": "tensor",
    "heads": "tensor",
    "kv_heads": "tensor",
    "kv_pages": "fsdp",  # the paged KV pool: each data shard holds the pages of its own decode slots
    "mlp": "tensor",
    "head_dim": None,
    "seq": None,
    "cache_seq": None,
    "norm": None,
    "layers": None,
}


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Sizes of the ``(fsdp, tensor)`` mesh axes. ``fsdp=-1`` takes every remaining device."""

    fsdp: int = -1
    tensor: int = 1

    def __post_init__(self):
        if self.fsdp == 0 or self.fsdp < -1:
            raise ValueError(f"mesh.fsdp must be a positive size or -1 (all remaining devices), got {self.fsdp}")
        if self.tensor < 1:
            raise ValueError(f"mesh.tensor must be >= 1, got {self.tensor}")

    @classmethod
    def parse(cls, spec: str) -> MeshConfig:
        """Parses ``"4x4"`` (fsdp x tensor), ``"8"`` (fsdp only) or ``"fsdp=8,tensor=2"``."""
        text = spec.strip()
        if not text:
            raise ValueError("mesh spec is empty; use e.g. '4x4' or 'fsdp=8,tensor=2'")
        try:
            if "=" in text:
                sizes: dict[str, int] = {}
                for part in text.split(","):
                    name, _, value = part.partition("=")
                    name = name.strip()
                    if name not in AXES:
                        raise ValueError(f"unknown mesh axis {name!r} in {spec!r}; axes are {AXES}")
                    sizes[name] = int(value)
                return cls(**sizes)
            parts = [int(p) for p in text.lower().split("x")]
        except ValueError as e:
            if "mesh" in str(e):
                raise
            raise ValueError(f"cannot parse mesh spec {spec!r}; use e.g. '4x4' or 'fsdp=8,tensor=2'") from e
        if len(parts) > len(AXES):
            raise ValueError(f"mesh spec {spec!r} has {len(parts)} axes; at most {len(AXES)} ({'x'.join(AXES)})")
        return cls(*parts)

    def resolve(self, num_devices: int) -> tuple[int, int]:
        """Concrete ``(fsdp, tensor)`` sizes for ``num_devices``, or a clear error."""
        if self.fsdp == -1:
            if num_devices % self.tensor:
                raise ValueError(f"mesh tensor={self.tensor} does not divide the {num_devices} available devices")
            return num_devices // self.tensor, self.tensor
        if self.fsdp * self.tensor != num_devices:
            raise ValueError(
                f"mesh fsdp={self.fsdp} x tensor={self.tensor} needs {self.fsdp * self.tensor} devices, "
                f"but {num_devices} are available ({jax.default_backend()}); pass a matching --mesh"
            )
        return self.fsdp, self.tensor

    @classmethod
    def of(cls, mesh: Mesh) -> MeshConfig:
        """The concrete sizes of a built mesh."""
        return cls(*(int(mesh.shape[a]) for a in AXES))

    def axis_sizes(self) -> dict[str, int]:
        """``{mesh axis name: size}`` of concrete sizes (what ``logical_spec`` reads from ``mesh.shape``)."""
        return dict(zip(AXES, (self.fsdp, self.tensor), strict=True))

    def __str__(self) -> str:
        return f"fsdp={self.fsdp},tensor={self.tensor}"


def make_mesh(config: MeshConfig | str, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """Builds the ``(fsdp, tensor)`` mesh over ``devices`` (default: all devices of all processes)."""
    if isinstance(config, str):
        config = MeshConfig.parse(config)
    devices = list(jax.devices() if devices is None else devices)
    shape = config.resolve(len(devices))
    try:
        # Topology-aware placement on TPU; plain reshape elsewhere.
        from jax.experimental import mesh_utils

        grid = mesh_utils.create_device_mesh(shape, devices=devices)
    except Exception:  # noqa: BLE001 - non-TPU or irregular device sets
        grid = np.asarray(devices).reshape(shape)
    return Mesh(grid, AXES)


def logical_spec(
    axes: Sequence[str | None], mesh: Mesh | None = None, shape: Sequence[int] | None = None
) -> PartitionSpec:
    """PartitionSpec for logical ``axes``; with ``mesh`` and ``shape``, a mesh axis that does not divide
    its dimension (e.g. 2 KV heads over tensor=4) is dropped, i.e. that dimension is replicated."""
    out: list[str | None] = []
    used: set[str] = set()
    for i, name in enumerate(axes):
        if name is not None and name not in LOGICAL_RULES:
            raise KeyError(f"logical axis {name!r} has no rule in LOGICAL_RULES")
        mesh_axis = LOGICAL_RULES.get(name) if name is not None else None
        if mesh_axis is not None and mesh_axis in used:
            mesh_axis = None  # one mesh axis may shard one dimension only
        if mesh_axis is not None and mesh is not None and shape is not None:
            if shape[i] % mesh.shape[mesh_axis]:
                mesh_axis = None
        if mesh_axis is not None:
            used.add(mesh_axis)
        out.append(mesh_axis)
    return PartitionSpec(*out)


def logical_sharding(mesh: Mesh, axes: Sequence[str | None], shape: Sequence[int] | None = None) -> NamedSharding:
    return NamedSharding(mesh, logical_spec(axes, mesh, shape))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def mesh_axis_of(logical: str) -> str | None:
    """The mesh axis a logical axis is split over (None: replicated)."""
    if logical not in LOGICAL_RULES:
        raise KeyError(f"logical axis {logical!r} has no rule in LOGICAL_RULES")
    return LOGICAL_RULES[logical]


def axis_size(mesh: Mesh | None, logical: str) -> int:
    """How many ways ``mesh`` splits the logical axis ``logical`` at most (1 without a mesh)."""
    axis = mesh_axis_of(logical)
    return 1 if mesh is None or axis is None else int(mesh.shape[axis])


def batch_spec(ndim: int = 1) -> PartitionSpec:
    """Rows split over the data-parallel axis, the other ``ndim - 1`` dimensions whole."""
    return PartitionSpec(mesh_axis_of("batch"), *([None] * (ndim - 1)))


def batch_sharding(mesh: Mesh, ndim: int = 1) -> NamedSharding:
    return NamedSharding(mesh, batch_spec(ndim))


def data_parallel_size(mesh: Mesh) -> int:
    return axis_size(mesh, "batch")


# The mesh the model's activations are laid out on while a sharded step is traced (None: no constraint).
_ACTIVATION_MESH: contextvars.ContextVar[Mesh | None] = contextvars.ContextVar("activation_mesh", default=None)


@contextlib.contextmanager
def activation_mesh(mesh: Mesh | None) -> Iterator[None]:
    """While tracing under this, :func:`constrain_rows` pins activations to the batch layout of ``mesh``
    (``None``: it stays a no-op, as it is outside any such block, e.g. on one device or in the sampler)."""
    token = _ACTIVATION_MESH.set(mesh)
    try:
        yield
    finally:
        _ACTIVATION_MESH.reset(token)


def constrain_rows(x):
    """``x`` [B, ...] split by rows over the data-parallel axis, every other dimension whole, inside an
    :func:`activation_mesh` block; unchanged otherwise (or when the rows do not divide).

    Why: the parameters are split along ``embed`` over the same axis, and without an anchor XLA may let
    the hidden states follow the weights (split along D); getting back to the row split is then a full
    rematerialisation (jax 0.11's partitioner does this in RMSNorm's backward)."""
    mesh = _ACTIVATION_MESH.get()
    if mesh is None or x.shape[0] % axis_size(mesh, "batch"):
        return x
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, batch_spec(x.ndim)))


def constrain_logical(x, axes: Sequence[str | None]):
    """``x`` laid out by the logical ``axes`` inside an :func:`activation_mesh` block; unchanged otherwise."""
    mesh = _ACTIVATION_MESH.get()
    return x if mesh is None else jax.lax.with_sharding_constraint(x, logical_sharding(mesh, axes, x.shape))
