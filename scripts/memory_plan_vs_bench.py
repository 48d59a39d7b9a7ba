"""The memory plan's estimate next to what ``bench_train_step.py`` measured, run by run.

Each log is the combined output of::

    /usr/bin/time -v python scripts/bench_train_step.py --prompt 256 --batch 1 --lengths L --no-peer \\
        --iters 1 --remat --attention IMPL > LOG 2>&1

The process holds the parameters and the AdamW moments before its first step (``pre_step_rss_gib=``), so
the step's own cost is the maximum resident set size minus that; the plan's counterpart is its training
peak minus the same two items, i.e. gradients + activations of one micro-batch, planned for XLA:CPU
(every layer's intermediates live, the update's outputs beside the state; see PlanInputs).

Usage::

    python scripts/memory_plan_vs_bench.py LOG [LOG ...]
"""

from __future__ import annotations

import re
import sys

from justrl_jax.memory_estimate import GIB, PlanInputs, plan_memory
from justrl_jax.model.qwen2 import Qwen2Config
from justrl_jax.sharding import MeshConfig

# The plan's XLA:CPU settings below (live_layers = every layer, update_copies = 3) and its blockwise tile
# count were chosen to match the blockwise runs at these total lengths (2k, 4k and 16k responses + 256
# prompt tokens; measured before the fused blockwise backward); a run at any other length is an
# independent check. The column ``role`` says which.
FITTED_ON_TOKENS = (2304, 4352, 16640)

BENCH_MODEL = Qwen2Config(
    vocab_size=32000, hidden_size=256, intermediate_size=1024, num_layers=4, num_heads=8, num_kv_heads=2, head_dim=32
)


def _field(text: str, pattern: str) -> str:
    m = re.search(pattern, text)
    if m is None:
        raise ValueError(f"no match for {pattern!r}")
    return m.group(1)


def compare(log: str) -> tuple[str, int, float, float]:
    text = open(log).read()
    prompt, short, long_ = (int(x) for x in re.search(r"rows of (\d+) \+ (\d+)\.\.(\d+) tokens", text).groups())
    rows = int(_field(text, r"; (\d+) rows of"))
    impl = _field(text, r"attention (\w+),")
    chunk = int(_field(text, r"logp chunk (\d+)"))
    pre_step = float(_field(text, r"pre_step_rss_gib=([\d.]+)"))
    peak = int(_field(text, r"Maximum resident set size \(kbytes\): (\d+)")) / 2**20
    inputs = PlanInputs(
        rollout_sequences=rows,
        prompt_tokens=prompt,
        max_new_tokens=long_,
        micro_batch_sequences=rows,
        compute_bytes=4,
        kv_cache_bytes_per_value=4,
        logp_chunk_tokens=chunk,
        attention=impl,
        sampler_waves=1,
        live_layers=BENCH_MODEL.num_layers,  # XLA:CPU's live set (see PlanInputs.live_layers)
        update_copies=3,
    )
    plan = plan_memory(BENCH_MODEL, MeshConfig(1, 1), 1, inputs)
    estimate = (plan.grads_per_device + plan.activations_per_device) / GIB
    return impl, prompt + long_, estimate, peak - pre_step


def main() -> int:
    print(f"{'attention':<10} {'tokens':>7} {'plan GiB':>9} {'measured GiB':>13} {'plan/measured':>14} {'role':>12}")
    for log in sys.argv[1:]:
        impl, tokens, estimate, measured = compare(log)
        role = "fit" if impl == "blockwise" and tokens in FITTED_ON_TOKENS else "independent"
        ratio = estimate / measured
        print(f"{impl:<10} {tokens:>7} {estimate:>9.3f} {measured:>13.3f} {ratio:>14.2f} {role:>12}  {log}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
