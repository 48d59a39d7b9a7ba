"""Weights & Biases logging of a run (optional: ``pip install -e ".[wandb]"``), where JustRL's curves are.

With ``loop.wandb.project`` set, process 0 logs every record it writes to ``metrics.jsonl`` (same keys,
same step), the resolved run config, and at the end the training-dynamics figure. The W&B run id is
kept in ``RUN_DIR/wandb_run_id``, so a resumed run continues the same W&B run. Steps a killed run logged
after its last checkpoint are logged again by the resumed run; W&B keeps the first value of a step
(a resume is exact, so they are the same numbers, timings aside). ``WANDB_MODE=offline`` (no account,
no network) writes the run under ``RUN_DIR/wandb/`` (``WANDB_DIR`` or the working directory for a
``gs://`` run directory) for a later ``wandb sync``.

Example::

    loop:
      wandb: {project: justrl-repro, entity: my-team, name: deepseek-1p5b, tags: [grpo, deepseek]}
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import secrets
import string
import tempfile
from pathlib import Path

from justrl_jax.storage import is_remote, run_path

ID_FILE = "wandb_run_id"
_FORBIDDEN = set("/\\#?%:")  # characters W&B refuses in a project name
_MAX_TAG = 64  # W&B's limit on a tag's length


def require_wandb(what: str) -> None:
    """A one-line error, before anything compiles, when W&B is asked for but not installed."""
    if importlib.util.find_spec("wandb") is None:
        raise ValueError(f"{what} is set but wandb is not installed: pip install -e '.[wandb]' (or unset it)")


@dataclasses.dataclass(frozen=True)
class WandbConfig:
    """Where a run is logged in Weights & Biases; off while ``project`` is empty.

    entity: team or user (default: the API key's); name: the run's display name (default: W&B's);
    tags: labels to filter runs by.
    """

    project: str = ""
    entity: str = ""
    name: str = ""
    tags: tuple[str, ...] = ()

    def __post_init__(self):
        for key in ("project", "entity", "name"):
            if not isinstance(getattr(self, key), str):
                raise ValueError(f"loop.wandb.{key} must be a string, got {getattr(self, key)!r}")
        bad = sorted(_FORBIDDEN & set(self.project))
        if bad:
            raise ValueError(f"loop.wandb.project {self.project!r} holds {''.join(bad)!r}, which W&B does not allow")
        tags_ok = all(isinstance(t, str) and 0 < len(t) <= _MAX_TAG for t in self.tags)
        if not isinstance(self.tags, tuple) or not tags_ok:
            raise ValueError(f"loop.wandb.tags must be a list of non-empty strings of <= {_MAX_TAG} characters")
        if not self.project and (self.entity or self.name or self.tags):
            raise ValueError("loop.wandb.entity, name and tags need loop.wandb.project (W&B is off without it)")
        if self.project:
            require_wandb("loop.wandb.project")

    @property
    def enabled(self) -> bool:
        return bool(self.project)


def _loggable(record: dict) -> dict:
    """The numeric entries of a metrics record (non-finite values, stored as text in the JSONL, as floats)."""
    out = {}
    for key, value in record.items():
        if key == "step" or isinstance(value, bool):
            continue
        if isinstance(value, (int, float)):
            out[key] = value
        elif value in ("nan", "inf", "-inf"):
            out[key] = math.nan if value == "nan" else float(value)
    return out


class WandbRun:
    """One run's W&B run: started (or continued, by the id kept in the run directory) on creation."""

    def __init__(self, config: WandbConfig, run_dir, resolved_config: dict, *, resumed: bool):
        """``resumed``: the run continues from a checkpoint (then the W&B run of the kept id continues);
        a run that starts at step 0 rewrites its history, so it starts a new W&B run."""
        import wandb

        run_dir = run_path(run_dir)
        id_path = run_dir / ID_FILE
        run_id = id_path.read_text().strip() if resumed and id_path.exists() else ""
        if not run_id:
            run_id = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))  # W&B's form
            id_path.write_text(run_id + "\n")
        self.run_dir = run_dir
        self.run = wandb.init(
            project=config.project,
            entity=config.entity or None,
            name=config.name or None,
            tags=list(config.tags) or None,
            id=run_id,
            resume="allow",  # the same id continues the same W&B run
            config=resolved_config,
            dir=None if is_remote(run_dir) else str(run_dir),  # W&B writes its own files locally
        )

    @property
    def id(self) -> str:
        return self.run.id

    def log(self, step: int, record: dict) -> None:
        self.run.log(_loggable(record), step=int(step))

    def log_plot(self) -> None:
        """The training-dynamics figure of the run (as ``plot`` draws it) as an image of the W&B run."""
        import wandb

        from justrl_jax.plot import plot_run

        with tempfile.TemporaryDirectory() as local:
            png = plot_run(self.run_dir, Path(local) / "training_dynamics.png")
            self.run.log({"training_dynamics": wandb.Image(str(png))})

    def close(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None
