import os
import signal

import pytest
import torch
import torch.distributed as dist

from tml.core.errors import UserInputError
from tml.distributed import init_distributed
from tml.distributed.environment import (
    LAUNCHER_PID_VARIABLE,
    USER_ERROR_SIGNAL,
    check_restartable,
    report_user_error,
)


def test_single_process_without_torchrun_gets_a_group(single_process_group):
    assert single_process_group.rank == 0
    assert single_process_group.world_size == 1
    assert single_process_group.is_main
    assert single_process_group.device == torch.device("cpu")
    assert single_process_group.backend == "gloo"
    assert dist.is_initialized() and dist.get_world_size() == 1
    value = torch.ones(3)
    dist.all_reduce(value)
    assert value.tolist() == [1.0, 1.0, 1.0]


def test_half_a_launcher_environment_is_refused(monkeypatch):
    for name in ("LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(UserInputError, match="launch with torchrun"):
        init_distributed("cpu")
    assert not dist.is_initialized()


def test_restarts_sharing_the_agents_rendezvous_store_are_refused():
    shared = {"TORCHELASTIC_MAX_RESTARTS": "2", "TORCHELASTIC_USE_AGENT_STORE": "True"}
    with pytest.raises(UserInputError, match="TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1"):
        check_restartable(shared)
    # A store per round of workers, or no restarts at all, cannot read a dead round's addresses.
    check_restartable({**shared, "TORCHELASTIC_USE_AGENT_STORE": "False"})
    check_restartable({**shared, "TORCHELASTIC_MAX_RESTARTS": "0"})


def test_a_mistake_is_reported_to_the_launcher_that_asked_for_it():
    received = []
    previous = signal.signal(USER_ERROR_SIGNAL, lambda number, frame: received.append(number))
    try:
        torchrun = {"TORCHELASTIC_RUN_ID": "job"}
        assert not report_user_error(torchrun)  # plain torchrun: no one to tell
        assert not report_user_error({LAUNCHER_PID_VARIABLE: str(os.getpid())})  # no torchrun
        assert report_user_error({**torchrun, LAUNCHER_PID_VARIABLE: str(os.getpid())})
        assert received == [USER_ERROR_SIGNAL]
    finally:
        signal.signal(USER_ERROR_SIGNAL, previous)
