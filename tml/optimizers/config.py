"""Learning-rate schedule declarations, shared by every optimizer in tml.

A ``LearningRate`` is written as sibling fields of which exactly one is set, as in the original:

.. code-block:: yaml

    constant: null
    linear_ramp_to_constant: {learning_rate: 0.001, num_ramp_steps: 1000}
    linear_ramp_to_cosine: null
    piecewise_constant: null
"""

from __future__ import annotations

import itertools

import pydantic

from tml.core.config import BaseConfig, Field


class PiecewiseConstant(BaseConfig):
    """``values[i]`` from the step where ``boundaries[i-1]`` is reached (``bisect_right``)."""

    learning_rate_boundaries: list[pydantic.NonNegativeInt] = Field(
        description="Steps at which the learning rate changes, strictly increasing."
    )
    learning_rate_values: list[pydantic.NonNegativeFloat] = Field(
        description="Learning rates before the first boundary, between boundaries and after the "
        "last one: exactly one more value than boundaries."
    )

    @pydantic.model_validator(mode="after")
    def _check_shape(self) -> PiecewiseConstant:
        bounds = self.learning_rate_boundaries
        if any(later <= earlier for earlier, later in itertools.pairwise(bounds)):
            raise ValueError(f"learning_rate_boundaries must be strictly increasing, got {bounds}")
        if len(self.learning_rate_values) != len(bounds) + 1:
            raise ValueError(
                f"learning_rate_values needs one more value than learning_rate_boundaries "
                f"({len(bounds) + 1}), got {len(self.learning_rate_values)}"
            )
        return self


class LinearRampToConstant(BaseConfig):
    """``min(learning_rate, learning_rate * step / num_ramp_steps)``."""

    learning_rate: pydantic.NonNegativeFloat = Field(
        description="The learning rate reached at the end of the ramp and kept after it."
    )
    num_ramp_steps: pydantic.PositiveInt = Field(
        description="Number of steps to ramp up linearly from zero."
    )


class LinearRampToCosine(BaseConfig):
    """A linear ramp from zero, then a half-cosine decay to ``final_learning_rate``."""

    learning_rate: pydantic.NonNegativeFloat = Field(
        description="The peak learning rate, reached at the end of the ramp."
    )
    final_learning_rate: pydantic.NonNegativeFloat = Field(
        description="The learning rate at final_num_steps and after."
    )
    num_ramp_steps: pydantic.PositiveInt = Field(
        description="Number of steps to ramp up linearly from zero."
    )
    final_num_steps: pydantic.PositiveInt = Field(
        description="Step at which the cosine decay ends; must exceed num_ramp_steps."
    )

    @pydantic.model_validator(mode="after")
    def _check_steps(self) -> LinearRampToCosine:
        if self.final_num_steps <= self.num_ramp_steps:
            raise ValueError(
                f"final_num_steps ({self.final_num_steps}) must be greater than "
                f"num_ramp_steps ({self.num_ramp_steps})"
            )
        return self


class LearningRate(BaseConfig):
    """A learning-rate schedule: exactly one of the variants below."""

    constant: pydantic.NonNegativeFloat | None = Field(
        None, description="A fixed learning rate.", one_of="schedule"
    )
    linear_ramp_to_cosine: LinearRampToCosine | None = Field(
        None, description="Linear warm-up, then cosine decay.", one_of="schedule"
    )
    linear_ramp_to_constant: LinearRampToConstant | None = Field(
        None, description="Linear warm-up, then constant.", one_of="schedule"
    )
    piecewise_constant: PiecewiseConstant | None = Field(
        None, description="Step-wise constant values.", one_of="schedule"
    )


# Optimizer algorithms -------------------------------------------------------------------------
# The original's generic optimizer config, shared by every project: exactly one algorithm, with
# its constants, and optionally a schedule that sets its rate at every step.


class SgdConfig(BaseConfig):
    """Stochastic gradient descent."""

    lr: pydantic.NonNegativeFloat = Field(
        description="Learning rate, used at every step when no learning_rate schedule is given."
    )
    momentum: float = Field(0.0, ge=0.0, lt=1.0, description="Momentum factor (0: none).")


class AdamConfig(BaseConfig):
    """Adam (Kingma and Ba, 2015)."""

    lr: pydantic.NonNegativeFloat = Field(
        description="Learning rate, used at every step when no learning_rate schedule is given."
    )
    betas: tuple[float, float] = Field(
        (0.9, 0.999), description="Decay of the first and second moment estimates."
    )
    eps: pydantic.PositiveFloat = Field(
        1e-7, description="Added to the denominator for numerical stability."
    )

    @pydantic.model_validator(mode="after")
    def _check_betas(self) -> AdamConfig:
        if not all(0.0 <= beta < 1.0 for beta in self.betas):
            raise ValueError(f"betas must lie in [0, 1), got {list(self.betas)}")
        return self


class AdagradConfig(BaseConfig):
    """Adagrad: each coordinate's rate divided by the root of its summed squared gradients."""

    lr: pydantic.NonNegativeFloat = Field(
        description="Learning rate, used at every step when no learning_rate schedule is given."
    )
    eps: pydantic.PositiveFloat = Field(
        1e-10,
        description="Added to the denominator; positive, so a coordinate that has seen no "
        "gradient yet does not divide zero by zero.",
    )


class OptimizerConfig(BaseConfig):
    """One optimizer algorithm and, optionally, the schedule of its learning rate."""

    learning_rate: LearningRate | None = Field(
        None,
        description="Schedule of the learning rate, applied at every step (null: the "
        "algorithm's lr throughout).",
    )
    adam: AdamConfig | None = Field(None, description="Adam.", one_of="optimizer")
    sgd: SgdConfig | None = Field(None, description="SGD.", one_of="optimizer")
    adagrad: AdagradConfig | None = Field(None, description="Adagrad.", one_of="optimizer")
