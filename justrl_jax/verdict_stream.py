"""VerdictStream: verifies rollout rows as the sampler finishes them, while the other rows still decode.

Pass the stream as ``Sampler.generate(..., on_row_done=stream)``. Each finished row is handed to one
background thread that decodes its text and submits it to the verifier (robust mode: the worker pool),
so the sampler's host loop only enqueues and goes back to the device. After generate returns,
:meth:`VerdictStream.result` waits for the verdicts still outstanding (timed: ``wait_s``) and returns
them in row order, the same verdicts as verifying the whole rollout at once.

A failure is never swallowed: one raised while decoding or submitting a row stops generation at the
next finished row (the callback re-raises it) or surfaces in ``result()``, each naming the row.

Example::

    with VerdictStream(verifier, tokenizer.decode, golds) as stream:
        rollout = sampler.generate(params, ids, mask, n=8, key=key, on_row_done=stream)
        verdicts = stream.result()          # list[Verdict], row order
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from justrl_jax.sampler import FinishedRow
from justrl_jax.verifier import PendingVerdicts, Verdict, Verifier


class VerdictStream:
    """``decode(token_ids: list[int]) -> str`` turns a row's tokens into the text to grade against
    ``golds[row]``; one gold per rollout row."""

    def __init__(self, verifier: Verifier, decode: Callable[[list[int]], str], golds: Sequence[str]):
        self.verifier = verifier
        self.decode = decode
        self.golds = list(golds)
        self.texts: list[str | None] = [None] * len(self.golds)
        self.wait_s = 0.0  # time result() waited for verdicts after generation ended
        self.overlapped = 0  # rows handed over while other rows were still decoding
        self._futures: list[Future | None] = [None] * len(self.golds)
        self._failed: int | None = None  # the first row whose decode or submit raised
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="verdict-stream")

    # -- the sampler's on_row_done --------------------------------------------------------------
    def __call__(self, done: FinishedRow) -> None:
        row = done.row
        if not 0 <= row < len(self.golds):
            raise ValueError(f"finished row {row} is outside the {len(self.golds)} rows this stream verifies")
        if self._futures[row] is not None:
            raise RuntimeError(f"row {row} was handed to the verifier twice")
        self._raise_failed()  # stop generating as soon as the verifier path has failed
        self._futures[row] = self._executor.submit(self._submit, row, np.asarray(done.tokens).tolist())
        self.overlapped += done.decoding > 0

    def _submit(self, row: int, tokens: list[int]) -> PendingVerdicts:
        try:
            text = self.decode(tokens)
            self.texts[row] = text
            return self.verifier.submit([text], [self.golds[row]], response_lengths=[len(tokens)])
        except BaseException:
            if self._failed is None:
                self._failed = row
            raise

    def _raise_failed(self) -> None:
        if self._failed is not None:
            self._pending(self._failed, self._futures[self._failed])  # raises, naming the row

    @staticmethod
    def _pending(row: int, future: Future) -> PendingVerdicts:
        try:
            return future.result()
        except Exception as e:
            e.add_note(f"while verifying rollout row {row}")
            raise

    # -- reading verdicts ------------------------------------------------------------------------
    def ready(self, row: int) -> bool:
        """True when ``verdict(row)`` would not wait (its verdict, or its failure, is in)."""
        future = self._futures[row]
        if future is None or not future.done():
            return False
        return future.exception() is not None or future.result().done()

    def verdict(self, row: int) -> Verdict:
        """The verdict of one row that has reached the verifier; waits for it if needed."""
        future = self._futures[row]
        if future is None:
            raise RuntimeError(f"row {row} has not reached the verifier")
        # The pool fails a sample at its batch deadline, so this bound is only met by a bug.
        timeout = self.verifier.config.batch_timeout_s + 60.0
        try:
            return self._pending(row, future).result(timeout)[0]
        except TimeoutError as e:
            raise TimeoutError(f"no verdict for rollout row {row} after {timeout:.0f} s") from e

    def result(self) -> list[Verdict]:
        """Every row's verdict in row order; waits only for those still outstanding."""
        missing = [row for row, future in enumerate(self._futures) if future is None]
        if missing:
            raise RuntimeError(
                f"{len(missing)} of {len(self.golds)} rows never reached the verifier (first: row {missing[0]})"
            )
        start = time.perf_counter()
        try:
            return [self.verdict(row) for row in range(len(self.golds))]
        finally:
            self.wait_s = time.perf_counter() - start
            self.close()

    def close(self) -> None:
        """Stops the background thread (rows not yet submitted are dropped). Idempotent."""
        self._executor.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> VerdictStream:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
