"""Process-group set-up and the few collectives the training loop needs."""

from tml.distributed.batch_norm import average_running_statistics, running_statistics
from tml.distributed.environment import (
    DistributedEnvironment,
    distributed_environment,
    init_distributed,
    lost_peer,
    rank_exit_status,
    report_user_error,
    shutdown_distributed,
)

__all__ = [
    "DistributedEnvironment",
    "average_running_statistics",
    "distributed_environment",
    "init_distributed",
    "lost_peer",
    "rank_exit_status",
    "report_user_error",
    "running_statistics",
    "shutdown_distributed",
]
