"""``python -m justrl_jax.plot RUN_DIR [--out FILE.png]``: the paper's training-dynamics figure.

Three panels against the training step, as in JustRL's Figure 2: policy entropy, mean reward and
mean response length (with the maximum as a faint line).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from justrl_jax.metrics import read_metrics
from justrl_jax.output_file import atomic_file, check_output
from justrl_jax.storage import check_location, run_path

PANELS = (
    ("actor/entropy", None, "entropy"),
    ("reward/mean", None, "mean reward"),
    ("response/length_mean", "response/length_max", "response length (tokens)"),
)


def plot_run(run_dir: str | Path, out: str | Path | None = None, *, overwrite: bool = False) -> Path:
    """Draws the figure of ``run_dir`` into ``out`` (default ``RUN_DIR/training_dynamics.png``); an
    existing ``out`` is replaced only when ``overwrite``, and only once the new figure is complete."""
    run_dir = run_path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory {run_dir} does not exist")
    records = read_metrics(run_dir)
    if not records:
        raise ValueError(f"{run_dir / 'metrics.jsonl'} holds no steps yet; plot once the run has logged one")
    out = run_path(out) if out else run_dir / "training_dynamics.png"
    check_output(out, [run_dir / "metrics.jsonl"], overwrite=overwrite, flag="--out")

    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(PANELS), figsize=(5 * len(PANELS), 3.6))
    for ax, (key, extra, title) in zip(axes, PANELS, strict=True):
        for k, style in ((key, "-"), (extra, ":")):
            points = [(r["step"], r[k]) for r in records if k and isinstance(r.get(k), (int, float))]
            if points:
                xs, ys = zip(*points, strict=True)
                ax.plot(xs, ys, style, label=k)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.suptitle(str(run_dir.name))
    fig.tight_layout()
    with atomic_file(out, "wb") as f:
        fig.savefig(f, dpi=120, format="png")
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m justrl_jax.plot", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--out", default=None, help="PNG path (default RUN_DIR/training_dynamics.png)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    args = parser.parse_args(argv)
    try:
        check_location(args.run_dir, "RUN_DIR")
        check_location(args.out or "", "--out")
        print(plot_run(args.run_dir, args.out, overwrite=args.overwrite))
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
