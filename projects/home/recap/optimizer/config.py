"""Optimizer and learning rates of the ranker: Adam, with a schedule per tower and backbone."""

from __future__ import annotations

import pydantic

from tml.core.config import BaseConfig, Field
from tml.optimizers.config import LearningRate


class RecapAdamConfig(BaseConfig):
    """Adam's constants, shared by every dense parameter group."""

    beta_1: float = Field(0.9, ge=0.0, lt=1.0, description="Decay of the first moment.")
    beta_2: float = Field(0.999, ge=0.0, lt=1.0, description="Decay of the second moment.")
    epsilon: pydantic.PositiveFloat = Field(
        1e-7, description="Added to the denominator for numerical stability."
    )


class MultiTaskLearningRates(BaseConfig):
    """A schedule per tower, and one for the backbone (everything dense that is not a tower)."""

    tower_learning_rates: dict[str, LearningRate] = Field(
        description="Task name -> schedule of that task's tower; every model task needs one."
    )
    backbone_learning_rate: LearningRate | None = Field(
        None,
        description="Schedule of the shared parameters (backbone, featurization, embeddings "
        "inside the dense model); required when the model has any.",
    )


class RecapOptimizerConfig(BaseConfig):
    """Adam over parameter groups, each at its own learning-rate schedule."""

    multi_task_learning_rates: MultiTaskLearningRates | None = Field(
        None, description="One schedule per tower plus the backbone's.", one_of="lr"
    )
    single_task_learning_rate: LearningRate | None = Field(
        None, description="One schedule for every dense parameter.", one_of="lr"
    )
    adam: RecapAdamConfig = Field(RecapAdamConfig(), description="Adam's constants.")
