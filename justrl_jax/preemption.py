"""SIGTERM (preemption) or a first Ctrl-C as a request to stop after the current step, agreed on by every host.

A second Ctrl-C exits at once (status 130): the user will not wait for the save. The checkpoint being
written (if any) stays an Orbax temporary that the next start removes; the previous one is intact.

Example::

    with StopRequest() as stop:
        for step in ...:
            run(step)
            if stop.agreed():   # on every host, after the same step
                save(); break
"""

from __future__ import annotations

import logging
import os
import signal
import threading

import jax
import numpy as np

log = logging.getLogger(__name__)


class StopRequest:
    """Set by SIGTERM or a first SIGINT while installed (a context manager; only the main thread installs)."""

    def __init__(self):
        self.requested = False
        self.signal_name = ""
        self._previous: dict = {}

    def _handler(self, signum, _frame) -> None:
        if self.requested and signum == signal.SIGINT:
            log.warning("second SIGINT: exiting now without saving (the newest complete checkpoint is kept)")
            logging.shutdown()
            os._exit(130)
        self.requested = True
        self.signal_name = signal.Signals(signum).name
        log.warning(
            "%s received: saving a checkpoint after this step, then exiting (Ctrl-C again: exit now)", self.signal_name
        )

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
            for sig in self._previous:
                signal.signal(sig, self._handler)
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
