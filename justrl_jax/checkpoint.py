"""Orbax checkpoints of a run: complete or invisible, finite, restorable onto any mesh.

Layout of ``RUN_DIR/checkpoints/<step>/`` (one Orbax composite per saved step):

* ``params``    the model parameters (a plain nested dict of arrays), the only item ``convert`` needs;
* ``opt_state`` the optimizer state and the other array fields of the train state;
* ``meta``      JSON: the data iterator state, the RNG key, the resolved run config, the model
  architecture and where its tokenizer came from, and the metrics of that step.

Next to them, ``RUN_DIR/hf_assets/`` holds a copy of the starting model's tokenizer, config and
generation config (not its weights), so a run directory converts to an HF model on any machine.

A run resumes from here alone: :func:`resume_run` picks the checkpoint a start continues from
(:func:`select_resume`), checks it belongs to this model (:func:`check_resumable`), restores the train
state onto this run's shardings (:func:`restore_train_state`) and rewrites the run's history from it
(:func:`continue_history`); :func:`save_run` and :func:`run_meta` write what those read.

Orbax writes each step into ``<step>.orbax-checkpoint-tmp`` and renames it when every item (and every
host) is done (on object stores, where nothing renames atomically, it writes ``commit_success.txt``
last instead), so a kill during a save leaves the previous checkpoint as the newest complete one; the
next start deletes the leftover. ``<step>`` is the number of completed training steps: resuming from
it runs step ``<step>`` next. A tree with a NaN or Inf is never written, so every checkpoint that
retention keeps is a good one.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from justrl_jax.model.hf_io import TOKENIZER_FILES
from justrl_jax.storage import absolute, is_remote, rmtree, run_path
from justrl_jax.train_step import TrainState

if TYPE_CHECKING:
    from justrl_jax.model.source import Policy

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    """When and how checkpoints are written (JustRL: every 50 steps)."""

    every_steps: int = 50  # save after every N completed steps (and at the end, and on SIGTERM)
    keep: int = 3  # newest checkpoints kept on disk
    async_save: bool = True  # overlap writing with the next steps
    enabled: bool = True

    def __post_init__(self):
        if isinstance(self.every_steps, bool) or not isinstance(self.every_steps, int) or self.every_steps < 1:
            raise ValueError(f"checkpoint.every_steps must be an integer >= 1, got {self.every_steps!r}")
        if isinstance(self.keep, bool) or not isinstance(self.keep, int) or self.keep < 1:
            raise ValueError(f"checkpoint.keep must be an integer >= 1, got {self.keep!r}")
        for name in ("async_save", "enabled"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"checkpoint.{name} must be true or false, got {getattr(self, name)!r}")


@dataclasses.dataclass(frozen=True)
class Restored:
    """One restored checkpoint: the arrays on the requested shardings and the JSON meta."""

    step: int
    params: Any
    opt_state: Any
    meta: dict
    path: Path  # the step directory it came from


# A run directory and everything under it may be local or gs:// (justrl_jax.storage.run_path).
def checkpoint_dir(run_dir: str | Path) -> Path:
    return run_path(run_dir) / "checkpoints"


def hf_assets_dir(run_dir: str | Path) -> Path:
    return run_path(run_dir) / "hf_assets"


def damaged_dir(run_dir: str | Path) -> Path:
    """Where checkpoints that failed to restore are kept (moved, never deleted)."""
    return run_path(run_dir) / "checkpoints_damaged"


def reset_hf_assets(run_dir: str | Path) -> bool:
    """Removes the run's copy of its starting model's tokenizer and configs (a run that starts at step 0
    copies them afresh from its own model.path at its first save); True when there was one."""
    out = hf_assets_dir(run_dir)
    if not out.exists():
        return False
    rmtree(out)
    return True


# Everything an HF model directory holds except its weights (small files: copied once per run).
_HF_ASSET_FILES = ("config.json", "generation_config.json", *TOKENIZER_FILES, "tokenizer.model")
# In a bucket (no atomic rename) the copy is complete once this, written last, exists.
HF_ASSETS_COMPLETE = ".complete"


def save_hf_assets(source_dir: str | Path, run_dir: str | Path) -> Path:
    """Copies (once) the tokenizer, config and generation config of ``source_dir`` into the run."""
    out = hf_assets_dir(run_dir)
    if is_remote(out):
        if not (out / HF_ASSETS_COMPLETE).exists():
            present = [name for name in _HF_ASSET_FILES if (Path(source_dir) / name).is_file()]
            for name in present:
                (out / name).write_bytes((Path(source_dir) / name).read_bytes())
            (out / HF_ASSETS_COMPLETE).write_text("")
        return out
    if out.is_dir():
        return out
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in _HF_ASSET_FILES:
        if (Path(source_dir) / name).is_file():
            shutil.copy2(Path(source_dir) / name, tmp / name)
    tmp.rename(out)  # complete or absent, like the checkpoints
    return out


def is_complete(step_dir: str | Path) -> bool:
    """True for a finalized justrl_jax checkpoint step directory (never for a partial save)."""
    step_dir = run_path(step_dir)
    return (
        step_dir.name.isdigit()
        and (step_dir / "params").is_dir()
        and (step_dir / "opt_state").is_dir()
        and (step_dir / "meta" / "metadata").is_file()
        and ocp.utils.is_checkpoint_finalized(step_dir)
    )


def complete_steps(run_dir: str | Path) -> list[int]:
    """The steps of ``run_dir`` that hold a complete checkpoint, oldest first."""
    ckpts = checkpoint_dir(run_dir)
    if not ckpts.is_dir():
        return []
    return sorted(int(p.name) for p in ckpts.iterdir() if is_complete(p))


@jax.jit
def _finite_flags(leaves: list[jax.Array]) -> jax.Array:
    """One flag per leaf: all its values finite (one fused reduction on device, compiled once per tree)."""
    return jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves])


def nonfinite_leaves(tree) -> list[str]:
    """Key paths of the floating leaves of ``tree`` holding a NaN or Inf (empty when all are finite)."""
    pairs = [
        (jax.tree_util.keystr(path), x)
        for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]
        if jnp.issubdtype(_dtype(x), jnp.floating)
    ]
    if not pairs:
        return []
    flags = _finite_flags([x for _, x in pairs])
    # Replicated scalar flags; on a multi-host mesh only the local copy is addressable.
    flags = np.asarray(flags.addressable_shards[0].data)
    return [name for (name, _), ok in zip(pairs, flags, strict=True) if not ok]


def _dtype(x) -> np.dtype:
    return x.dtype if hasattr(x, "dtype") else np.asarray(x).dtype


class Checkpointer:
    """Saves and restores ``(params, opt_state, meta)`` under ``RUN_DIR/checkpoints``.

    Every process of a multi-host run makes one and calls the same methods in the same order (Orbax
    writes collectively). Use it as a context manager, or call :meth:`close`, so the last
    asynchronous save is finished before the process exits.
    """

    def __init__(self, run_dir: str | Path, config: CheckpointConfig = CheckpointConfig()):
        self.config = config
        self.directory = absolute(checkpoint_dir(run_dir))
        options = ocp.CheckpointManagerOptions(
            max_to_keep=config.keep,
            enable_async_checkpointing=config.async_save,
            cleanup_tmp_directories=True,  # what a kill during a save left behind
            create=True,
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def step_dir(self, step: int) -> Path:
        return self.directory / str(step)

    def save(self, step: int, params, opt_state, meta: dict) -> bool:
        """Starts saving ``step`` (in the background when ``async_save``); returns False, writing
        nothing, when the parameters or the optimizer state hold a NaN or Inf."""
        bad = nonfinite_leaves({"params": params, "opt_state": opt_state})
        if bad:
            shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
            log.error("step %d: non-finite values in %s; checkpoint NOT written", step, shown)
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
        """Restores ``step`` onto the shardings carried by the abstract targets (any mesh)."""
        if step not in self._manager.all_steps():
            raise FileNotFoundError(
                f"{self.directory} has no complete checkpoint at step {step}; available: {self.all_steps()}"
            )
        return restore_step_dir(self.step_dir(step), abstract_params, abstract_opt_state)

    def delete_after(self, step: int) -> list[int]:
        """Deletes the checkpoints newer than ``step`` (``-1``: all); returns their steps.

        A run that goes back to an earlier state (``--resume`` an older step, ``--no-resume``) rewrites
        its history from there, and must not later meet a checkpoint of the abandoned future.
        """
        self._manager.wait_until_finished()
        doomed = [s for s in self.all_steps() if s > step]
        for s in doomed:
            self._manager.delete(s)
        return doomed

    def set_aside(self, step: int) -> Path:
        """Moves the checkpoint of ``step`` (a damaged one) out of the way, never deleting it: to
        ``RUN_DIR/checkpoints_damaged/<step>`` (``<step>.1``, ... when that name is taken)."""
        self._manager.wait_until_finished()
        target = damaged_dir(self.directory.parent) / str(step)
        n = 0
        while target.exists():
            n += 1
            target = target.with_name(f"{step}.{n}")
        if jax.process_index() == 0:  # one mover on a shared directory; the others wait for it
            target.parent.mkdir(parents=True, exist_ok=True)
            self.step_dir(step).rename(target)
        from justrl_jax.distributed import barrier

        barrier(f"set-aside-{step}", 300)
        self._manager.reload()  # it lists the steps it found; this one is gone
        return target

    def newest_good(self) -> str:
        """Where the last good state is, for an error message (after the pending save completes)."""
        self.wait()
        latest = self.latest_step()
        if latest is None:
            return f"no checkpoint was written in {self.directory}"
        return f"the newest checkpoint, {self.step_dir(latest)}, holds the last good state"

    def wait(self) -> None:
        """Blocks until the last asynchronous save is complete on disk."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def find_checkpoint(name: str | Path) -> Path | None:
    """The checkpoint step directory ``name`` refers to, or None when it is not a run/checkpoint.

    A run directory means its newest *complete* checkpoint: a save cut short by a kill (Orbax's
    ``<step>.orbax-checkpoint-tmp`` directory, or one without ``commit_success.txt``) is never used.
    """
    path = run_path(name)
    if is_complete(path):
        return path
    if (path / "params").is_dir() or (path / "meta").is_dir():
        raise FileNotFoundError(
            f"{path} is an incomplete checkpoint (a save that did not finish); "
            f"complete ones in {path.parent}: {complete_steps(path.parent.parent)}"
        )
    if checkpoint_dir(path).is_dir():
        steps = complete_steps(path)
        if not steps:
            raise FileNotFoundError(f"run directory {path} has no complete checkpoint yet")
        return checkpoint_dir(path) / str(steps[-1])
    return None


