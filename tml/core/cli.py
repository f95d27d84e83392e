"""What every tml command line shares: a config file with dotted overrides, and user mistakes
reported as one line with exit status 2."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from tml.core.errors import UserInputError

USER_ERROR_EXIT = 2


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """``--config_path`` and positional ``dotted.path=value`` overrides; parse the command line
    with :func:`parse_command_line` so that overrides may come anywhere in it."""
    parser.add_argument("--config_path", required=True, help="YAML config file.")
    parser.add_argument(
        "overrides",
        nargs="*",
        help="Config overrides: dotted.path=value (typed by the schema), anywhere on the line; "
        "list items as tables[0].name or tables.0.name.",
    )


def parse_command_line(
    parser: argparse.ArgumentParser, argv: list[str] | None = None
) -> argparse.Namespace:
    """Parses ``argv`` with overrides before, between or after the options.

    Plain ``parse_args`` takes positionals in one run, so ``x=1 --mode train y=2`` would fail
    on ``y=2``; argparse's intermixed parsing collects them all.
    """
    return parser.parse_intermixed_args(argv)


def exit_status(
    command: Callable[[], object], *, prefix: str = "", show: bool = True, rank: int = 0
) -> int:
    """Runs ``command``: 0, or ``error: <message>`` on stderr and 2 for a user mistake.

    Args:
        command: The work of the command line.
        prefix: Put before ``error:`` (e.g. the rank).
        show: Print the message (False where another process prints the same one).
        rank: This process's rank: of an error every rank raises, only rank 0 prints its copy.
    """
    try:
        command()
    except UserInputError as error:
        if show and (rank == 0 or not error.same_on_every_rank):
            print(f"{prefix}error: {error}", file=sys.stderr)
        return USER_ERROR_EXIT
    return 0
