"""``python -m justrl_jax.generate --model M --prompts IN.jsonl --output OUT.jsonl``: sample completions.

Each input line holds ``prompt`` (text; the tokenizer's chat template is applied when it has one,
``--raw`` sends the text as it is) or ``prompt_ids`` (token ids, used as given); other fields pass
through. Each output line adds ``n`` samples: ``completion`` (text), ``completion_ids``,
``logprobs`` (per token, under the sampling policy) and ``finish_reason`` (``stop`` or ``length``).

Settings come from the defaults < ``--config FILE`` (YAML of :class:`GenerateConfig` keys) < the
shortcut flags (``--temperature 0.7`` is ``--set temperature=0.7``) < ``--set KEY=VALUE``.

All prompts stream through one continuous-batching scheduler: ``--max-concurrent-rows`` decode slots,
each refilled with the next pending sample as soon as its row ends; output lines keep the input order.
(``--scheduler waves`` runs the static waves, ``--batch-size`` prompts per call.) Example::

    python -m justrl_jax.generate --model deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B \\
        --prompts problems.jsonl --output samples.jsonl --n 8 --temperature 0.7 --top-p 0.9
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import ClassVar

from justrl_jax.config_io import add_override_flag, add_shortcut_flags, given_shortcuts, load_config
from justrl_jax.console import quiet_start
from justrl_jax.output_file import atomic_file, check_output
from justrl_jax.sampling_settings import SamplingSettings


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


@dataclasses.dataclass(frozen=True)
class GenerateConfig(SamplingSettings):
    """What ``generate`` samples (the sampling keys are SamplingSettings') and how it batches the prompts.

    n: samples per prompt; seed: the run's sampling seed; raw: text prompts go in as they are (no chat
    template); batch_size: prompts per generate call; prompt_bucket: prompts are left-padded to a
    multiple of this; dtype: compute dtype.
    """

    section: ClassVar[str] = "generate"

    n: int = 1
    seed: int = 0
    raw: bool = False
    batch_size: int = 64
    prompt_bucket: int = 64
    dtype: str = "float32"
    max_concurrent_rows: int = 128
    scheduler: str = "continuous"
    steps_per_call: int = 16

    def __post_init__(self):
        super().__post_init__()
        for name in ("n", "batch_size", "prompt_bucket", "steps_per_call"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"generate.{name} must be an integer >= 1, got {value!r}")
        if self.scheduler not in ("continuous", "waves"):
            raise ValueError(f"generate.scheduler must be continuous or waves, got {self.scheduler!r}")
        if self.dtype not in ("float32", "bfloat16"):
            raise ValueError(f"generate.dtype must be float32 or bfloat16, got {self.dtype!r}")


# Flags that are shortcuts for --set KEY=VALUE: (flag, config key, type, help).
_SHORTCUTS = (
    ("--n", "n", int, "samples per prompt"),
    ("--temperature", "temperature", float, "default 1.0"),
    ("--top-p", "top_p", float, "default 1.0"),
    ("--top-k", "top_k", int, "-1: off (default)"),
    ("--max-new-tokens", "max_new_tokens", int, "default 1024"),
    ("--greedy", "greedy", bool, "the most likely token at every step"),
    ("--seed", "seed", int, "default 0"),
    ("--raw", "raw", bool, "do not apply the chat template to text prompts"),
    ("--max-concurrent-rows", "max_concurrent_rows", int, "decode slots: rows decoded at once (default 128)"),
    ("--steps-per-call", "steps_per_call", int, "decode steps per device call between refills (default 16)"),
    ("--scheduler", "scheduler", str, "continuous (default): one stream of every prompt; waves: --batch-size"),
    ("--batch-size", "batch_size", int, "(waves) prompts per generate call (default 64)"),
    ("--prompt-bucket", "prompt_bucket", int, "prompts are left-padded to a multiple of this (default 64)"),
    ("--kv-cache-budget-gb", "kv_cache_budget_gb", float, "KV-cache GiB per device (0: plan from the device)"),
    ("--decode-chunk", "decode_chunk", int, "grow the KV cache by this many tokens at a time (0: allocate it whole)"),
    ("--dtype", "dtype", str, "float32 (default) or bfloat16"),
)


def _prompt_ids(row: dict, tokenizer, raw: bool, chat_text) -> list[int]:
    """The token ids of one prompt line: ``prompt_ids`` as given, else the (templated) text encoded."""
    if "prompt_ids" in row:
        return list(row["prompt_ids"])
    text = row["prompt"] if raw or not tokenizer.chat_template else chat_text(tokenizer, row["prompt"])
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m justrl_jax.generate",
        description=__doc__.splitlines()[0],
        epilog="Settings: the defaults < --config FILE < the shortcut flags < --set KEY=VALUE.",
    )
    p.add_argument("--model", required=True, help="HF directory, hub id, run directory or checkpoint step")
    p.add_argument("--prompts", required=True, type=Path)
    p.add_argument("--output", required=True, type=Path)
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    p.add_argument("--config", default=None, help="YAML file of GenerateConfig keys (temperature, n, ...)")
    add_override_flag(p, "top_p=0.9")
    add_shortcut_flags(p, _SHORTCUTS)
    p.add_argument("--mesh", default=None, help="e.g. 4x4; default: one device")
    return p


def load_generate_config(args: argparse.Namespace) -> GenerateConfig:
    return load_config(GenerateConfig, args.config, args.overrides, shortcuts=given_shortcuts(args, _SHORTCUTS))


def main(argv: list[str] | None = None) -> int:
    quiet_start()  # before JAX or transformers can print their false advisories
    args = _parser().parse_args(argv)
    try:  # settings and prompts are checked before the model is loaded
        from justrl_jax.storage import check_location

        check_location(args.model, "--model")  # a bucket that cannot be used: one line, exit 2
        cfg = load_generate_config(args)
        rows = read_prompt_lines(args.prompts)
        sampler_config = dataclasses.replace(
            cfg.sampler_config(prompt_bucket=cfg.prompt_bucket),
            scheduler=cfg.scheduler,
            steps_per_call=cfg.steps_per_call,
        )
        check_output(args.output, [args.prompts], overwrite=args.overwrite)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    import jax
    import jax.numpy as jnp
    import numpy as np
    from transformers import AutoTokenizer

    from justrl_jax.data import chat_text, collate
    from justrl_jax.global_arrays import to_host
    from justrl_jax.model.source import describe_model, load_policy
    from justrl_jax.prompts import PromptExample
    from justrl_jax.sampler import FinishReason, Sampler
    from justrl_jax.sharding import make_mesh

    try:  # settings, the model's description and every prompt are checked before the weights load
        arch, tokenizer_dir = describe_model(args.model)
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
        token_ids = [_prompt_ids(row, tokenizer, cfg.raw, chat_text) for _, row in rows]
        vocab = arch.vocab_size
        for (number, _), ids in zip(rows, token_ids, strict=True):
            if not ids or max(ids) >= vocab:
                raise ValueError(
                    f"{args.prompts}: line {number}: the prompt is empty or holds a token id outside the "
                    f"model's vocabulary (size {vocab}); fix that line"
                )
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    mesh = make_mesh(args.mesh) if args.mesh else None
    dtype = jnp.bfloat16 if cfg.dtype == "bfloat16" else jnp.float32
    try:
        policy = load_policy(args.model, mesh, compute_dtype=dtype)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else policy.eos_ids[0]
    rows = [row for _, row in rows]
    sampler = Sampler(policy.model, sampler_config, mesh=mesh, eos_ids=policy.eos_ids, pad_id=int(pad_id))
    key = jax.random.key(cfg.seed)
    # Written under a temporary name: a failure leaves an existing --output as it was.
    with atomic_file(args.output) as out:
        per_call = cfg.batch_size if cfg.scheduler == "waves" else len(rows)  # continuous: one scheduler
        for start in range(0, len(rows), per_call):
            chunk = list(range(start, min(start + per_call, len(rows))))
            examples = [PromptExample(problem=str(i), gold="") for i in chunk]
            batch = collate(examples, [token_ids[i] for i in chunk], int(pad_id), bucket_multiple=cfg.prompt_bucket)
            rollout = sampler.generate(
                policy.model,
                batch.prompt_ids,
                batch.prompt_mask,
                n=cfg.n,
                key=jax.random.fold_in(key, start),
                logprobs=True,
            )
            logprobs = to_host(rollout.logprobs)
            for j, i in enumerate(chunk):
                samples = []
                for s in range(cfg.n):
                    r = j * cfg.n + s
                    n_tok = int(rollout.lengths[r])
                    ids = [int(t) for t in np.asarray(rollout.completion_ids[r, :n_tok])]
                    samples.append(
                        {
                            "completion": tokenizer.decode(ids, skip_special_tokens=True),
                            "completion_ids": ids,
                            "logprobs": [round(float(x), 6) for x in logprobs[r, :n_tok]],
                            "finish_reason": "stop" if rollout.finish[r] == FinishReason.EOS else "length",
                        }
                    )
                out.write(json.dumps({**rows[i], "prompt_token_ids": token_ids[i], "samples": samples}) + "\n")
    if cfg.scheduler == "continuous":
        stats = sampler.stats
        rates = stats.as_metrics()
        print(
            f"{stats.slots} slots: occupancy {stats.slot_occupancy:.2f}, {stats.preemptions} preemptions, "
            f"prefill {rates['perf/prefill_tokens_per_s']:.0f} tokens/s, "
            f"decode {rates['perf/decode_tokens_per_s']:.0f} tokens/s",
            file=sys.stderr,
        )
    print(f"wrote {len(rows)} prompts x {cfg.n} samples to {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
