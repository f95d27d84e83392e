"""What every training job's ``training`` section shares: where its files go, how long it trains,
how often it logs, checkpoints and evaluates, and how long it waits for its peers.

Projects subclass :class:`BaseTrainingConfig` to add what only their steps need.
"""

from __future__ import annotations

import pydantic

from tml.core.config.base_config import BaseConfig, ConfigValueError, Field


class BaseTrainingConfig(BaseConfig):
    """Length, checkpointing, logging and evaluation cadence of a job."""

    save_dir: str = Field(
        "/tmp/model",
        description="Folder (or object-store URL) for checkpoints, logs and outputs; a recap "
        "training job holds it alone (its job.lock).",
    )
    num_train_steps: pydantic.PositiveInt = Field(
        1_000_000, description="Number of optimizer steps the job ends at."
    )
    initial_checkpoint_dir: str | None = Field(
        None,
        description="Warm start: load weights from this checkpoint and start at step 0 "
        "(ignored when save_dir already holds a checkpoint to resume).",
    )
    checkpoint_every_n: pydantic.PositiveInt = Field(
        1000, description="Steps between checkpoints (one is also written at the end)."
    )
    checkpoint_max_to_keep: pydantic.PositiveInt | None = Field(
        None, description="Keep only the newest N checkpoints (null: keep all)."
    )
    train_log_every_n: pydantic.PositiveInt = Field(
        1000, description="Steps between training log lines."
    )
    num_eval_steps: int = Field(
        16384,
        description="Batches per evaluation of each validation partition (< 0: the whole "
        "partition; 0: no evaluation).",
    )
    eval_log_every_n: pydantic.PositiveInt = Field(
        5000, description="Steps between evaluations during training."
    )
    eval_timeout_in_s: pydantic.PositiveFloat = Field(
        3600.0, description="How long a separate evaluator waits for a new checkpoint."
    )
    seed: int = Field(
        0, description="Seed of parameter initialisation, data shuffling and dropout."
    )
    collective_timeout_in_s: pydantic.PositiveFloat = Field(
        900.0,
        description="How long a collective (and joining the process group) waits for the "
        "slowest rank before the job fails instead of hanging. Longer than the slowest "
        "checkpoint write or evaluation pass, during which the other ranks may wait.",
    )
    step_timeout_in_s: pydantic.PositiveFloat | None = Field(
        900.0,
        description="A rank on which no training step (with the logging and checkpoint "
        "staging between steps; evaluation excluded) finishes within this many seconds fails "
        "the job, naming itself, the step and where it is stuck, then printing its stacks; "
        "torchrun then restarts the workers or ends the job (null: never).",
    )
    preemption_grace_period_in_s: pydantic.PositiveFloat = Field(
        25.0,
        description="After SIGTERM or SIGUSR1 reaches any rank, every rank stops at the next "
        "step boundary, writes a checkpoint and exits 0; a rank not done within this many "
        "seconds exits 1 instead. Keep it below the orchestrator's own grace period "
        "(Kubernetes terminationGracePeriodSeconds, default 30 s; torchrun --shutdown-timeout, "
        "default 30 s) and above the time of one step plus one checkpoint write.",
    )

    @pydantic.model_validator(mode="after")
    def _check_save_dir(self) -> BaseTrainingConfig:
        # An empty path would put checkpoints and logs into whatever folder the job starts in.
        if not self.save_dir.strip():
            raise ConfigValueError(
                "is empty; name a folder or an object-store URL for the job's files",
                ("save_dir",),
            )
        return self
