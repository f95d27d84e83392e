import os
import signal
import subprocess
import sys
import textwrap
import time

from tml.training.preemption import GRACE_EXPIRED_EXIT, StopRequest


def test_a_signal_is_recorded_and_agreed_on_then_the_handlers_are_restored(single_process_group):
    before = signal.getsignal(signal.SIGUSR1)
    with StopRequest(grace_period_s=60) as stop:
        assert not stop.agreed()
        os.kill(os.getpid(), signal.SIGUSR1)  # would end the process without the handler
        assert stop.received == signal.SIGUSR1
        assert stop.agreed()
    assert signal.getsignal(signal.SIGUSR1) == before


def test_a_rank_that_misses_its_grace_period_exits_1_naming_itself():
    script = textwrap.dedent(
        """
        import os, signal, time
        from tml.observability.logging import setup_logging
        from tml.training.preemption import StopRequest
        setup_logging(3)
        with StopRequest(grace_period_s=0.5, rank=3):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(60)  # a stop that never comes
        """
    )
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == GRACE_EXPIRED_EXIT, result.stderr
    assert "rank 3: not stopped 0.5 s after SIGTERM" in result.stderr
    assert time.monotonic() - started < 30