def restore_step_dir(step_dir: str | Path, abstract_params, abstract_opt_state) -> Restored:
    """Restores one complete checkpoint step directory onto the abstract targets' shardings."""
    step_dir = absolute(step_dir)
    if not is_complete(step_dir):
        raise FileNotFoundError(f"{step_dir} is not a complete justrl_jax checkpoint step directory")
    with ocp.StandardCheckpointer() as handler:
        params = handler.restore(step_dir / "params", abstract_params)
        opt_state = handler.restore(step_dir / "opt_state", abstract_opt_state)
    return Restored(int(step_dir.name), params, opt_state, read_meta(step_dir), step_dir)


def read_meta(step_dir: str | Path) -> dict:
    """The JSON ``meta`` item of one checkpoint step directory."""
    path = run_path(step_dir) / "meta" / "metadata"
    if not path.is_file():
        raise FileNotFoundError(f"{step_dir} is not a complete justrl_jax checkpoint (no meta/metadata)")
    return json.loads(path.read_text())


def restore_params(step_dir: str | Path, abstract_params):
    """Only the parameters of one checkpoint step directory (for convert, generate, evaluate)."""
    step_dir = absolute(step_dir)
    try:
        with ocp.StandardCheckpointer() as handler:
            return handler.restore(step_dir / "params", abstract_params)
    except Exception as e:  # noqa: BLE001 - TensorStore's errors for missing or cut files vary
        raise ValueError(
            f"checkpoint {step_dir} does not restore ({first_line(e)}); name an older step (RUN_DIR/checkpoints/<step>)"
        ) from e


