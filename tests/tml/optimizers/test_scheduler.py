import pytest
import torch

from tml.optimizers.config import LearningRate
from tml.optimizers.scheduler import LearningRateScheduler
from tml.optimizers.schedules import build_schedule


def test_each_group_follows_its_own_schedule():
    first = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    second = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = LearningRateScheduler(
        {
            "ramp": (
                first,
                build_schedule(
                    LearningRate(
                        linear_ramp_to_constant={"learning_rate": 0.4, "num_ramp_steps": 4}
                    )
                ),
            ),
            "constant": (second, build_schedule(LearningRate(constant=0.01))),
        }
    )
    assert scheduler.apply(0) == {"ramp": 0.0, "constant": 0.01}
    assert scheduler.apply(2) == {"ramp": pytest.approx(0.2), "constant": 0.01}
    assert first.param_groups[0]["lr"] == pytest.approx(0.2)
    assert second.param_groups[0]["lr"] == 0.01

    restored = LearningRateScheduler({"ramp": (first, build_schedule(LearningRate(constant=0.4)))})
    restored.load_state_dict(scheduler.state_dict())
    assert restored.last_step == 2
