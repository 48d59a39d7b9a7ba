"""``python -m justrl_jax.generate --model M --prompts IN.jsonl --output OUT.jsonl``: sample completions.

Each input line holds ``prompt`` (text; the tokenizer's chat template is applied when it has one,
``--raw`` sends the text as it is) or ``prompt_ids`` (token ids, used as given); other fields pass
through. Each output line adds ``n`` samples: ``completion`` (text), ``completion_ids``,
``logprobs`` (per token, under the sampling policy) and ``finish_reason`` (``stop`` or ``length``).

All prompts stream through one continuous-batching scheduler: ``--max-concurrent-rows`` decode slots,
each refilled with the next pending sample as soon as its row ends; output lines keep the input order.
(``--scheduler waves`` runs the old static waves, ``--batch-size`` prompts per call.)

Example::

    python -m justrl_jax.generate --model deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B \\
        --prompts problems.jsonl --output samples.jsonl --n 8 --temperature 0.7 --top-p 0.9
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def read_prompt_lines(path: Path) -> list[tuple[int, dict]]:
    """Parses the prompt file into (line number, object) pairs; a bad line is an error naming its number."""
    if not path.exists():
        raise FileNotFoundError(f"prompts file {path} does not exist")
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: line {number}: not valid JSON ({e.msg})") from e
        if not isinstance(row, dict):
            raise ValueError(f"{path}: line {number}: expected a JSON object")
        has_text, has_ids = isinstance(row.get("prompt"), str), "prompt_ids" in row
        if has_text == has_ids:
            raise ValueError(f"{path}: line {number}: give exactly one of 'prompt' (text) or 'prompt_ids'")
        if has_ids and not (
            isinstance(row["prompt_ids"], list)
            and row["prompt_ids"]
            and all(isinstance(t, int) and t >= 0 for t in row["prompt_ids"])
        ):
            raise ValueError(f"{path}: line {number}: 'prompt_ids' must be a non-empty list of token ids")
        rows.append((number, row))
    if not rows:
        raise ValueError(f"{path}: no prompts")
    return rows


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m justrl_jax.generate", description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="HF directory, hub id, run directory or checkpoint step")
    p.add_argument("--prompts", required=True, type=Path)
    p.add_argument("--output", required=True, type=Path)
    p.add_argument("--n", type=int, default=1, help="samples per prompt")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=-1)
    p.add_argument("--max-new-tokens", type=int, default=1024)
    p.add_argument("--greedy", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--raw", action="store_true", help="do not apply the chat template to text prompts")
    p.add_argument("--max-concurrent-rows", type=int, default=128, help="decode slots (rows decoded at once)")
    p.add_argument("--steps-per-call", type=int, default=16, help="decode steps per device call between refills")
    p.add_argument("--scheduler", choices=("continuous", "waves"), default="continuous")
    p.add_argument("--batch-size", type=int, default=64, help="(waves) prompts per generate call")
    p.add_argument("--prompt-bucket", type=int, default=64, help="prompts are left-padded to a multiple of this")
    p.add_argument(
        "--kv-cache-budget-gb",
        type=float,
        default=0.0,
        help="KV-cache GiB per device (0: plan from the device's free memory; no limit where it reports none)",
    )
    p.add_argument(
        "--decode-chunk",
        type=int,
        default=0,
        help="grow the KV cache by this many tokens at a time (0: allocate it whole)",
    )
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="compute dtype")
    p.add_argument("--mesh", default=None, help="e.g. 4x4; default: one device")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    counts = (args.n, args.max_new_tokens, args.batch_size, args.prompt_bucket, args.max_concurrent_rows)
    if min(*counts, args.steps_per_call) < 1:
        print(
            "error: --n, --max-new-tokens, --batch-size, --prompt-bucket, --max-concurrent-rows and "
            "--steps-per-call must be >= 1",
            file=sys.stderr,
        )
        return 2
    if args.kv_cache_budget_gb < 0 or args.decode_chunk < 0:
        print("error: --kv-cache-budget-gb and --decode-chunk must be >= 0", file=sys.stderr)
        return 2
    try:
        rows = read_prompt_lines(args.prompts)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    import jax
    import jax.numpy as jnp
    import numpy as np
    from transformers import AutoTokenizer

    from justrl_jax.data import chat_text, collate
    from justrl_jax.kv_budget import kv_cache_budget_bytes
    from justrl_jax.model.source import load_policy
    from justrl_jax.prompts import PromptExample
    from justrl_jax.sampler import FinishReason, Sampler, SamplerConfig
    from justrl_jax.sampling import strategy_for
    from justrl_jax.sharding import make_mesh

    try:  # settings are checked before the model is loaded
        strategy = strategy_for(args.temperature, args.top_p, args.top_k, greedy=args.greedy)
        config = SamplerConfig(
            max_new_tokens=args.max_new_tokens,
            strategy=strategy,
            prompt_bucket=args.prompt_bucket,
            kv_cache_budget_bytes=kv_cache_budget_bytes(args.kv_cache_budget_gb),
            decode_chunk=args.decode_chunk,
            scheduler=args.scheduler,
            max_concurrent_rows=args.max_concurrent_rows,
            steps_per_call=args.steps_per_call,
        )
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    mesh = make_mesh(args.mesh) if args.mesh else None
    dtype = jnp.bfloat16 if args.dtype == "bfloat16" else jnp.float32
    policy = load_policy(args.model, mesh, compute_dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(policy.tokenizer_dir)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else policy.eos_ids[0]
    token_ids = []
    vocab = policy.model.config.vocab_size
    for number, row in rows:
        if "prompt_ids" in row:
            ids = list(row["prompt_ids"])
        else:
            text = row["prompt"] if args.raw or not tokenizer.chat_template else chat_text(tokenizer, row["prompt"])
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if not ids or max(ids) >= vocab:
            print(
                f"error: {args.prompts}: line {number}: the prompt is empty or holds a token id outside the "
                f"model's vocabulary (size {vocab})",
                file=sys.stderr,
            )
            return 2
        token_ids.append(ids)
    rows = [row for _, row in rows]
    sampler = Sampler(policy.model, config, mesh=mesh, eos_ids=policy.eos_ids, pad_id=int(pad_id))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    key = jax.random.key(args.seed)
    with args.output.open("w", encoding="utf-8") as out:
        per_call = args.batch_size if args.scheduler == "waves" else len(rows)  # continuous: one scheduler
        for start in range(0, len(rows), per_call):
            chunk = list(range(start, min(start + per_call, len(rows))))
            examples = [PromptExample(problem=str(i), gold="") for i in chunk]
            batch = collate(examples, [token_ids[i] for i in chunk], int(pad_id), bucket_multiple=args.prompt_bucket)
            rollout = sampler.generate(
                policy.model, batch.prompt_ids, batch.prompt_mask, n=args.n, key=jax.random.fold_in(key, start)
            )
            for j, i in enumerate(chunk):
                samples = []
                for s in range(args.n):
                    r = j * args.n + s
                    n_tok = int(rollout.lengths[r])
                    ids = [int(t) for t in np.asarray(rollout.completion_ids[r, :n_tok])]
                    samples.append(
                        {
                            "completion": tokenizer.decode(ids, skip_special_tokens=True),
                            "completion_ids": ids,
                            "logprobs": [round(float(x), 6) for x in rollout.logprobs[r, :n_tok]],
                            "finish_reason": "stop" if rollout.finish[r] == FinishReason.EOS else "length",
                        }
                    )
                out.write(json.dumps({**rows[i], "prompt_token_ids": token_ids[i], "samples": samples}) + "\n")
    if args.scheduler == "continuous":
        stats = sampler.stats
        print(
            f"{stats.slots} slots: occupancy {stats.slot_occupancy:.2f}, {stats.preemptions} preemptions, "
            f"prefill {stats.as_metrics()['rollout/prefill_tokens_per_s']:.0f} tokens/s, "
            f"decode {stats.as_metrics()['rollout/decode_tokens_per_s']:.0f} tokens/s",
            file=sys.stderr,
        )
    print(f"wrote {len(rows)} prompts x {args.n} samples to {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
