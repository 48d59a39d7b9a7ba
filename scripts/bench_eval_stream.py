"""Evaluation wall time: one scheduler stream (``run_benchmarks``) against one generate call per unit (the
layout before the stream: each unit of ``--batch-size`` pairs waits for its slowest sample), same sampler.

A random tiny Qwen2 that also stops on ``--extra-eos`` ordinary tokens, so response lengths are long-tailed
up to ``--max-new-tokens``; ``--problems`` x ``--samples`` rows. Both paths run twice on the same compiled
sampler and the second run is timed (the stream compiles more prefill buckets, once). Both are checked to
give the same samples and verdicts.

    python scripts/bench_eval_stream.py --samples 64 --max-new-tokens 256
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import numpy as np
from flax import nnx

from justrl_jax.data import collate, encode_examples
from justrl_jax.evaluation.benchmarks import get_benchmark
from justrl_jax.evaluation.eval_config import EvalConfig
from justrl_jax.evaluation.runner import Benchmark, _Budget, eval_generator, plan_units, plan_work, run_benchmarks
from justrl_jax.model.qwen2 import Qwen2, Qwen2Config
from justrl_jax.model.tiny_tokenizer import ChatStyle, generation_eos_ids, make_tiny_tokenizer
from justrl_jax.prompts import PromptExample
from justrl_jax.verifier import Verifier, VerifierConfig, VerifierMode


def _per_unit(generator, params, verifier, bench, cfg):
    token_ids = encode_examples(generator.tokenizer, bench.examples, cfg.prompt_format)
    out = []
    for unit in plan_units(bench.spec.name, len(bench.examples), bench.spec.n_samples, cfg.batch_size, cfg.seed):
        examples = [bench.examples[i] for i, _ in unit.pairs]
        batch = collate(examples, [token_ids[i] for i, _ in unit.pairs], generator.pad_id, bucket_multiple=64)
        rollout = generator.sampler.generate(params, batch.prompt_ids, batch.prompt_mask, n=1, key=unit.seed)
        ids = [row[:n] for row, n in zip(rollout.completion_ids, rollout.lengths, strict=True)]
        texts = generator.tokenizer.batch_decode(ids, skip_special_tokens=True)
        pending = verifier.submit(texts, [e.gold for e in examples], response_lengths=rollout.lengths.tolist())
        out.append((unit.pairs, texts, rollout.lengths.tolist(), pending))
    return [(pair, text, n, v.status.value) for pairs, texts, lengths, p in out for pair, text, n, v in
            zip(pairs, texts, lengths, p.result(), strict=True)]  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--problems", type=int, default=8)
    p.add_argument("--samples", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--extra-eos", type=int, default=4, help="ordinary tokens that also stop (of 448)")
    args = p.parse_args()

    tokenizer = make_tiny_tokenizer(ChatStyle.DEEPSEEK)
    config = Qwen2Config(
        vocab_size=448, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8
    )
    model = Qwen2(config, rngs=nnx.Rngs(3))
    graphdef, params = nnx.split(model, nnx.Param)
    eos = (*generation_eos_ids(ChatStyle.DEEPSEEK, tokenizer), *range(300, 300 + args.extra_eos))
    cfg = EvalConfig(
        benchmarks=("aime24",),
        n_samples=args.samples,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        seed=5,
        verifier=VerifierConfig(mode=VerifierMode.ROBUST, workers=1),
    )
    examples = tuple(PromptExample(f"Compute {i} * 3.", str(3 * i)) for i in range(args.problems))
    spec = dataclasses.replace(get_benchmark("aime24"), n_samples=args.samples)
    bench = Benchmark(spec, Path("synthetic"), examples)
    generator = eval_generator(graphdef, tokenizer, cfg, eos_ids=eos, mesh=None)
    times: dict[str, list[float]] = {"per_unit": [], "stream": []}
    with Verifier(cfg.verifier) as verifier:
        for _ in range(2):
            t = time.perf_counter()
            old = _per_unit(generator, params, verifier, bench, cfg)
            times["per_unit"].append(time.perf_counter() - t)
            occupancy_old = generator.sampler.stats.slot_occupancy  # the last unit's
            t = time.perf_counter()
            work = plan_work([bench], cfg.batch_size, cfg.seed, [{}], _Budget(None))
            new = run_benchmarks(generator, params, verifier, [bench], work, prompt_format=cfg.prompt_format)[0]
            times["stream"].append(time.perf_counter() - t)
    same = old == [((r.problem_index, r.sample_index), r.response, r.length, r.verdict) for r in new]
    lengths = np.asarray([r.length for r in new])
    print(
        f"{len(new)} rows, {args.batch_size} at once, lengths p50 {np.median(lengths):.0f} "
        f"p90 {np.percentile(lengths, 90):.0f} max {lengths.max()} (cap {args.max_new_tokens}); same samples: {same}"
    )
    print(f"per-unit calls: {times['per_unit'][1]:.2f} s (slot occupancy of the last unit {occupancy_old:.2f})")
    print(f"one stream:     {times['stream'][1]:.2f} s (slot occupancy {generator.sampler.stats.slot_occupancy:.2f})")
    print(f"stream speed-up: {times['per_unit'][1] / times['stream'][1]:.2f}x   (first runs, compiles included: "
          f"{times['per_unit'][0]:.1f} s / {times['stream'][0]:.1f} s)")  # fmt: skip


if __name__ == "__main__":
    main()
