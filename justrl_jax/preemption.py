"""SIGTERM (preemption) as a request to stop after the current step, agreed on by every host.

Example::

    with StopRequest() as stop:
        for step in ...:
            run(step)
            if stop.agreed():   # on every host, after the same step
                save(); break
"""

from __future__ import annotations

import logging
import signal
import threading

import jax
import numpy as np

log = logging.getLogger(__name__)


class StopRequest:
    """Set by SIGTERM while installed (a context manager; only the main thread can install handlers)."""

    def __init__(self):
        self.requested = False
        self.signal_name = ""
        self._previous: dict = {}

    def _handler(self, signum, _frame) -> None:
        self.requested = True
        self.signal_name = signal.Signals(signum).name
        log.warning("%s received: saving a checkpoint after this step, then exiting", self.signal_name)

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            self._previous = {signal.SIGTERM: signal.getsignal(signal.SIGTERM)}
            signal.signal(signal.SIGTERM, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def agreed(self) -> bool:
        """True on every host when any host was asked to stop: Orbax saves collectively, so all hosts must
        stop after the same step, even when SIGTERM reached them at different moments."""
        if jax.process_count() == 1:
            return self.requested
        from jax.experimental import multihost_utils

        return bool(np.any(multihost_utils.process_allgather(np.int32(self.requested))))

    @property
    def cause(self) -> str:
        return self.signal_name or "a signal to another host"