def dict_changes(saved: dict, current: dict) -> list[tuple[str, Any, Any]]:
    """``(dotted key, saved value, current value)`` for each leaf that differs, as JSON would store it
    (a checkpoint's config or architecture against this run's)."""

    def flat(d, prefix=""):
        out = {}
        for k, v in d.items():
            if isinstance(v, dict) and v:
                out.update(flat(v, f"{prefix}{k}."))
            else:
                out[f"{prefix}{k}"] = _jsonable(v)
        return out

    a, b = flat(saved), flat(_jsonable(current))
    return [
        (k, a.get(k), b.get(k))
        for k in sorted(set(a) | set(b))
        if json.dumps(a.get(k), sort_keys=True) != json.dumps(b.get(k), sort_keys=True)
    ]


# --- resuming past damaged checkpoints -------------------------------------------------------------


class CheckpointMismatch(ValueError):
    """A checkpoint that reads fine but does not belong to this run (another architecture): a user
    error that stops the run, never a reason to fall back to an older checkpoint."""


class NoRestorableCheckpoint(FileNotFoundError):
    """Every checkpoint of a run directory failed to restore; the message names each and why."""


def first_line(error: BaseException, limit: int = 300) -> str:
    """The gist of an error (TensorStore's run to a hundred lines) for a one-line report."""
    text = next((line.strip() for line in str(error).splitlines() if line.strip()), "")
    text = f"{type(error).__name__}: {text}" if text else type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def restore_newest_restorable(checkpointer: Checkpointer, restore: Callable[[Path], T]) -> tuple[int, T] | None:
    """Restores the newest checkpoint of ``checkpointer`` that restores, with ``restore(step_dir)``.

    A checkpoint whose restore raises (missing or truncated files, missing or truncated meta) is
    reported by step, path and reason, and the next older one is tried. Once one restores, each newer
    one that failed is moved aside (:meth:`Checkpointer.set_aside`, never deleted) so the resumed run
    cannot meet it again. :class:`CheckpointMismatch` is raised at once. Returns ``(step, result)``,
    None when there is no checkpoint, and raises :class:`NoRestorableCheckpoint` naming what it tried
    when none restores (then nothing is moved).
    """
    failed: list[tuple[int, Path, str]] = []
    for step in reversed(checkpointer.all_steps()):
        step_dir = checkpointer.step_dir(step)
        try:
            result = restore(step_dir)
        except CheckpointMismatch:
            raise
        except Exception as e:  # noqa: BLE001 - any failure to restore makes this checkpoint unusable
            failed.append((step, step_dir, first_line(e)))
            log.error("checkpoint %d (%s) does not restore: %s", step, step_dir, failed[-1][2])
            continue
        for bad_step, bad_dir, _ in failed:
            aside = checkpointer.set_aside(bad_step)
            log.warning(
                "damaged checkpoint %d moved aside (kept, not deleted): %s -> %s; resuming from step %d instead",
                bad_step,
                bad_dir,
                aside,
                step,
            )
        return step, result
    if failed:
        raise NoRestorableCheckpoint(
            f"no checkpoint in {checkpointer.directory} restores: "
            + "; ".join(f"step {s} ({d}): {why}" for s, d, why in failed)
            + ". Resume another run's checkpoint with --resume PATH, or start over with --no-resume "
            "(which deletes them)"
        )
    return None


