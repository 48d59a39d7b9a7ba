"""Orbax checkpoints of a run: complete or invisible, restorable onto any mesh.

Layout of ``RUN_DIR/checkpoints/<step>/`` (one Orbax composite per saved step):

* ``params``    the model parameters (a plain nested dict of arrays), the only item ``convert`` needs;
* ``opt_state`` the optimizer state and the other array fields of the train state;
* ``meta``      JSON: the data iterator state, the RNG key, the resolved run config, the model
  architecture and where its tokenizer came from, and the metrics of that step.

Orbax writes each step into a temporary directory and renames it when every item (and every host)
is done, so a kill during a save leaves the previous checkpoint as the newest complete one.
``<step>`` is the number of completed training steps: resuming from it runs step ``<step>`` next.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    """When and how checkpoints are written (JustRL: every 50 steps)."""

    every_steps: int = 50  # save after every N completed steps (and at the end, and on SIGTERM)
    keep: int = 3  # newest checkpoints kept on disk
    async_save: bool = True  # overlap writing with the next steps
    enabled: bool = True

    def __post_init__(self):
        if self.every_steps < 1:
            raise ValueError(f"checkpoint.every_steps must be >= 1, got {self.every_steps}")
        if self.keep < 1:
            raise ValueError(f"checkpoint.keep must be >= 1, got {self.keep}")


@dataclasses.dataclass(frozen=True)
class Restored:
    step: int
    params: Any
    opt_state: Any
    meta: dict


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def all_finite(tree) -> bool:
    """True when every floating array in ``tree`` is finite (one fused reduction on device)."""
    leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(jnp.asarray(x).dtype, jnp.floating)]
    if not leaves:
        return True
    return bool(jax.jit(lambda xs: jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in xs])))(leaves))


class Checkpointer:
    """Saves and restores ``(params, opt_state, meta)`` under ``RUN_DIR/checkpoints``."""

    def __init__(self, run_dir: str | Path, config: CheckpointConfig = CheckpointConfig()):
        self.config = config
        self.directory = checkpoint_dir(run_dir).absolute()
        options = ocp.CheckpointManagerOptions(
            max_to_keep=config.keep,
            enable_async_checkpointing=config.async_save,
            create=True,
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def save(self, step: int, params, opt_state, meta: dict) -> bool:
        """Saves ``step`` unless its parameters are not finite (then nothing is written; returns False)."""
        if not all_finite(params):
            log.error("step %d: parameters are not finite; checkpoint NOT written", step)
            return False
        self._manager.save(
            step,
            args=ocp.args.Composite(
                params=ocp.args.StandardSave(params),
                opt_state=ocp.args.StandardSave(opt_state),
                meta=ocp.args.JsonSave(_jsonable(meta)),
            ),
            force=True,
        )
        return True

    def restore(self, step: int, abstract_params, abstract_opt_state) -> Restored:
        """Restores onto the shardings carried by the abstract targets (any mesh)."""
        out = self._manager.restore(
            step,
            args=ocp.args.Composite(
                params=ocp.args.StandardRestore(abstract_params),
                opt_state=ocp.args.StandardRestore(abstract_opt_state),
                meta=ocp.args.JsonRestore(),
            ),
        )
        return Restored(step, out["params"], out["opt_state"], dict(out["meta"]))

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


def read_meta(step_dir: str | Path) -> dict:
    """The JSON ``meta`` item of one checkpoint step directory."""
    import json

    path = Path(step_dir) / "meta" / "metadata"
    if not path.exists():
        raise FileNotFoundError(f"{step_dir} is not a complete justrl_jax checkpoint (no meta/metadata)")
    return json.loads(path.read_text())


def restore_params(step_dir: str | Path, abstract_params):
    """Only the parameters of one checkpoint step directory (for convert, generate, evaluate)."""
    step_dir = Path(step_dir).absolute()
    handler = ocp.StandardCheckpointer()
    try:
        return handler.restore(step_dir / "params", abstract_params)
    finally:
        handler.close()


def abstract_like(tree, shardings=None):
    """ShapeDtypeStructs of ``tree`` (optionally with other shardings) to restore onto."""
    if shardings is None:
        return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.ndarray, jax.Array)):
        return np.asarray(obj).tolist()
    if isinstance(obj, (np.integer, np.floating, np.bool_)):
        return obj.item()
    if isinstance(obj, float) and not np.isfinite(obj):
        return str(obj)
    return obj
