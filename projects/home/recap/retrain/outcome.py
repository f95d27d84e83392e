"""The exit statuses of the retraining commands, for orchestrators to act on."""

from __future__ import annotations

import enum

from tml.core.cli import USER_ERROR_EXIT


class ExitCode(enum.IntEnum):
    """What a retraining cycle (or registry command) ended with."""

    # The candidate was promoted, or the cycle had already finished (nothing was done).
    PROMOTED = 0
    # Training, evaluation or export failed (a log in the cycle's folder says why); re-run to
    # resume where it stopped.
    FAILED = 1
    # The command line or config is wrong (one line on stderr says what); re-running won't help.
    USER_ERROR = USER_ERROR_EXIT
    # The gate kept the promoted model; the candidate stays in the registry.
    REJECTED = 3
    # Another cycle or command holds the registry's lock; try again later (EX_TEMPFAIL).
    LOCKED = 75
    # No complete data folder newer than the last finished cycle (Airflow's BashOperator skips
    # a task that exits with 99 by default).
    NO_NEW_DATA = 99
