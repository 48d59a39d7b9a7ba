"""``python -m justrl_jax.convert RUN_DIR [--step N] --out HF_DIR [--dtype bfloat16|float32]``.

Writes a checkpoint as a directory transformers loads: weights (safetensors), config.json,
generation_config.json and the tokenizer of the model the run started from. ``RUN_DIR`` may also be
one checkpoint step directory (``RUN_DIR/checkpoints/<step>``); either, and ``HF_DIR``, may be ``gs://``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from justrl_jax.checkpoint import checkpoint_dir, complete_steps, is_complete
from justrl_jax.console import quiet_start
from justrl_jax.output_file import atomic_dir, check_output
from justrl_jax.storage import check_location, run_path


def checkpoint_to_convert(run_dir: str | Path, step: int | None = None) -> Path:
    """The step directory ``convert`` reads: ``step`` of ``run_dir``, or its newest complete one."""
    from justrl_jax.checkpoint import find_checkpoint

    run_dir = run_path(run_dir)
    if step is None:
        step_dir = find_checkpoint(run_dir)
        if step_dir is None:
            raise FileNotFoundError(f"{run_dir} is neither a run directory nor a checkpoint step directory")
        return step_dir
    if is_complete(run_dir):
        raise ValueError(f"--step {step} needs a run directory, but {run_dir} is already one checkpoint step")
    step_dir = checkpoint_dir(run_dir) / str(step)
    if not is_complete(step_dir):
        raise FileNotFoundError(
            f"{run_dir} has no complete checkpoint at step {step}; available: {complete_steps(run_dir)}"
        )
    return step_dir


def convert(
    run_dir: str | Path,
    out: str | Path,
    *,
    step: int | None = None,
    dtype: str = "bfloat16",
    overwrite: bool = False,
) -> Path:
    """Exports one checkpoint of ``run_dir`` (default: the newest complete) as an HF directory ``out``.

    ``out`` must not overlap the checkpoint or the tokenizer it reads, nor exist (unless ``overwrite``:
    then it is replaced as a whole, so no stale shard or index of an older export survives). The export
    is written next to it and renamed into place at the end: a failure leaves ``out`` as it was.
    """
    from justrl_jax.model.hf_io import export_hf_model
    from justrl_jax.model.source import load_policy, tokenizer_dir_of

    if dtype not in ("bfloat16", "float32"):
        raise ValueError(f"dtype must be 'bfloat16' or 'float32', got {dtype!r}")
    step_dir = checkpoint_to_convert(run_dir, step)
    check_output(out, [step_dir, tokenizer_dir_of(step_dir)], overwrite=overwrite, flag="--out", directory=True)
    policy = load_policy(step_dir)
    gen_path = policy.tokenizer_dir / "generation_config.json"
    gen = json.loads(gen_path.read_text()) if gen_path.exists() else {}
    # The EOS ids the run sampled with are the ones that end a response.
    eos = list(policy.eos_ids)
    gen["eos_token_id"] = eos if len(eos) > 1 else eos[0]
    with atomic_dir(out) as tmp:
        export_hf_model(policy.model, tmp, dtype=dtype, source_dir=policy.tokenizer_dir, generation_config=gen)
    return run_path(out)


def main(argv: list[str] | None = None) -> int:
    quiet_start()  # before JAX or transformers can print their false advisories
    parser = argparse.ArgumentParser(prog="python -m justrl_jax.convert", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", help="a run directory (newest checkpoint) or one checkpoint step directory")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: the newest)")
    parser.add_argument("--out", required=True, help="output HF directory")
    parser.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out directory as a whole")
    args = parser.parse_args(argv)
    try:
        check_location(args.run_dir, "RUN_DIR")  # a bucket that cannot be used: one line now, exit 2
        check_location(args.out, "--out")
        step_dir = checkpoint_to_convert(args.run_dir, args.step)
        out = convert(step_dir, args.out, dtype=args.dtype, overwrite=args.overwrite)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out} (from {step_dir}, {args.dtype})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