# --- a run: (train state, data position, key) ----------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RunPosition:
    """Where a run stands besides its train state: what an exact resume repeats from."""

    step: int  # completed training steps: the next step to run
    data: dict  # the prompt stream's state (PromptStream.get_state)
    key: jax.Array  # the run's base PRNG key (step s samples with fold_in(key, s))


def run_meta(position: RunPosition, state: TrainState, policy: Policy, *, config: dict, mesh, metrics: dict) -> dict:
    """The JSON ``meta`` of a run's checkpoint: everything besides the arrays that an exact resume (and
    ``convert``) needs."""
    return {
        "format": 1,
        "step": position.step,
        "data": position.data,
        "rng": np.asarray(jax.random.key_data(position.key)).tolist(),
        "config": config,
        "mesh": {str(k): int(v) for k, v in mesh.shape.items()},
        "process_count": jax.process_count(),
        "saved_at_unix_s": time.time(),
        "model": {
            "arch": dataclasses.asdict(policy.model.config),
            "tokenizer_dir": str(Path(policy.tokenizer_dir).absolute()),
            "eos_ids": list(policy.eos_ids),
        },
        "train": {"step": int(state.step), "skipped_updates": int(state.skipped_updates)},
        "metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float))},
    }


def _split_state(state: TrainState) -> tuple[dict, dict]:
    """The two saved items of a TrainState: the plain parameter dict, and everything else."""
    other = {"opt_state": state.opt_state, "step": state.step, "skipped_updates": state.skipped_updates}
    return nnx.to_pure_dict(state.params), other


