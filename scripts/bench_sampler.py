"""Benchmark: rollout generation, justrl_jax's Sampler vs transformers' ``generate`` (PyTorch), same weights.

Both sides sample (temperature 1.0, no top-p / top-k) from the same random Qwen2 weights, the same
prompts, the same number of new tokens, with no EOS (every row runs to the end), so both produce
``batch x new_tokens`` tokens. The time is end to end: prefill, decode and the host copy of the
tokens. The timed runs of the two sides are interleaved (load from other processes hits both alike);
each side's time is the median of its runs. justrl_jax's first call (compilation) is reported apart.

PyTorch's OpenMP threads busy-wait after each parallel region by default; when the two sides alternate
on a small CPU, the spinning threads and XLA's pool starve each other (measured at batch 8: transformers
25x and justrl_jax 4x slower than alone). The script sets ``OMP_WAIT_POLICY=PASSIVE`` before torch is
imported, so each side runs as fast as it does alone.

Usage::

    python scripts/bench_sampler.py                       # batches 8, 32, 128; 64 prompt + 128 new tokens
    python scripts/bench_sampler.py --batches 8 --iters 5 --new-tokens 256
    python scripts/bench_sampler.py --workload longtail   # 1,024 rows, EOS ~1/330 per step, cap 1,024

Each batch prints a line ending in ``ratio <justrl_jax tokens/s / transformers tokens/s>`` (above 1 is faster).

``--workload longtail`` is what an RL step looks like: response lengths are long-tailed. A random model
over a ~330-token vocabulary at T = 1 draws the EOS id with probability ~1/330 per step, so lengths are
roughly geometric (mean ~300) with a few rows reaching the 1,024-token cap. justrl_jax streams every row
through ``--max-concurrent-rows`` slots (continuous batching); transformers runs ``generate`` the way users
do, in static batches of that size, each until its longest row ends. Useful tokens are the sampled tokens
up to and including each row's EOS; both sides are timed once, after justrl_jax compiled every program the
run can call (``Sampler.warm_up``, reported apart).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import bench_models
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from justrl_jax.sampler import Sampler, SamplerConfig
from justrl_jax.sampling import Temperature


class TorchGenerate:
    def __init__(self, model, prompts: np.ndarray, new_tokens: int):
        import torch

        self.torch = torch
        self.model = model
        self.ids = torch.as_tensor(prompts, dtype=torch.long, device=model.device)
        self.mask = torch.ones_like(self.ids)
        self.new_tokens = new_tokens

    def __call__(self) -> int:
        with self.torch.no_grad():
            out = self.model.generate(
                input_ids=self.ids,
                attention_mask=self.mask,
                do_sample=True,
                temperature=1.0,
                top_p=1.0,
                top_k=0,
                max_new_tokens=self.new_tokens,
                min_new_tokens=self.new_tokens,
                eos_token_id=None,
                pad_token_id=0,
            )
        return int(out.shape[1] - self.ids.shape[1]) * out.shape[0]


class JaxGenerate:
    def __init__(self, sampler: Sampler, params, prompts: np.ndarray):
        self.sampler, self.params = sampler, params
        self.prompts, self.mask = prompts, np.ones(prompts.shape, bool)
        self.seed = 0

    def __call__(self) -> int:
        self.seed += 1
        rollout = self.sampler.generate(self.params, self.prompts, self.mask, n=1, key=self.seed)
        return int(rollout.completion_mask.sum())


def _torch_useful_tokens(hf, prompts: np.ndarray, new_tokens: int, eos: int, batch: int) -> tuple[int, float]:
    """transformers ``generate`` in static batches of ``batch`` rows -> (useful tokens, seconds)."""
    import torch

    useful, start = 0, time.perf_counter()
    with torch.no_grad():
        for lo in range(0, len(prompts), batch):
            ids = torch.as_tensor(prompts[lo : lo + batch], dtype=torch.long, device=hf.device)
            out = (
                hf.generate(
                    input_ids=ids,
                    attention_mask=torch.ones_like(ids),
                    do_sample=True,
                    temperature=1.0,
                    top_p=1.0,
                    top_k=0,
                    max_new_tokens=new_tokens,
                    eos_token_id=eos,
                    pad_token_id=0,
                )[:, ids.shape[1] :]
                .cpu()
                .numpy()
            )
            hit = out == eos
            first = np.where(hit.any(axis=1), hit.argmax(axis=1) + 1, out.shape[1])  # EOS included
            useful += int(first.sum())
    return useful, time.perf_counter() - start


def longtail(args, hf, model, torch_threads: int) -> None:
    params = nnx.state(model, nnx.Param)
    eos = args.vocab - 1
    config = SamplerConfig(
        max_new_tokens=args.new_tokens,
        strategy=Temperature(1.0),
        prompt_bucket=args.prompt,
        max_concurrent_rows=args.max_concurrent_rows,
        steps_per_call=args.steps_per_call,
        page_size=args.page_size,
        attention_kernel=args.attention_kernel,
    )
    sampler = Sampler(model, config, eos_ids=(eos,), pad_id=0)
    prompts = np.random.default_rng(0).integers(1, args.vocab - 1, (args.rows, args.prompt)).astype(np.int32)
    mask = np.ones(prompts.shape, bool)
    print(
        f"longtail: jax {jax.devices()[0].platform}, torch {torch_threads} threads; vocab {args.vocab} (EOS id "
        f"{eos}), hidden {args.hidden}, {args.layers} layers, {args.heads}/{args.kv_heads} heads; {args.dtype}; "
        f"{args.rows} rows of {args.prompt} prompt tokens, cap {args.new_tokens} new tokens, "
        f"{args.max_concurrent_rows} rows at once",
        flush=True,
    )
    t0 = time.perf_counter()
    programs = sampler.warm_up(params, prompts, mask)  # every prefill and decode bucket the run can call
    print(f"justrl_jax warm-up (compiles {programs} programs) {time.perf_counter() - t0:.1f} s", flush=True)
    t0 = time.perf_counter()
    rollout = sampler.generate(params, prompts, mask, key=1)
    jax_s = time.perf_counter() - t0
    jax_useful = int(rollout.lengths.sum())
    st = sampler.stats
    print(
        f"justrl_jax  : {jax_useful:9,d} useful tokens in {jax_s:7.1f} s = {jax_useful / jax_s:9,.0f} tokens/s  "
        f"(mean length {rollout.lengths.mean():.0f}, {int((rollout.lengths == args.new_tokens).sum())} at the cap; "
        f"occupancy {st.slot_occupancy:.2f}, {st.decode_calls} decode calls, {st.prefill_calls} prefills, "
        f"{st.preemptions} preemptions; prefill {st.prefill_seconds:.1f} s, decode {st.decode_seconds:.1f} s, "
        f"host {jax_s - st.prefill_seconds - st.decode_seconds:.1f} s)",
        flush=True,
    )
    if args.skip_transformers:
        return
    torch_useful, torch_s = _torch_useful_tokens(hf, prompts, args.new_tokens, eos, args.max_concurrent_rows)
    print(
        f"transformers: {torch_useful:9,d} useful tokens in {torch_s:7.1f} s = {torch_useful / torch_s:9,.0f} "
        f"tokens/s (static batches of {args.max_concurrent_rows})",
        flush=True,
    )
    print(f"ratio {(jax_useful / jax_s) / (torch_useful / torch_s):.2f} (justrl_jax / transformers useful tokens/s)")


def _decode_line(args, sampler: Sampler, params, cfg) -> str:
    """Decode alone (the last timed run's sampler stats): tokens/s and the HBM traffic it implies.

    Every decode step reads the weights once and each live row's keys and values up to its position; the
    bytes are counted from the shapes (a lower bound on the traffic: activations and logits not counted).
    """
    st = sampler.stats
    if not st.decode_seconds:
        return "decode: no stats (waves scheduler)"
    steps = st.decode_slot_steps / st.slots if st.slots else 0
    # What a step reads: the weights as the sampler decodes from them (sampler.decode_weights: in the
    # compute dtype where that is narrower than the stored dtype).
    compute = jnp.dtype(args.dtype).itemsize
    weight_bytes = sum(x.size * min(x.dtype.itemsize, compute) for x in jax.tree.leaves(params))
    kv_token = cfg.num_layers * 2 * cfg.num_kv_heads * cfg.head_dim * compute
    mean_context = args.prompt + args.new_tokens / 2
    traffic = steps * weight_bytes + st.decode_tokens * mean_context * kv_token
    line = (
        f"decode {st.decode_tokens / st.decode_seconds:,.0f} tokens/s ({st.decode_tokens} tokens, {steps:.0f} steps "
        f"in {st.decode_seconds:.2f} s = {1e3 * st.decode_seconds / max(steps, 1):.2f} ms/step; prefill "
        f"{st.prefill_seconds:.2f} s); weights {weight_bytes / 1e9:.2f} GB + KV read -> "
        f"{traffic / st.decode_seconds / 1e9:,.0f} GB/s"
    )
    peaks = bench_models.datasheet()
    if peaks is not None:
        line += f" = {traffic / st.decode_seconds / peaks['hbm']:.2f} of the datasheet's {peaks['hbm'] / 1e12:.1f} TB/s"
    return line


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workload", choices=("fixed", "longtail"), default="fixed")
    ap.add_argument("--vocab", type=int, default=None, help="default: 32,000 (fixed), 330 (longtail)")
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--mlp", type=int, default=1024)
    ap.add_argument("--batches", type=int, nargs="+", default=[8, 32, 128])
    ap.add_argument("--prompt", type=int, default=64, help="prompt tokens per row")
    ap.add_argument("--new-tokens", type=int, default=None, help="default: 128 (fixed), 1,024 (longtail cap)")
    ap.add_argument("--decode-chunk", type=int, default=0, help="justrl_jax SamplerConfig.decode_chunk (waves)")
    ap.add_argument("--scheduler", choices=("continuous", "waves"), default="continuous", help="(fixed)")
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--rows", type=int, default=1024, help="(longtail) rows, one prompt each")
    ap.add_argument("--max-concurrent-rows", type=int, default=128, help="(longtail) slots; transformers' batch")
    ap.add_argument("--steps-per-call", type=int, default=16, help="justrl_jax decode steps per device call")
    ap.add_argument("--page-size", type=int, default=SamplerConfig.page_size, help="tokens per KV page")
    ap.add_argument("--skip-transformers", action="store_true", help="(longtail) time justrl_jax only")
    ap.add_argument(
        "--attention-kernel", default=SamplerConfig.attention_kernel, help="justrl_jax paged decode attention"
    )
    ap.add_argument(
        "--param-dtype",
        choices=bench_models.DTYPES,
        default="float32",
        help="justrl_jax: dtype the sampler's weights are stored in (the RL loop hands it its fp32 master weights)",
    )
    bench_models.add_model_args(ap)
    args = ap.parse_args()
    bench_models.apply_preset(args)
    longtail_run = args.workload == "longtail"
    args.vocab = args.vocab or (330 if longtail_run else 32000)
    args.new_tokens = args.new_tokens or (1024 if longtail_run else 128)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch is first imported (see the docstring)
    import torch

    hf = bench_models.hf_model(args, args.prompt + args.new_tokens)
    # The very same weights, through the HF importer; then the peer runs as users run it in that dtype.
    model = bench_models.jax_model(hf, compute_dtype=jnp.dtype(args.dtype), param_dtype=jnp.dtype(args.param_dtype))
    hf = hf.to(getattr(torch, args.dtype)).eval()
    if longtail_run:
        longtail(args, hf, model, torch.get_num_threads())
        return
    params = nnx.state(model, nnx.Param)
    sampler = Sampler(
        model,
        SamplerConfig(
            max_new_tokens=args.new_tokens,
            strategy=Temperature(1.0),
            prompt_bucket=args.prompt,
            decode_chunk=args.decode_chunk,
            scheduler=args.scheduler,
            steps_per_call=args.steps_per_call,
            page_size=args.page_size,
            attention_kernel=args.attention_kernel,
        ),
        eos_ids=(),
        pad_id=0,
    )
    print(
        f"jax {jax.devices()[0].platform} x{jax.device_count()}, torch {torch.get_num_threads()} threads; "
        f"vocab {args.vocab}, hidden {args.hidden}, {args.layers} layers, {args.heads}/{args.kv_heads} heads, "
        f"mlp {args.mlp}; {args.dtype} (justrl_jax weights stored in {args.param_dtype}); transformers on "
        f"{hf.device}; {args.prompt} prompt + {args.new_tokens} new tokens, sampling at T=1, no EOS; "
        f"{args.scheduler} scheduler"
    )

    rng = np.random.default_rng(0)
    for batch in args.batches:
        prompts = rng.integers(0, args.vocab, (batch, args.prompt)).astype(np.int32)
        sides = {
            "justrl_jax": JaxGenerate(sampler, params, prompts),
            "transformers": TorchGenerate(hf, prompts, args.new_tokens),
        }
        first = {}
        for name, fn in sides.items():
            t0 = time.perf_counter()
            tokens = fn()
            first[name] = time.perf_counter() - t0
            assert tokens == batch * args.new_tokens, (name, tokens)
        times = {name: [] for name in sides}
        for _ in range(args.iters):
            for name, fn in sides.items():
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
        rate = {name: batch * args.new_tokens / statistics.median(ts) for name, ts in times.items()}
        print(
            f"batch {batch:4d}: justrl_jax {rate['justrl_jax']:8,.0f} tokens/s "
            f"(first call {first['justrl_jax']:.1f} s), transformers {rate['transformers']:8,.0f} tokens/s  "
            f"ratio {rate['justrl_jax'] / rate['transformers']:.2f}",
            flush=True,
        )
        print(f"batch {batch:4d}: {_decode_line(args, sampler, params, model.config)}", flush=True)


if __name__ == "__main__":
    main()
