import argparse

import pytest

from tml.core.cli import USER_ERROR_EXIT, add_config_arguments, exit_status, parse_command_line
from tml.core.errors import UserInputError
from tml.distributed import lost_peer


class _AgreedError(UserInputError):
    same_on_every_rank = True


def _raise(error: Exception):
    def command() -> None:
        raise error

    return command


@pytest.mark.parametrize(
    ("error", "rank", "printed"),
    [
        (UserInputError("bad file"), 1, True),  # only the rank that found it knows
        (_AgreedError("diverged"), 0, True),
        (_AgreedError("diverged"), 1, False),  # rank 0 prints the copy every rank holds
    ],
)
def test_a_user_error_is_one_line_from_the_rank_that_should_say_it(capsys, error, rank, printed):
    assert exit_status(_raise(error), prefix=f"[rank {rank}] ", rank=rank) == USER_ERROR_EXIT
    stderr = capsys.readouterr().err
    assert stderr == (f"[rank {rank}] error: {error}\n" if printed else "")


def test_other_errors_are_not_swallowed():
    with pytest.raises(RuntimeError, match="a bug"):
        exit_status(_raise(RuntimeError("a bug")))


def test_a_lost_peer_is_told_from_other_runtime_errors():
    closed = RuntimeError("[gloo/transport/tcp/pair.cc:553] Connection closed by peer [::1]:5")
    assert lost_peer(closed) == "Connection closed by peer"
    assert lost_peer(RuntimeError("shape mismatch")) is None
    assert lost_peer(ValueError("Connection closed by peer")) is None


def test_overrides_may_come_anywhere_on_the_command_line():
    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    parser.add_argument("--mode", default="train")
    argv = ["a.b=1", "--config_path", "job.yaml", "tables[0].c=2", "--mode", "evaluate", "d=3"]
    args = parse_command_line(parser, argv)
    assert args.config_path == "job.yaml" and args.mode == "evaluate"
    assert args.overrides == ["a.b=1", "tables[0].c=2", "d=3"]
