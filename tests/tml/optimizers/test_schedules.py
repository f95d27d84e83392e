import math

import pydantic
import pytest

from tml.optimizers.config import LearningRate
from tml.optimizers.schedules import build_schedule


def schedule(**variant):
    return build_schedule(LearningRate(**variant))


def test_constant():
    assert schedule(constant=0.3)(0) == 0.3
    assert schedule(constant=0.3)(10**6) == 0.3


def test_linear_ramp_to_constant():
    lr = schedule(linear_ramp_to_constant={"learning_rate": 1.0, "num_ramp_steps": 4})
    assert [lr(step) for step in (0, 1, 2, 4, 100)] == [0.0, 0.25, 0.5, 1.0, 1.0]


def test_linear_ramp_to_cosine():
    lr = schedule(
        linear_ramp_to_cosine={
            "learning_rate": 1.0,
            "final_learning_rate": 0.1,
            "num_ramp_steps": 10,
            "final_num_steps": 20,
        }
    )
    assert lr(5) == pytest.approx(0.5)
    assert lr(10) == pytest.approx(1.0)
    assert lr(15) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr(20) == pytest.approx(0.1)
    assert lr(1000) == pytest.approx(0.1)


def test_piecewise_constant_uses_bisect_right():
    lr = schedule(
        piecewise_constant={"learning_rate_boundaries": [2, 5], "learning_rate_values": [1, 2, 3]}
    )
    assert [lr(step) for step in (0, 1, 2, 4, 5, 9)] == [1, 1, 2, 2, 3, 3]


@pytest.mark.parametrize(
    ("variant", "message"),
    [
        ({}, "exactly one of"),
        (
            {
                "constant": 1.0,
                "piecewise_constant": None,
                "linear_ramp_to_constant": {"learning_rate": 1.0, "num_ramp_steps": 1},
            },
            "got 'constant', 'linear_ramp_to_constant'",
        ),
        (
            {"linear_ramp_to_constant": {"learning_rate": 1.0, "num_ramp_steps": 0}},
            "greater than 0",
        ),
        (
            {
                "piecewise_constant": {
                    "learning_rate_boundaries": [3, 3],
                    "learning_rate_values": [1, 2, 3],
                }
            },
            "strictly increasing",
        ),
        (
            {"piecewise_constant": {"learning_rate_boundaries": [3], "learning_rate_values": [1]}},
            "one more value",
        ),
        (
            {
                "linear_ramp_to_cosine": {
                    "learning_rate": 1,
                    "final_learning_rate": 0,
                    "num_ramp_steps": 5,
                    "final_num_steps": 5,
                }
            },
            "greater than",
        ),
        ({"constant": -1.0}, "greater than or equal to 0"),
    ],
)
def test_insane_schedules_are_rejected(variant, message):
    with pytest.raises(pydantic.ValidationError, match=message):
        LearningRate(**variant)
