"""``python -m justrl_jax.plot RUN_DIR [--out FILE.png]``: the paper's training-dynamics figure.

Three panels against the training step, as in JustRL's Figure 2: policy entropy, mean reward and
mean response length (with the maximum as a faint line).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from justrl_jax.metrics import read_metrics

PANELS = (
    ("actor/entropy", None, "entropy"),
    ("reward/mean", None, "mean reward"),
    ("response/length_mean", "response/length_max", "response length (tokens)"),
)


def plot_run(run_dir: str | Path, out: str | Path | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    records = read_metrics(run_dir)
    if not records:
        raise ValueError(f"{run_dir}/metrics.jsonl holds no steps yet")
    out = Path(out) if out else Path(run_dir) / "training_dynamics.png"
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
    fig.suptitle(str(Path(run_dir).name))
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m justrl_jax.plot", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--out", default=None, help="PNG path (default RUN_DIR/training_dynamics.png)")
    args = parser.parse_args(argv)
    print(plot_run(args.run_dir, args.out))


if __name__ == "__main__":
    main()
