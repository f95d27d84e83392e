"""Standard-library logging, configured once at start-up."""

from __future__ import annotations

import logging
import sys
import warnings

# Libraries whose INFO/WARNING chatter would bury the job's own log lines.
_QUIET_LOGGERS = ("torchrec", "torch.distributed", "fbgemm_gpu", "torch.fx._symbolic_trace")


def _quiet_library_records(record: logging.LogRecord) -> bool:
    # fbgemm logs its kernel set-up through the root logger, so the logger name cannot tell it
    # apart; the source file can.
    library = any(f"/{name.split('.')[0]}/" in record.pathname for name in _QUIET_LOGGERS)
    return record.levelno >= logging.WARNING or not library


def setup_logging(rank: int = 0, level: int = logging.INFO) -> None:
    """Logs to stderr, one line per record, prefixed with the rank.

    Rank 0 logs at ``level``; other ranks only warnings and errors, so that an N-rank job prints
    one copy of each progress line.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_quiet_library_records)
    handler.setFormatter(
        logging.Formatter(
            f"%(asctime)s [rank {rank}] %(levelname)s %(name)s: %(message)s", "%H:%M:%S"
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level if rank == 0 else logging.WARNING)
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    # torchrec and fbgemm announce deprecations and optional kernels on import; they are not
    # actionable for users of this project.
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"(torchrec|fbgemm_gpu)")
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"torchrec")
    warnings.filterwarnings("ignore", category=UserWarning, module=r"torchrec")
    # torchrec's sharded tables are ShardedTensors, which torch announces it will replace.
    warnings.filterwarnings("ignore", category=FutureWarning, message=r".*use DTensor")
    warnings.filterwarnings("ignore", message=r"torch.distributed is disabled")
    # torchmetrics 1.0.3 (pinned by torchrec) indexes in a way torch announces it will change.
    warnings.filterwarnings("ignore", category=UserWarning, module=r"torchmetrics")
