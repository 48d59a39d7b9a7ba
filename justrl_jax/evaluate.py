"""``python -m justrl_jax.evaluate --model M --data-dir DIR``: the paper's nine-benchmark table.

Reads each benchmark from ``DIR/<Name>/test.parquet`` (the layout of JustRL's ``data/`` folder),
``DIR/<name>/test.jsonl`` or ``DIR/<name>.jsonl``, in the veRL or the MathArena schema; samples
N responses per problem (32 for AIME24/25, AMC23, HMMT25, BRUMO25, CMIMC25; 4 for MATH-500,
Minerva, OlympiadBench) at temperature 0.7, top_p 0.9, up to 31,744 new tokens; scores them with
the robust verifier; writes to ``--out``:

* ``<benchmark>.samples.jsonl``  one line per sample (problem, sample, seed, response, prediction,
  verdict, reward, length, finish reason), appended as it goes;
* ``results.md``   the paper's table (avg@N x100) and unbiased pass@k;
* ``summary.json`` the same numbers as fractions.

Re-running the same command resumes: samples already in the JSONL are kept, only the missing ones
are generated, and the final numbers equal those of an uninterrupted run. Example::

    python -m justrl_jax.evaluate --model runs/deepseek --data-dir JustRL/data --out eval/deepseek
    python -m justrl_jax.evaluate --model hbx/JustRL-DeepSeek-1.5B --data-dir data \\
        --benchmarks aime24,aime25 --n-samples 8 --max-new-tokens 4096
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m justrl_jax.evaluate",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", required=True, help="HF directory or hub id, run directory, or checkpoint step")
    p.add_argument("--data-dir", required=True, help="folder holding the benchmarks (JustRL's data/ layout)")
    p.add_argument(
        "--benchmarks", default="all", help="comma-separated, e.g. aime24,aime25,math500 (default: all nine)"
    )
    p.add_argument("--out", default=None, help="output folder (default eval/<model name>)")
    p.add_argument("--n-samples", type=int, default=None, help="samples per problem for every benchmark")
    p.add_argument("--max-new-tokens", type=int, default=31744)
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--top-p", type=float, default=0.9)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=64, help="rows (problem x sample) per generate call")
    p.add_argument(
        "--kv-cache-budget-gb",
        type=float,
        default=0.0,
        help="KV pages per device (0: plan from the device's free memory; CPU: no limit)",
    )
    p.add_argument(
        "--decode-chunk", type=int, default=0, help="(waves scheduler only) grow the dense KV cache by this many slots"
    )
    p.add_argument(
        "--max-problems", type=int, default=None, help="only the first N problems of each benchmark (smoke tests)"
    )
    p.add_argument(
        "--prompt-format",
        default="eval",
        choices=["eval", "train", "raw"],
        help="eval: 'problem Please reason...' (JustRL's evals); train: the '\\n\\n' variant",
    )
    p.add_argument("--verifier", default="robust", choices=["robust", "strict"])
    p.add_argument("--verifier-workers", type=int, default=4)
    p.add_argument(
        "--dtype",
        default="bfloat16",
        choices=["bfloat16", "float32"],
        help="compute and parameter dtype (vLLM evaluated the models in bfloat16)",
    )
    p.add_argument(
        "--mesh", default=None, help="'4x4' (fsdp x tensor) or 'fsdp=8,tensor=2'; default: all devices on fsdp"
    )
    p.add_argument("--label", default=None, help="the row label in the table (default: the model name)")
    p.add_argument(
        "--max-samples",
        type=int,
        default=None,
        help="stop after writing this many new samples (resumable; for time-limited jobs)",
    )
    p.add_argument("--log-level", default="INFO")
    return p


def _config(args):
    from justrl_jax.evaluation.benchmarks import parse_benchmarks
    from justrl_jax.evaluation.eval_config import EvalConfig
    from justrl_jax.prompts import PromptFormat
    from justrl_jax.verifier import VerifierConfig, VerifierMode

    return EvalConfig(
        benchmarks=parse_benchmarks(args.benchmarks),
        n_samples=args.n_samples,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        seed=args.seed,
        batch_size=args.batch_size,
        kv_cache_budget_gb=args.kv_cache_budget_gb,
        decode_chunk=args.decode_chunk,
        max_problems=args.max_problems,
        prompt_format=PromptFormat(args.prompt_format),
        # 1/0 rewards: a sample's reward is its correctness, so mean reward = avg@N.
        verifier=VerifierConfig(
            mode=VerifierMode(args.verifier), correct_reward=1.0, incorrect_reward=0.0, workers=args.verifier_workers
        ),
    )


def _default_out(model: str) -> Path:
    """eval/<model dir name>, or eval/<run>_step<N> for RUN/checkpoints/<N>."""
    path = Path(model)
    name = path.name
    if name.isdigit() and path.parent.name == "checkpoints":
        name = f"{path.parent.parent.name}_step{name}"
    return Path("eval") / (name or "model")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("absl").setLevel(logging.WARNING)
    try:
        cfg = _config(args)
        from justrl_jax.evaluation.benchmarks import find_benchmark_file

        for spec in cfg.specs():  # a missing file is reported before the model is loaded or compiled
            find_benchmark_file(args.data_dir, spec)
        if args.max_samples is not None and args.max_samples < 1:
            raise ValueError(f"--max-samples must be >= 1, got {args.max_samples}")
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    import jax.numpy as jnp
    from transformers import AutoTokenizer

    from justrl_jax.evaluation.report import markdown_table, pass_at_k_table
    from justrl_jax.evaluation.runner import evaluate
    from justrl_jax.model.source import load_policy
    from justrl_jax.sharding import MeshConfig, make_mesh

    mesh = make_mesh(MeshConfig.parse(args.mesh) if args.mesh else MeshConfig())
    dtype = jnp.bfloat16 if args.dtype == "bfloat16" else jnp.float32
    policy = load_policy(args.model, mesh, param_dtype=dtype, compute_dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(policy.tokenizer_dir)
    out = Path(args.out) if args.out else _default_out(args.model)
    try:
        outcome = evaluate(
            policy.model,
            tokenizer,
            cfg,
            args.data_dir,
            out,
            eos_ids=policy.eos_ids,
            mesh=mesh,
            model_name=str(args.model),
            label=args.label,
            extra_meta={"dtype": args.dtype},
            max_samples=args.max_samples,
        )
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if outcome.report is None:
        done = sum(p.found + p.generated for p in outcome.progress)
        total = sum(p.total for p in outcome.progress)
        print(
            f"stopped after {outcome.generated} new samples ({done} of {total} done); "
            f"re-run the same command to continue",
            file=sys.stderr,
        )
        return 0
    print(markdown_table(outcome.report, args.label))
    print(pass_at_k_table(outcome.report))
    print(f"written to {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
