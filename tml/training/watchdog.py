"""A step-time watchdog: a rank on which no training step finishes in time fails the job.

A rank stuck in a step (a deadlocked data reader, a device that stopped answering, a peer that
died inside a collective the backend does not time out) would otherwise hold every rank forever.
The watchdog thread sees that the loop has not come round and ends the process loudly: one line
naming the rank, the step and where its main thread is, then every thread's stack. The launcher
then restarts the workers (``--max-restarts``) or fails the job.
"""

from __future__ import annotations

import contextlib
import faulthandler
import logging
import os
import sys
import threading
import time
import traceback
from collections.abc import Iterator

logger = logging.getLogger(__name__)

# What a process ended by the watchdog exits with.
HUNG_EXIT = 1
_COLLECTIVES = os.path.join("torch", "distributed", "")


class StepWatchdog:
    """Watches, from a thread of its own, that :meth:`beat` is called often enough.

    Use it as a context manager around the training loop; ``timeout_s=None`` disables it.

    Args:
        timeout_s: The longest a step (with what the loop does between steps) may take.
        rank: Named in the failure line.
    """

    def __init__(self, timeout_s: float | None, rank: int = 0) -> None:
        self.timeout_s = timeout_s
        self.rank = rank
        self._last_beat = time.monotonic()
        self._step: int | None = None
        self._paused = False
        self._done = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> StepWatchdog:
        if self.timeout_s is not None:
            self._last_beat = time.monotonic()
            self._thread = threading.Thread(
                target=self._watch, name="tml-step-watchdog", daemon=True
            )
            self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._done.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def beat(self, step: int) -> None:
        """Says that the loop is about to start ``step`` (the previous one has finished)."""
        self._step = step
        self._last_beat = time.monotonic()

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Not watched for the duration (evaluation, which the collective timeout covers)."""
        self._paused = True
        try:
            yield
        finally:
            self._last_beat = time.monotonic()
            self._paused = False

    def _watch(self) -> None:
        assert self.timeout_s is not None
        interval = min(self.timeout_s / 10, 5.0)
        while not self._done.wait(interval):
            if not self._paused and time.monotonic() - self._last_beat > self.timeout_s:
                self._fail()

    def _fail(self) -> None:
        frame = sys._current_frames().get(threading.main_thread().ident or -1)
        where = "an unknown place"
        if frame is not None:
            stack = traceback.extract_stack(frame)
            innermost = stack[-1]
            where = f"{innermost.filename}:{innermost.lineno} ({innermost.name})"
            # Every rank's watchdog fires; those blocked in a collective wait for the one that
            # is stuck elsewhere, and saying so points the reader at it.
            if any(_COLLECTIVES in entry.filename for entry in stack):
                where = f"{where}, waiting for another rank in a collective"
        logger.error(
            "rank %d: no training step finished in %g s (training.step_timeout_in_s), stuck in "
            "step %s at %s: failing the job; every thread's stack follows",
            self.rank,
            self.timeout_s,
            "?" if self._step is None else self._step + 1,
            where,
        )
        for handler in logging.getLogger().handlers:
            handler.flush()
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        sys.stderr.flush()
        # The main thread is stuck: raising there is impossible, and an orderly shutdown would
        # wait on the very thing that hangs.
        os._exit(HUNG_EXIT)