def save_run(checkpointer: Checkpointer, position: RunPosition, state: TrainState, policy: Policy, **meta_args) -> bool:
    """Starts saving a run after ``position.step`` completed steps (in the background when async), with
    its :func:`run_meta` (``meta_args``: config, mesh, metrics) and, once, the starting model's tokenizer
    and configs (so the run converts on any machine). False, writing nothing, when the parameters or the
    optimizer state are not finite: retention then only ever keeps good checkpoints."""
    if jax.process_index() == 0:
        save_hf_assets(policy.tokenizer_dir, checkpointer.directory.parent)
    params, other = _split_state(state)
    saved = checkpointer.save(position.step, params, other, run_meta(position, state, policy, **meta_args))
    if saved:
        log.info("checkpoint: step %d -> %s", position.step, checkpointer.step_dir(position.step))
    return saved


def check_resumable(step_dir: Path, meta: dict, *, arch: dict, config: dict, model_path: str) -> None:
    """Refuses a checkpoint of another architecture; warns about every config key that changed."""
    differs = dict_changes(meta["model"]["arch"], arch)
    if differs:
        raise CheckpointMismatch(
            f"checkpoint {step_dir} holds another architecture than model.path ({model_path}): "
            + ", ".join(f"{k} {saved!r} (checkpoint) != {now!r}" for k, saved, now in differs)
        )
    changed = dict_changes(meta.get("config", {}), config)
    if changed:
        log.warning(
            "resuming with a config that differs from the checkpoint's: %s",
            "; ".join(f"{k}: {saved!r} -> {now!r}" for k, saved, now in changed),
        )


def restore_train_state(step_dir: Path, like: TrainState) -> tuple[TrainState, RunPosition]:
    """The train state of ``step_dir`` on the shardings of ``like`` (any mesh), and the run position."""
    params_like, other_like = _split_state(like)
    restored = restore_step_dir(step_dir, abstract_like(params_like), abstract_like(other_like))
    params = jax.tree.map(lambda x: x, like.params)  # a State of the same structure; ``like`` stays as it is
    nnx.replace_by_pure_dict(params, restored.params)
    other = restored.opt_state
    state = TrainState(
        params=params, opt_state=other["opt_state"], step=other["step"], skipped_updates=other["skipped_updates"]
    )
    meta = restored.meta
    key = jax.random.wrap_key_data(jnp.asarray(meta["rng"], dtype=jnp.uint32))
    return state, RunPosition(step=int(meta["step"]), data=meta["data"], key=key)


