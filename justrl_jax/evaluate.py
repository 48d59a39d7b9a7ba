"""``python -m justrl_jax.evaluate --model M --data-dir DIR``: the paper's nine-benchmark table.

Reads each benchmark from ``DIR/<Name>/test.parquet`` (the layout of JustRL's ``data/`` folder),
``DIR/<name>/test.jsonl`` or ``DIR/<name>.jsonl``, in the veRL or the MathArena schema; samples
N responses per problem (32 for AIME24/25, AMC23, HMMT25, BRUMO25, CMIMC25; 4 for MATH-500,
Minerva, OlympiadBench) at temperature 0.7, top_p 0.9, up to 31,744 new tokens; scores them with
the robust verifier (``--grader justrl``: JustRL's rule; add ``--judge MODEL`` for its model
judge over the rule's failures, the paper's protocol); writes to ``--out``:

* ``<benchmark>.samples.jsonl``  one line per sample (problem, sample, seed, response, prediction,
  verdict, reward, length, finish reason), appended as it goes;
* ``results.md``   the paper's table (avg@N x100 ± standard error) and unbiased pass@k;
* ``summary.json`` the same numbers as fractions.

Settings come from EvalConfig's defaults < ``--config FILE`` (YAML of EvalConfig keys) < the shortcut
flags (``--temperature 0.6`` is ``--set temperature=0.6``) < ``--set KEY=VALUE``.

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

from justrl_jax.config_io import add_override_flag, add_shortcut_flags, given_shortcuts, load_config
from justrl_jax.console import quiet_start
from justrl_jax.output_file import check_output

# Flags that are shortcuts for --set KEY=VALUE: (flag, config key, type, help).
_SHORTCUTS = (
    ("--benchmarks", "benchmarks", str, "comma-separated, e.g. aime24,aime25,math500, or all (default: all nine)"),
    ("--n-samples", "n_samples", int, "samples per problem for every benchmark (default: each one's N)"),
    ("--max-new-tokens", "max_new_tokens", int, "default 31744"),
    ("--temperature", "temperature", float, "default 0.7"),
    ("--top-p", "top_p", float, "default 0.9"),
    ("--seed", "seed", int, "default 0"),
    ("--batch-size", "batch_size", int, "pairs per seeded unit; decode slots when no KV budget (default 64)"),
    ("--kv-cache-budget-gb", "kv_cache_budget_gb", float, "KV GiB per device; 0: plan from the device (default)"),
    ("--max-concurrent-rows", "max_concurrent_rows", int, "decode slots (0: as many as the KV budget holds)"),
    ("--decode-chunk", "decode_chunk", int, "waves scheduler only: grow the dense KV cache this many slots at a time"),
    ("--max-problems", "max_problems", int, "only the first N problems of each benchmark (smoke tests)"),
    ("--prompt-format", "prompt_format", str, "eval (default): 'problem Please reason...'; train: the '\\n\\n' one"),
    (
        ("--grader", "--verifier"),
        "verifier.mode",
        str,
        "robust (default), justrl (JustRL's evaluation rule; with --judge the paper's two stages) or strict",
    ),
    ("--verifier-workers", "verifier.workers", int, "default 4"),
)

# The command's own defaults over EvalConfig's: 1/0 rewards, so a sample's reward is its correctness
# and the mean reward is avg@N.
_BASE = {"verifier": {"mode": "robust", "correct_reward": 1.0, "incorrect_reward": 0.0, "workers": 4}}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m justrl_jax.evaluate",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", required=True, help="HF directory or hub id, run directory, or checkpoint step")
    p.add_argument("--data-dir", required=True, help="folder holding the benchmarks (JustRL's data/ layout)")
    p.add_argument("--out", default=None, help="output folder (default eval/<model name>)")
    p.add_argument(
        "--config", default=None, help="YAML file of EvalConfig keys (benchmarks, n_samples, temperature, ...)"
    )
    add_override_flag(p, "top_k=20 or --set verifier.workers=8")
    add_shortcut_flags(p, _SHORTCUTS)
    p.add_argument(
        "--judge",
        default=None,
        help="with --grader justrl: a judge model (HF dir or hub id; the paper: opencompass/CompassVerifier-3B) "
        "asked about every sample the rule rejects, greedy, 2,048 tokens; resumable",
    )
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

    shortcuts = given_shortcuts(args, _SHORTCUTS)
    if "benchmarks" in shortcuts:
        shortcuts["benchmarks"] = list(parse_benchmarks(shortcuts["benchmarks"]))
    return load_config(EvalConfig, args.config, args.overrides, base=_BASE, shortcuts=shortcuts)


def _default_out(model: str) -> Path:
    """eval/<model dir name>, or eval/<run>_step<N> for RUN/checkpoints/<N>."""
    from justrl_jax.storage import run_path

    path = run_path(model)
    name = path.name
    if name.isdigit() and path.parent.name == "checkpoints":
        name = f"{path.parent.parent.name}_step{name}"
    return Path("eval") / (name or "model")


def main(argv: list[str] | None = None) -> int:
    quiet_start()  # before JAX or transformers can print their false advisories
    args = _parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("absl").setLevel(logging.WARNING)
    try:
        from justrl_jax.storage import check_location

        check_location(args.model, "--model")  # a bucket that cannot be used: one line, exit 2
        cfg = _config(args)
        from justrl_jax.evaluation.runner import load_benchmarks
        from justrl_jax.model.source import check_model

        # Every benchmark file is found and read, and the model described, before it loads or compiles.
        load_benchmarks(args.data_dir, cfg.specs(), max_problems=cfg.max_problems)
        if args.max_samples is not None and args.max_samples < 1:
            raise ValueError(f"--max-samples must be >= 1, got {args.max_samples}")
        if args.judge is not None and cfg.verifier.mode.value != "justrl":
            raise ValueError(
                f"--judge is the second stage of --grader justrl, not of --grader {cfg.verifier.mode.value}"
            )
        out = Path(args.out) if args.out else _default_out(args.model)
        # The out folder is a resumable store (existing samples are kept and reused), never an input.
        check_output(out, [args.data_dir, args.model], overwrite=True, flag="--out", directory=True)
        check_model(args.model)
    except (ValueError, FileNotFoundError, IsADirectoryError, NotADirectoryError) as e:
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
    try:
        policy = load_policy(args.model, mesh, param_dtype=dtype, compute_dtype=dtype)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    tokenizer = AutoTokenizer.from_pretrained(policy.tokenizer_dir)
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
    if args.judge is not None:
        del policy
        return _judge(args, cfg, mesh, out, outcome.report)
    print(markdown_table(outcome.report, args.label))
    print(pass_at_k_table(outcome.report))
    print(f"written to {out}", file=sys.stderr)
    return 0


def _judge(args, cfg, mesh, out: Path, report) -> int:
    """The judge pass over the rule's failures, then the table with both rows."""
    from justrl_jax.evaluation.judge import Judge, judge_benchmarks, judged_report
    from justrl_jax.evaluation.report import markdown_rows, write_report

    judge = Judge.load(
        args.judge, mesh=mesh, dtype=args.dtype, batch_size=cfg.batch_size, kv_cache_budget_gb=cfg.kv_cache_budget_gb
    )
    specs = cfg.specs()
    judge_benchmarks(judge, out, [s.name for s in specs])
    judged = judged_report(report, specs, out)
    write_report(report, out, args.label, judged=judged)
    name = args.label or report.model
    print(markdown_rows([(f"{name} (rule only)", report), (f"{name} (rule + judge)", judged)], stderr=True))
    print(f"written to {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
