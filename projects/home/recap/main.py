"""The ranker's entry point: parse the config, set up logging and the process group, run the
mode, tear down.

    torchrun --standalone --nproc_per_node 2 -m projects.home.recap.main \
        --config_path projects/home/recap/config/local_cpu.yaml [--mode train] [dotted.path=value]

(installed as the ``tml-recap`` command). Export and the report are commands of their own.
"""

from __future__ import annotations

import argparse
import datetime
import enum
import os
import sys
from collections.abc import Callable

from projects.home.recap.config import RecapConfig
from projects.home.recap.evaluate import run_evaluator
from projects.home.recap.inference import run_inference
from projects.home.recap.train import run_training
from tml.core.cli import USER_ERROR_EXIT, add_config_arguments, parse_command_line
from tml.core.config import load_config_from_yaml
from tml.core.errors import UserInputError
from tml.distributed import (
    DistributedEnvironment,
    distributed_environment,
    rank_exit_status,
    report_user_error,
)
from tml.observability.logging import setup_logging


class JobMode(enum.StrEnum):
    """What a run of the entry point does."""

    TRAIN = "train"
    EVALUATE = "evaluate"
    INFERENCE = "inference"


MODES: dict[JobMode, Callable[[RecapConfig, DistributedEnvironment], object]] = {
    JobMode.TRAIN: run_training,
    JobMode.EVALUATE: run_evaluator,
    JobMode.INFERENCE: run_inference,
}


def build_argument_parser() -> argparse.ArgumentParser:
    """The command line: a config, a mode, and dotted overrides of the config."""
    parser = argparse.ArgumentParser(
        prog="tml-recap", description="Train, evaluate or run the ranker."
    )
    add_config_arguments(parser)
    parser.add_argument(
        "--mode",
        choices=[mode.value for mode in JobMode],
        default=JobMode.TRAIN.value,
        help="train (default), evaluate (follow a training job's checkpoints) or inference.",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Runs the chosen mode; a mistake in config or data is one line on stderr and exit 2.

    Under torchrun, the rank that finds a mistake prints it; an error every rank agrees on is
    printed by rank 0; a rank that only lost its connection to a failed one says so in a line.
    A mistake is not retried: the launcher (docker/entrypoint.sh) is told to end the job.
    """
    status = _run(parse_command_line(build_argument_parser(), argv))
    if status == USER_ERROR_EXIT:
        report_user_error(os.environ)
    return status


def _run(args: argparse.Namespace) -> int:
    # torchrun's variables name this process's rank before the process group exists; logging is
    # set up first so that everything, the distributed set-up included, logs through it.
    rank = int(os.environ.get("RANK", 0))
    setup_logging(rank)
    try:
        config = load_config_from_yaml(RecapConfig, args.config_path, args.overrides)
    except UserInputError as error:
        if rank == 0:  # every rank reads the same config: one copy of the message is enough
            print(f"error: {error}", file=sys.stderr)
        return USER_ERROR_EXIT

    def run() -> None:
        timeout = datetime.timedelta(seconds=config.training.collective_timeout_in_s)
        with distributed_environment(timeout=timeout) as environment:
            MODES[JobMode(args.mode)](config, environment)

    return rank_exit_status(run, rank)


if __name__ == "__main__":
    sys.exit(main())
