"""Preemption: a stop signal on any rank stops every rank at the same step boundary.

Kubernetes, Slurm and spot reclaim announce the end of a job with SIGTERM (Slurm optionally
with SIGUSR1 ahead of time), then kill it after a grace period. The handler only records the
signal; at each step boundary the ranks all-reduce a flag, so a signal delivered to one rank
(or to each rank at a slightly different step) still stops them all after the same step, where
the trainer writes a checkpoint that a relaunch resumes exactly.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import types
from collections.abc import Callable

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
# What a process that missed its grace period exits with (a failure, not a clean stop).
GRACE_EXPIRED_EXIT = 1

_Handler = Callable[[int, types.FrameType | None], object] | int | signal.Handlers | None


class StopRequest:
    """Records stop signals while installed (a context manager) and agrees on them over ranks.

    Args:
        grace_period_s: After the first signal, how long this process may take to stop; past
            it the process logs what was late and exits with status 1, ahead of the SIGKILL that
            the orchestrator sends when its own grace period ends.
        rank: Named in the log lines.
        signals: The signals that ask for a stop.
    """

    def __init__(
        self,
        grace_period_s: float,
        rank: int = 0,
        signals: tuple[signal.Signals, ...] = STOP_SIGNALS,
    ) -> None:
        self.grace_period_s = grace_period_s
        self.rank = rank
        self.signals = signals
        self.received: signal.Signals | None = None
        self._previous: dict[signal.Signals, _Handler] = {}
        self._deadline: threading.Timer | None = None

    def __enter__(self) -> StopRequest:
        # Signal handlers can only be installed from the main thread; elsewhere (a test
        # harness's worker thread) stopping is simply not offered.
        if threading.current_thread() is threading.main_thread():
            for signum in self.signals:
                self._previous[signum] = signal.signal(signum, self._record)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _record(self, signum: int, frame: types.FrameType | None) -> None:
        if self.received is not None:
            return
        self.received = signal.Signals(signum)
        # Logging from a signal handler could deadlock on the handler's lock; the trainer logs
        # the stop when the ranks agree on it.
        self._deadline = threading.Timer(self.grace_period_s, self._grace_expired)
        self._deadline.daemon = True
        self._deadline.start()

    def _grace_expired(self) -> None:
        logger.error(
            "rank %d: not stopped %g s after %s (training.preemption_grace_period_in_s): "
            "exiting without a final checkpoint; a relaunch resumes from the newest complete one",
            self.rank,
            self.grace_period_s,
            self.received.name if self.received else "the signal",
        )
        logging.shutdown()
        os._exit(GRACE_EXPIRED_EXIT)

    def agreed(self) -> bool:
        """Whether any rank has received a stop signal (a collective: every rank calls it)."""
        flag = torch.tensor([0 if self.received is None else 1], dtype=torch.int32)
        if dist.is_initialized() and dist.get_world_size() > 1:
            # A CPU tensor: on GPU jobs it goes over the Gloo half of the group and does not
            # wait for the device's queued work.
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())
