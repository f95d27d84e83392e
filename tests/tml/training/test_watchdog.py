import subprocess
import sys
import textwrap
import time

from tml.training.watchdog import HUNG_EXIT, StepWatchdog


def test_steady_steps_and_paused_stretches_do_not_fire():
    with StepWatchdog(timeout_s=0.3, rank=0) as watchdog:
        for step in range(8):
            watchdog.beat(step)
            time.sleep(0.1)
        with watchdog.paused():
            time.sleep(0.8)
        watchdog.beat(8)
        time.sleep(0.1)
    # Reaching this line is the test: a firing watchdog ends the process.


def test_a_stuck_step_ends_the_process_naming_rank_step_and_place():
    script = textwrap.dedent(
        """
        import time
        from tml.observability.logging import setup_logging
        from tml.training.watchdog import StepWatchdog
        setup_logging(2)

        def read_a_stuck_file():
            time.sleep(60)

        with StepWatchdog(timeout_s=0.5, rank=2) as watchdog:
            watchdog.beat(6)
            read_a_stuck_file()
        """
    )
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == HUNG_EXIT
    assert time.monotonic() - started < 30
    lines = [line for line in result.stderr.splitlines() if "no training step finished" in line]
    assert len(lines) == 1, result.stderr
    assert "rank 2: no training step finished in 0.5 s" in lines[0]
    assert "stuck in step 7 at <string>:" in lines[0] and "(read_a_stuck_file)" in lines[0]
    assert "waiting for another rank" not in lines[0]
    assert "in read_a_stuck_file" in result.stderr  # the stacks follow
