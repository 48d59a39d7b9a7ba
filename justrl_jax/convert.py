"""``python -m justrl_jax.convert RUN_DIR [--step N] --out HF_DIR [--dtype bfloat16|float32]``.

Writes a checkpoint as a directory transformers loads: weights (safetensors), config.json,
generation_config.json and the tokenizer of the model the run started from.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from justrl_jax.checkpoint import checkpoint_dir


def convert(run_dir: str | Path, out: str | Path, *, step: int | None = None, dtype: str = "bfloat16") -> Path:
    from justrl_jax.hf_io import export_hf_model
    from justrl_jax.model_source import find_checkpoint, load_policy

    run_dir = Path(run_dir)
    if step is not None:
        step_dir = checkpoint_dir(run_dir) / str(step)
        if not (step_dir / "meta" / "metadata").exists():
            available = sorted(int(p.name) for p in checkpoint_dir(run_dir).glob("*") if p.name.isdigit())
            raise FileNotFoundError(f"{run_dir} has no complete checkpoint at step {step}; available: {available}")
    else:
        step_dir = find_checkpoint(run_dir)
        if step_dir is None:
            raise FileNotFoundError(f"{run_dir} is neither a run directory nor a checkpoint step directory")
    policy = load_policy(step_dir)
    gen_path = policy.tokenizer_dir / "generation_config.json"
    gen = json.loads(gen_path.read_text()) if gen_path.exists() else {"eos_token_id": list(policy.eos_ids)}
    return export_hf_model(policy.model, out, dtype=dtype, source_dir=policy.tokenizer_dir, generation_config=gen)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m justrl_jax.convert", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", help="a run directory (newest checkpoint) or one checkpoint step directory")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: the newest)")
    parser.add_argument("--out", required=True, help="output HF directory")
    parser.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16")
    args = parser.parse_args(argv)
    out = convert(args.run_dir, args.out, step=args.step, dtype=args.dtype)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
