"""The retraining command: one cycle per run.

    python -m projects.home.recap.retrain.main --config_path CFG --registry URL \\
        [--end_date YYYY/MM/DD[/HH]] [--warm_start promoted|scratch|CYCLE|CHECKPOINT] \\
        [--report_file FILE] [dotted.path=value ...]

(installed as ``tml-recap-retrain``). It trains a candidate on the window ending at
``--end_date`` (default: the newest complete folder), warm-started from the promoted model,
compares it with the promoted model on the window's held-out slice and promotes it when the gate
of ``retraining.gate`` passes. It prints one summary line, writes the cycle's JSON report into
the registry (and to ``--report_file``), and exits with (see :class:`.outcome.ExitCode`):

* 0: promoted, or this cycle had already finished (nothing done);
* 1: failed (training, evaluation or export; the logs are in the cycle's folder); run it again
  to resume where it stopped;
* 2: a mistake in the command line or config (one line says what);
* 3: rejected by the gate (the promoted model stays);
* 75: another cycle holds the registry's lock;
* 99: no new data (the window's folder is not complete yet, or the newest window is done).

docs/retraining.md has cron, Airflow and Kubernetes examples.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import time
from types import FrameType

from projects.home.recap.config import RecapConfig
from projects.home.recap.retrain.cycle import (
    FROM_PROMOTED,
    CycleRequest,
    CycleResult,
    Outcome,
    prepare,
    report,
    run_cycle,
)
from projects.home.recap.retrain.launch import ChildFailedError, Children
from projects.home.recap.retrain.outcome import ExitCode
from projects.home.recap.retrain.registry import Registry
from projects.home.recap.retrain.window import NoNewDataError
from tml.core.cli import add_config_arguments
from tml.core.config import load_config_from_yaml
from tml.core.errors import UserInputError
from tml.observability.logging import setup_logging
from tml.storage import LockHeldError, LockLostError, as_path, write_atomically

logger = logging.getLogger(__name__)


class StopRequestedError(Exception):
    """SIGTERM or SIGINT arrived while no child process was running."""


def build_argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tml-recap-retrain",
        description="Run one retraining cycle: train on the newest window, warm-started from "
        "the promoted model; promote the candidate when it passes the gate.",
    )
    add_config_arguments(parser)
    parser.add_argument("--registry", required=True, help="The model registry (folder or URL).")
    parser.add_argument(
        "--end_date",
        help="The window's newest folder, YYYY/MM/DD (daily data) or YYYY/MM/DD/HH (hourly); "
        "default: the newest complete one.",
    )
    parser.add_argument(
        "--warm_start",
        default=FROM_PROMOTED,
        help="promoted (default: the promoted model, or scratch when there is none), scratch, "
        "a cycle id of the registry, or a checkpoint folder.",
    )
    parser.add_argument("--report_file", help="Also write the JSON report to this file.")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Runs one cycle; the exit status tells the orchestrator what happened."""
    args = build_argument_parser().parse_args(argv)
    setup_logging()
    started = time.monotonic()
    registry = Registry(args.registry)
    children = Children()

    def stop(signal_number: int, frame: FrameType | None) -> None:
        del frame
        # A training child stops at a step boundary with a checkpoint and the cycle reports
        # that it stopped early; anything else is interrupted here and resumes next time.
        if not children.forward(signal_number):
            raise StopRequestedError(signal.Signals(signal_number).name)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    cycle = None
    try:
        config = load_config_from_yaml(RecapConfig, args.config_path, args.overrides)
        request = CycleRequest(config, registry, args.end_date, args.warm_start)
        prepared = prepare(request)
        cycle = prepared[1]
        result = run_cycle(request, children, prepared)
    except NoNewDataError as error:
        result = CycleResult(Outcome.NO_NEW_DATA, None, f"no new data: {error}")
    except LockHeldError as error:
        print(f"error: another cycle is running: {error}", file=sys.stderr)
        return ExitCode.LOCKED
    except UserInputError as error:
        print(f"error: {error}", file=sys.stderr)
        return ExitCode.USER_ERROR
    except (ChildFailedError, LockLostError, StopRequestedError) as error:
        reason = f"stopped by {error}" if isinstance(error, StopRequestedError) else str(error)
        summary = f"failed: cycle {cycle}: {reason}; run again to resume"
        result = CycleResult(Outcome.FAILED, cycle, summary)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    document = report(result, registry, time.monotonic() - started)
    text = json.dumps(document, indent=1)
    if result.cycle is not None and result.outcome in (
        Outcome.PROMOTED,
        Outcome.REJECTED,
        Outcome.FAILED,
    ):
        registry.write_file(registry.report_file(result.cycle), text)
    if args.report_file:
        write_atomically(as_path(args.report_file), text)
    print(result.summary)
    return result.exit_code


if __name__ == "__main__":
    sys.exit(main())
