"""Where a continuous-batching decode step spends its time: the jitted pieces timed apart, at the benches' shapes.

The model is the benches' random Qwen2 (hidden 256, 4 layers, 8/2 heads, head dim 32, MLP 1,024); the pieces are
the ones :func:`justrl_jax.model.paged_decode.decode_step` runs, each jitted alone:

* ``attention``: :func:`paged_decode_attention` of one layer over a page pool whose pages are handed out in a
  random order (as they are after rows have come and gone), rows ordered longest first (as the scheduler does);
* ``projections + MLP``: one layer's q/k/v/o projections and MLP (the token-major MLP decode_step runs);
* ``unembed + sample``: the final norm, the logits and one inverse-CDF draw per row;
* ``decode step x16``: 16 whole steps (4 layers, KV writes into the pool, sampling) in one ``fori_loop``, the
  pool donated, per step: what one decode call of ``steps_per_call = 16`` does;
* ``... without attention``: the same loop with the attention call replaced by its query (KV writes kept): the
  difference to the whole step is what the attention costs inside the loop, where each layer reads its own
  pool (the attention timed alone re-reads one pool, partly from cache).

Then the floor of a decode step on this machine (fp32): the KV bytes the attention must read at the memory
bandwidth of a plain streaming read (numpy sum of a 256 MB array) plus the matmul FLOPs of the step at the rate
of one large fp32 matmul.

``longtail`` is ``bench_sampler.py --workload longtail`` mid-run: vocabulary 330, 128 rows whose context lengths
are 64 prompt tokens plus a geometric number of new ones (mean ~330, capped at 1,024); ``fixed`` is the
fixed-length bench at batch 128 halfway: vocabulary 32,000, 128 tokens of context per row.

Each figure is the best of several rounds (wall clock). On a shared machine they move with the load: compare
figures of one run, and give ``uptime`` with them.

Usage::

    python scripts/profile_decode_step.py                        # both workloads, page size 16
    python scripts/profile_decode_step.py --page-size 64 --workload longtail
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import justrl_jax.model.paged_decode as paged_decode
from justrl_jax.model.paged_attention import paged_decode_attention
from justrl_jax.model.paged_decode import decode_step
from justrl_jax.model.paged_kv_cache import PagedKVCache, pages_for
from justrl_jax.model.qwen2 import Qwen2, Qwen2Config
from justrl_jax.sampling import Temperature

ROWS, PROMPT = 128, 64


def _best(fn, *args, rounds: int, reps: int = 5) -> float:
    """Seconds per call: the best of ``rounds`` rounds of ``reps`` calls."""
    jax.block_until_ready(fn(*args))
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(reps):
            out = fn(*args)
        jax.block_until_ready(out)
        best = min(best, (time.perf_counter() - start) / reps)
    return best


def profile(workload: str, page_size: int, rounds: int) -> dict[str, float]:
    rng = np.random.default_rng(0)
    h = 32
    vocab, cap = (330, 1024) if workload == "longtail" else (32000, 128)
    cfg = Qwen2Config(
        vocab_size=vocab,
        hidden_size=256,
        intermediate_size=1024,
        num_layers=4,
        num_heads=8,
        num_kv_heads=2,
        head_dim=32,
    )
    model = Qwen2(cfg, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model, nnx.Param)
    steps = 16
    if workload == "longtail":
        new = np.minimum(rng.geometric(1 / 330, ROWS), cap - steps)
    else:
        new = np.full(ROWS, cap // 2)
    lengths = np.sort(PROMPT + new)[::-1].astype(np.int32)  # tokens cached so far, the query's own included
    row_pages = pages_for(PROMPT + cap - 1, page_size)
    pages = ROWS * row_pages + 1
    table = jnp.asarray(1 + rng.permutation(ROWS * row_pages).reshape(ROWS, row_pages), jnp.int32)
    kv = cfg.num_kv_heads

    def pool():
        return jnp.asarray(rng.standard_normal((kv, pages, page_size, h)), jnp.float32)

    times = {}
    q = jnp.asarray(rng.standard_normal((ROWS, cfg.num_heads, h)), jnp.float32)
    attend = jax.jit(lambda q, k, v, n, t: paged_decode_attention(q, k, v, n, t, kernel="jax"))
    times["attention (1 layer)"] = _best(attend, q, pool(), pool(), jnp.asarray(lengths), table, rounds=rounds)

    x = jnp.asarray(rng.standard_normal((ROWS, 1, cfg.hidden_size)), jnp.float32)

    def layer_dense(params, x):  # everything of one layer but the attention over the pool
        layer = nnx.merge(graphdef, params).layers[0]
        a = layer.attn
        y = layer.input_norm(x)
        q = a._project(y, a.q_kernel, a.q_bias)
        kv_sum = a._project(y, a.k_kernel, a.k_bias).sum() + a._project(y, a.v_kernel, a.v_bias).sum()
        x = x + jnp.einsum("BTNH,NHD->BTD", q, a.o_kernel[...]) + 0 * kv_sum
        return x + layer.mlp(layer.post_attn_norm(x))

    times["projections + MLP (1 layer)"] = _best(jax.jit(layer_dense), params, x, rounds=rounds)
    uniforms = jnp.asarray(rng.random(ROWS), jnp.float32)

    def unembed_sample(params, x, u):
        m = nnx.merge(graphdef, params)
        return Temperature(1.0).sample(m.logits(m.final_norm(x))[:, 0], u)

    times["unembed + sample"] = _best(jax.jit(unembed_sample), params, x, uniforms, rounds=rounds)

    def run(params, cache, tokens, positions):
        m = nnx.merge(graphdef, params)

        def body(j, carry):
            cache, tokens, positions = carry
            hidden, cache = decode_step(m, tokens, positions, cache, table)
            u = jax.random.uniform(jax.random.fold_in(jax.random.key(0), j), (ROWS,))
            tokens, _ = Temperature(1.0).sample(m.logits(hidden)[:, 0], u)
            return cache, tokens, positions + 1

        return jax.lax.fori_loop(0, steps, body, (cache, tokens, positions))[0]

    def step_time(name: str):
        step_fn = jax.jit(run, donate_argnums=(1,))
        cache = PagedKVCache(
            k=tuple(pool() for _ in range(cfg.num_layers)), v=tuple(pool() for _ in range(cfg.num_layers))
        )
        tokens = jnp.asarray(rng.integers(0, vocab, ROWS), jnp.int32)
        positions = jnp.asarray(lengths - 1)
        best = float("inf")
        for i in range(rounds + 1):
            start = time.perf_counter()
            cache = jax.block_until_ready(step_fn(params, cache, tokens, positions))
            if i:  # the first call compiles
                best = min(best, (time.perf_counter() - start) / steps)
        times[name] = best

    step_time("decode step (of 16 in one loop)")
    attention = paged_decode.paged_decode_attention
    paged_decode.paged_decode_attention = _no_attention
    try:
        step_time("  ... without attention")
    finally:
        paged_decode.paged_decode_attention = attention
    print(
        f"{workload}: batch {ROWS}, vocab {vocab}, page size {page_size}, context mean {lengths.mean():.0f} "
        f"(max {lengths.max()}) tokens"
    )
    for name, seconds in times.items():
        print(f"  {name:34s} {seconds * 1e3:8.2f} ms")
    in_loop = times["decode step (of 16 in one loop)"] - times["  ... without attention"]
    print(f"  {'attention in the loop (4 layers)':34s} {in_loop * 1e3:8.2f} ms")
    _floor(cfg, lengths, page_size, times["decode step (of 16 in one loop)"])
    return times


def _no_attention(q, k_pages, v_pages, *_, **__):
    """The query stands in for the attention's output; the pools stay inputs of the step, so their writes stay."""
    return q + 0 * (k_pages[0, 0, 0] + v_pages[0, 0, 0])


