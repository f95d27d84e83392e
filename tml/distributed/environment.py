"""Distributed set-up: read torchrun's environment, pick device and backend, join the group.

One process per device. On GPU machines each local rank drives ``cuda:<local_rank>`` and the
group speaks NCCL for CUDA tensors and Gloo for CPU tensors (checkpoint coordination and object
collectives stay on the host). On CPU the group is Gloo. Without torchrun the job runs as a
single process that still has a (one-member) process group, so torchrec's sharding and
torch.distributed.checkpoint work unchanged.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import logging
import os
import signal
import sys
from collections.abc import Callable, Iterator, Mapping

import torch
import torch.distributed as dist

from tml.core.cli import exit_status
from tml.core.errors import UserInputError

logger = logging.getLogger(__name__)

# How long a collective waits for a straggler before the job fails (instead of hanging).
DEFAULT_TIMEOUT = datetime.timedelta(minutes=15)

_TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")
# Setting it in torchrun's environment gives each round of workers a fresh rendezvous store.
UNSHARED_STORE_VARIABLE = "TORCH_DISABLE_SHARE_RDZV_TCP_STORE"


@dataclasses.dataclass(frozen=True)
class DistributedEnvironment:
    """Where this process sits in the job and what it computes on."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    device: torch.device
    backend: str

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0, which logs, writes shared files and prints the plan."""
        return self.rank == 0


def init_distributed(
    device_type: str | None = None, timeout: datetime.timedelta = DEFAULT_TIMEOUT
) -> DistributedEnvironment:
    """Joins (or creates) the process group described by torchrun's environment variables.

    Args:
        device_type: "cuda" or "cpu"; by default CUDA when a device is visible.
        timeout: How long collectives wait for a straggler before failing.
    """
    if dist.is_initialized():
        raise RuntimeError("the process group is already initialised")
    present = [name for name in _TORCHRUN_VARIABLES if name in os.environ]
    launched = len(present) == len(_TORCHRUN_VARIABLES)
    if present and not launched:
        # Half a launcher environment would make each process train alone on a share of data.
        missing = [name for name in _TORCHRUN_VARIABLES if name not in os.environ]
        raise UserInputError(
            f"the environment sets {present} but not {missing}: launch with torchrun, or set "
            "none of them for a single process"
        )
    if launched:
        check_restartable(os.environ)
    rank = int(os.environ.get("RANK", 0))
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", 1))

    device_type = device_type or ("cuda" if torch.cuda.is_available() else "cpu")
    if device_type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise RuntimeError(
                f"local rank {local_rank} has no GPU: {torch.cuda.device_count()} visible; "
                "launch at most one process per GPU (torchrun --nproc_per_node)"
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "cpu:gloo,cuda:nccl"
    else:
        device = torch.device("cpu")
        backend = "gloo"

    if launched:
        dist.init_process_group(backend=backend, timeout=timeout, device_id=_device_id(device))
    else:
        # A single process still gets a group, so sharding and checkpointing need no special case.
        dist.init_process_group(
            backend=backend,
            store=dist.HashStore(),
            rank=0,
            world_size=1,
            timeout=timeout,
            device_id=_device_id(device),
        )
    environment = DistributedEnvironment(
        rank=rank,
        world_size=world_size,
        local_rank=local_rank,
        local_world_size=local_world_size,
        device=device,
        backend=backend,
    )
    logger.info(
        "rank %d of %d (local %d of %d) on %s, backend %s",
        rank,
        world_size,
        local_rank,
        local_world_size,
        device,
        backend,
    )
    return environment


class UnsafeRestartError(UserInputError):
    """torchrun would restart the workers into a hang (every worker finds it at once)."""

    same_on_every_rank = True


def check_restartable(environment: Mapping[str, str]) -> None:
    """Refuses a torchrun launch whose automatic restarts would hang.

    With ``--max-restarts`` above 0 and the rendezvous store shared with the workers (torchrun's
    default), every round of workers meets in the same store: a restarted round reads the
    addresses the killed round left there and blocks in Gloo's connect, or fails with "connection
    refused" (pytorch/pytorch#135712). Measured on this tree, 1 restart in 5 finished; with a store
    per round, every one did. The variable belongs to torchrun's own environment, which a worker
    cannot change, so the launch is refused at its first start rather than hanging at its first
    failure.

    Args:
        environment: This worker's environment, as torchrun set it.
    """
    restarts = int(environment.get("TORCHELASTIC_MAX_RESTARTS", "0"))
    if restarts > 0 and environment.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
        raise UnsafeRestartError(
            f"torchrun --max-restarts {restarts} would hang when it restarts: the workers share "
            f"the rendezvous store of the agent (pytorch/pytorch#135712); set "
            f"{UNSHARED_STORE_VARIABLE}=1 in torchrun's environment with the c10d rendezvous "
            "(--standalone or --rdzv-backend c10d), as docker/entrypoint.sh does"
        )


# Set by docker/entrypoint.sh for its workers: the launcher's process, told of a user error.
LAUNCHER_PID_VARIABLE = "TML_LAUNCHER_PID"
USER_ERROR_SIGNAL = signal.SIGUSR2


def report_user_error(environment: Mapping[str, str]) -> bool:
    """Tells the launcher that this worker stopped on a mistake in config or data, so that it
    ends the job instead of letting torchrun restart the workers into the same mistake.

    torchrun (torch 2.13's elastic agent) restarts a failed worker group whatever the exit
    code, up to ``--max-restarts``; it has no "do not retry" code. docker/entrypoint.sh, which
    every shipped launcher uses, names itself in ``TML_LAUNCHER_PID``; on this signal it
    freezes torchrun (so it restarts nothing), ends its workers and exits 2. Returns whether a
    launcher was told (not when the worker runs outside it).
    """
    launcher = environment.get(LAUNCHER_PID_VARIABLE)
    if not launcher or "TORCHELASTIC_RUN_ID" not in environment:
        return False
    try:
        os.kill(int(launcher), USER_ERROR_SIGNAL)
    except (ValueError, ProcessLookupError, PermissionError):
        return False
    return True


# How Gloo and NCCL report that the process at the other end of a connection went away.
_LOST_PEER_MESSAGES = (
    "Connection closed by peer",
    "Connection reset by peer",
    "Broken pipe",
    "remote process exited or there was a network error",
)


def lost_peer(error: BaseException) -> str | None:
    """The backend's one-line reason when ``error`` says another rank went away, else None.

    Such an error is a consequence: the rank that went away printed (or its launcher reports)
    the cause, and this rank's 50-line traceback would bury it.
    """
    if not isinstance(error, RuntimeError):
        return None
    message = str(error)
    for phrase in _LOST_PEER_MESSAGES:
        if phrase in message:
            return phrase
    return None


def shutdown_distributed() -> None:
    """Leaves the process group, if one was joined."""
    if dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def distributed_environment(
    device_type: str | None = None, timeout: datetime.timedelta = DEFAULT_TIMEOUT
) -> Iterator[DistributedEnvironment]:
    """``init_distributed`` for the duration of a ``with`` block."""
    environment = init_distributed(device_type, timeout)
    try:
        yield environment
    finally:
        shutdown_distributed()


def _device_id(device: torch.device) -> torch.device | None:
    # Binding NCCL to its device up front avoids a lazy, per-collective device guess.
    return device if device.type == "cuda" else None


# A rank that stopped because another went away (the failure is that rank's, not this one's).
PEER_LOST_EXIT = 1


def rank_exit_status(run: Callable[[], None], rank: int) -> int:
    """Runs one rank's job and returns its exit status, as ``tml.core.cli.exit_status`` does.

    Under torchrun each line is prefixed with the rank, and a rank that only lost its
    connection to a failed peer (which said why) prints one line saying so, not a traceback.
    """
    several = int(os.environ.get("WORLD_SIZE", 1)) > 1
    prefix = f"[rank {rank}] " if several else ""
    try:
        return exit_status(run, prefix=prefix, rank=rank)
    except RuntimeError as error:
        reason = lost_peer(error) if several else None
        if reason is None:
            raise
        print(f"{prefix}stopped: another rank went away ({reason})", file=sys.stderr)
        return PEER_LOST_EXIT
