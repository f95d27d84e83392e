"""Sets each optimizer's learning rate from its own schedule, every step."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from tml.optimizers.schedules import Schedule


class ParamGroupOwner(Protocol):
    """What the scheduler sets rates on: a torch optimizer, or a selection of its param groups."""

    @property
    def param_groups(self) -> list[dict[str, Any]]: ...


class LearningRateScheduler:
    """Per-group learning rates as functions of the optimizer step.

    Step ``k`` (0-based: the k-th update) uses ``schedule(k)``, as torch's LambdaLR does. Call
    :meth:`apply` before each step's forward: fused embedding optimizers apply their update
    inside the backward pass, so their rate must be set before it.

    Args:
        groups: Group name -> (optimizer, or param groups, that share the rate; schedule).
    """

    def __init__(self, groups: Mapping[str, tuple[ParamGroupOwner, Schedule]]) -> None:
        self._groups = dict(groups)
        self.last_step: int | None = None

    @property
    def group_names(self) -> list[str]:
        return list(self._groups)

    def apply(self, step: int) -> dict[str, float]:
        """Sets every group's learning rate for ``step``; returns them by group name."""
        rates = {}
        for name, (optimizer, schedule) in self._groups.items():
            rate = float(schedule(step))
            for param_group in optimizer.param_groups:
                param_group["lr"] = rate
            rates[name] = rate
        self.last_step = step
        return rates

    def state_dict(self) -> dict[str, Any]:
        return {"last_step": -1 if self.last_step is None else self.last_step}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        last_step = int(state["last_step"])
        if last_step >= 0:
            self.apply(last_step)
