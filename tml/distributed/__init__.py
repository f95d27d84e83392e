"""Process-group set-up and the few collectives the training loop needs."""

from tml.distributed.environment import (
    DistributedEnvironment,
    distributed_environment,
    init_distributed,
    lost_peer,
    shutdown_distributed,
)

__all__ = [
    "DistributedEnvironment",
    "distributed_environment",
    "init_distributed",
    "lost_peer",
    "shutdown_distributed",
]