def continue_history(checkpointer: Checkpointer, step_dir: Path, step: int) -> None:
    """This run directory's history now continues from ``step``: a checkpoint of the abandoned future
    (or another run's step of the same number) must not be resumed from, or collide, later."""
    if is_remote(step_dir) or is_remote(checkpointer.directory):
        same = str(step_dir).rstrip("/") == str(checkpointer.step_dir(step))
    else:
        same = step_dir.absolute().resolve() == checkpointer.step_dir(step).resolve()
    dropped = checkpointer.delete_after(step if same else step - 1)
    if dropped:
        log.warning(
            "deleted the checkpoints %s of %s: the run continues from step %d of %s",
            dropped,
            checkpointer.directory,
            step,
            step_dir,
        )


def resume_run(
    checkpointer: Checkpointer | None,
    resume: bool | str | Path,
    like: TrainState,
    policy: Policy,
    *,
    config: dict,
    model_path: str,
) -> tuple[TrainState, RunPosition] | None:
    """Continues a run of ``policy`` (its starting model) from a checkpoint onto the layout of ``like``;
    None: start at step 0.

    ``True``: this run directory's newest checkpoint that restores, if any (newer damaged ones are
    reported and moved aside, see :func:`restore_newest_restorable`). A path: that run directory's newest
    complete checkpoint, or that checkpoint step; it must restore. ``False``: none, deleting this run's
    checkpoints.
    """
    if checkpointer is None:
        if isinstance(resume, (str, Path)):
            raise ValueError(f"--resume {resume}: checkpoint.enabled is false in this run's config")
        return None
    if resume is False:
        dropped = checkpointer.delete_after(-1)
        if dropped:
            log.warning(
                "--no-resume: deleted the checkpoints %s in %s; starting at step 0", dropped, checkpointer.directory
            )
        return None
    arch = dataclasses.asdict(policy.model.config)

    def load(step_dir: Path) -> tuple[dict, TrainState, RunPosition]:
        meta = read_meta(step_dir)
        check_resumable(step_dir, meta, arch=arch, config=config, model_path=model_path)
        return (meta, *restore_train_state(step_dir, like))

    if isinstance(resume, (str, Path)):
        step_dir = find_checkpoint(resume)
        if step_dir is None:
            raise FileNotFoundError(f"--resume {resume}: not a run directory or a checkpoint step directory")
        source = "the checkpoint given by --resume"
        try:
            meta, state, position = load(step_dir)
        except CheckpointMismatch:
            raise
        except Exception as e:  # noqa: BLE001 - whatever failed, the user named a checkpoint that does not restore
            raise ValueError(f"--resume {resume}: checkpoint {step_dir} does not restore: {first_line(e)}") from e
    else:
        found = restore_newest_restorable(checkpointer, load)
        if found is None:
            log.info("no checkpoint in %s: starting at step 0", checkpointer.directory)
            return None
        step, (meta, state, position) = found
        step_dir = checkpointer.step_dir(step)
        source = "the newest checkpoint of this run directory that restores"
    continue_history(checkpointer, step_dir, position.step)
    log.warning(
        "resuming from step %d (%s): %s, saved on mesh %s", position.step, step_dir, source, meta.get("mesh", "?")
    )
    return state, position


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
        return _jsonable(np.asarray(obj).tolist())
    if isinstance(obj, (np.integer, np.floating, np.bool_)):
        return _jsonable(obj.item())
    if isinstance(obj, float) and not np.isfinite(obj):
        return str(obj)  # JSON has no NaN/Inf
    if isinstance(obj, os.PathLike):  # a local Path or a gs:// epath.Path
        return os.fspath(obj)
    return obj
