"""Learning-rate schedules: a declared ``LearningRate`` becomes a function of the step."""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable

from tml.optimizers.config import (
    LearningRate,
    LinearRampToConstant,
    LinearRampToCosine,
    PiecewiseConstant,
)

Schedule = Callable[[int], float]


def _constant(value: float) -> Schedule:
    return lambda step: value


def _linear_ramp_to_constant(config: LinearRampToConstant) -> Schedule:
    def schedule(step: int) -> float:
        return min(config.learning_rate, config.learning_rate * step / config.num_ramp_steps)

    return schedule


def _linear_ramp_to_cosine(config: LinearRampToCosine) -> Schedule:
    peak, final = config.learning_rate, config.final_learning_rate
    ramp, end = config.num_ramp_steps, config.final_num_steps

    def schedule(step: int) -> float:
        if step < ramp:
            return peak * step / ramp
        if step >= end:
            return final
        progress = (step - ramp) / (end - ramp)
        return final + (peak - final) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return schedule


def _piecewise_constant(config: PiecewiseConstant) -> Schedule:
    bounds, values = config.learning_rate_boundaries, config.learning_rate_values
    return lambda step: values[bisect.bisect_right(bounds, step)]


_BUILDERS: dict[str, Callable[..., Schedule]] = {
    "constant": _constant,
    "linear_ramp_to_constant": _linear_ramp_to_constant,
    "linear_ramp_to_cosine": _linear_ramp_to_cosine,
    "piecewise_constant": _piecewise_constant,
}


def build_schedule(config: LearningRate) -> Schedule:
    """The function ``step -> learning rate`` that ``config`` declares."""
    variant = config.chosen("schedule")
    assert variant is not None, "LearningRate validation guarantees one variant"
    return _BUILDERS[variant](getattr(config, variant))