def _floor(cfg: Qwen2Config, lengths: np.ndarray, page_size: int, step: float) -> None:
    """The fastest fp32 decode step this machine allows: each row's KV bytes (no page padding) read once at
    streaming bandwidth, plus the matmul FLOPs at the rate of a large matmul. The attention's own arithmetic (about
    one FLOP per KV byte) is left out: it is memory bound."""
    big = np.ones(64 * 2**20, np.float32)  # 256 MB, well past any cache
    seconds = min(_wall(big.sum) for _ in range(5))
    bandwidth = big.nbytes / seconds
    a = jnp.ones((2048, 2048), jnp.float32)
    matmul = jax.jit(lambda a: a @ a)
    jax.block_until_ready(matmul(a))
    flop_rate = 2 * 2048**3 / min(_wall(lambda: jax.block_until_ready(matmul(a))) for _ in range(5))
    kv_bytes = int(lengths.sum()) * 2 * cfg.num_kv_heads * cfg.head_dim * 4 * cfg.num_layers  # keys + values
    d, f, n, k, h = cfg.hidden_size, cfg.intermediate_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    flops = 2 * ROWS * (cfg.num_layers * (3 * d * f + 2 * d * n * h + 2 * d * k * h) + d * cfg.vocab_size)
    floor = kv_bytes / bandwidth + flops / flop_rate
    print(
        f"  floor: KV {kv_bytes / 1e6:.0f} MB at {bandwidth / 1e9:.1f} GB/s = {kv_bytes / bandwidth * 1e3:.2f} ms, "
        f"matmuls {flops / 1e9:.2f} GFLOP at {flop_rate / 1e9:.0f} GFLOPS = {flops / flop_rate * 1e3:.2f} ms: "
        f"{floor * 1e3:.2f} ms per step (the step above: {step / floor:.1f}x the floor)"
    )


def _wall(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workload", choices=("longtail", "fixed", "both"), default="both")
    ap.add_argument("--page-size", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    for workload in ("longtail", "fixed") if args.workload == "both" else (args.workload,):
        profile(workload, args.page_size, args.rounds)


if __name__ == "__main__":
    main()
