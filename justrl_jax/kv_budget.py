"""The KV-cache budget per device: a number the user gives, or what the device has free.

``kv_cache_budget_gb: 0`` in the presets means *plan from the device*: a fraction of the device's free
memory (``memory_stats()``: ``bytes_limit - bytes_in_use``) at the time the sampler is built, i.e. after
the parameters and optimizer state are placed, so they are already counted. The rest of the fraction's
complement is left to prefill activations, logits and the allocator's fragmentation. Backends that report
no memory limit (CPU) get no limit (None), as before.
"""

from __future__ import annotations

import jax

FREE_FRACTION = 0.8  # of the free device memory given to the KV pages when planning from the device


def kv_cache_budget_bytes(gb: float, device: jax.Device | None = None, fraction: float = FREE_FRACTION) -> int | None:
    """``gb > 0``: that many GiB. ``gb == 0``: ``fraction`` of ``device``'s free memory now (default: the first
    local device); None when the device reports no limit."""
    if gb < 0:
        raise ValueError(f"kv_cache_budget_gb must be >= 0 (0: plan from the device), got {gb}")
    if gb > 0:
        return int(gb * 2**30)
    stats = (device or jax.local_devices()[0]).memory_stats() or {}
    limit = stats.get("bytes_limit")
    if not limit:
        return None
    return max(1, int((limit - stats.get("bytes_in_use", 0)) * fraction))
