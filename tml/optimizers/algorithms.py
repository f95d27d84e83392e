"""Builders for the generic optimizer config (:class:`tml.optimizers.config.OptimizerConfig`):
a torch optimizer over dense parameters, the arguments of a fused (in-backward) optimizer for
embedding tables, and the learning-rate schedule either one follows."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from tml.optimizers.config import (
    AdagradConfig,
    AdamConfig,
    LearningRate,
    OptimizerConfig,
    SgdConfig,
)
from tml.optimizers.fused import FusedOptimizerError, FusedSettings, fused_optimizer
from tml.optimizers.schedules import Schedule, build_schedule

__all__ = [
    "FusedOptimizerError",
    "build_dense_optimizer",
    "build_learning_rate_schedule",
    "fused_optimizer_arguments",
]

# The algorithms this config format offers, by their field (and fused algorithm) names.
_CHOICES = ("sgd", "adam", "adagrad")


def _algorithm(config: OptimizerConfig) -> SgdConfig | AdamConfig | AdagradConfig:
    name = config.chosen("optimizer")
    assert name is not None, "OptimizerConfig validation guarantees one algorithm"
    return getattr(config, name)


def build_learning_rate_schedule(config: OptimizerConfig) -> Schedule:
    """The rate at each step: the ``learning_rate`` schedule, else the algorithm's ``lr``."""
    return build_schedule(config.learning_rate or LearningRate(constant=_algorithm(config).lr))


def build_dense_optimizer(
    config: OptimizerConfig, parameters: Iterable[torch.Tensor]
) -> torch.optim.Optimizer:
    """A torch optimizer over ``parameters`` (its rate is set by the scheduler every step)."""
    algorithm = _algorithm(config)
    parameters = list(parameters)
    if isinstance(algorithm, SgdConfig):
        return torch.optim.SGD(parameters, lr=algorithm.lr, momentum=algorithm.momentum)
    if isinstance(algorithm, AdamConfig):
        return torch.optim.Adam(
            parameters, lr=algorithm.lr, betas=algorithm.betas, eps=algorithm.eps
        )
    return torch.optim.Adagrad(parameters, lr=algorithm.lr, eps=algorithm.eps)


def fused_optimizer_arguments(
    config: OptimizerConfig, device_type: str, *, where: str
) -> tuple[type[torch.optim.Optimizer], dict[str, Any]]:
    """The class and keyword arguments that give embedding tables this optimizer inside the
    backward pass (``torchrec.optim.apply_optimizer_in_backward``), as fbgemm's kernels take
    them: this config format's entry to :func:`tml.optimizers.fused.fused_optimizer`.

    Args:
        config: The tables' optimizer.
        device_type: "cuda" or "cpu": fbgemm's CPU kernels have no Adam.
        where: The config path of the tables, for messages.

    Raises:
        FusedOptimizerError: an algorithm or setting fbgemm has no kernel for here.
    """
    name = config.chosen("optimizer")
    assert name is not None, "OptimizerConfig validation guarantees one algorithm"
    algorithm = _algorithm(config)
    if isinstance(algorithm, SgdConfig):
        settings = FusedSettings(lr=algorithm.lr, momentum=algorithm.momentum)
    elif isinstance(algorithm, AdagradConfig):
        settings = FusedSettings(lr=algorithm.lr, eps=algorithm.eps)
    else:
        settings = FusedSettings(lr=algorithm.lr, eps=algorithm.eps, betas=algorithm.betas)
    return fused_optimizer(name, settings, device_type, where=where, choices=_CHOICES)
