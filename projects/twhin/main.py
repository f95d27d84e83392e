"""TwHIN's entry point: parse the config, set up logging and the process group, train.

    torchrun --standalone --nproc_per_node 2 -m projects.twhin.main \
        --config_path projects/twhin/config/tiny_cpu.yaml [dotted.path=value]

(installed as the ``tml-twhin`` command). Export is a command of its own (``tml-twhin-export``).
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys

from projects.twhin.config import TwhinConfig
from projects.twhin.train import run_training
from tml.core.cli import USER_ERROR_EXIT, add_config_arguments
from tml.core.config import load_config_from_yaml
from tml.core.errors import UserInputError
from tml.distributed import distributed_environment, rank_exit_status
from tml.observability.logging import setup_logging


def main(argv: list[str] | None = None) -> int:
    """Trains; a mistake in config or data is one line on stderr and exit 2."""
    parser = argparse.ArgumentParser(prog="tml-twhin", description="Train TwHIN embeddings.")
    add_config_arguments(parser)
    args = parser.parse_args(argv)
    rank = int(os.environ.get("RANK", 0))
    setup_logging(rank)
    try:
        config = load_config_from_yaml(TwhinConfig, args.config_path, args.overrides)
    except UserInputError as error:
        if rank == 0:
            print(f"error: {error}", file=sys.stderr)
        return USER_ERROR_EXIT

    def run() -> None:
        timeout = datetime.timedelta(seconds=config.training.collective_timeout_in_s)
        with distributed_environment(timeout=timeout) as environment:
            run_training(config, environment)

    return rank_exit_status(run, rank)


if __name__ == "__main__":
    sys.exit(main())
