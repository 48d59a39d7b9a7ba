"""Multi-process helpers: named barriers with timeouts, so a dead host fails the others, never hangs.

``jax.distributed`` itself detects a host that stops sending heartbeats (``heartbeat_timeout_seconds``)
and terminates the survivors with an error; the barriers here add a name and a deadline to every
point where the hosts wait for each other on the host side (before checkpoints, at the end).
"""

from __future__ import annotations

import logging

import jax

log = logging.getLogger(__name__)


class BarrierTimeout(RuntimeError):
    pass


def barrier(name: str, timeout_s: float) -> None:
    """All processes reach ``name`` within ``timeout_s`` or this raises, naming the barrier."""
    if jax.process_count() == 1:
        return
    from jax._src import distributed

    client = distributed.global_state.client
    if client is None:
        raise RuntimeError(f"barrier {name!r}: several processes but jax.distributed is not initialised")
    try:
        client.wait_at_barrier(name, int(timeout_s * 1000))
    except Exception as e:  # noqa: BLE001 - the client raises its own error types
        raise BarrierTimeout(
            f"barrier {name!r}: not every one of the {jax.process_count()} processes arrived within "
            f"{timeout_s:.0f}s (a host died or hangs): {e}"
        ) from e
