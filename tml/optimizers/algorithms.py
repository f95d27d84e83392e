"""Builders for the generic optimizer config (:class:`tml.optimizers.config.OptimizerConfig`):
a torch optimizer over dense parameters, the arguments of a fused (in-backward) optimizer for
embedding tables, and the learning-rate schedule either one follows."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torchrec.optim as torchrec_optim

from tml.core.errors import UserInputError
from tml.optimizers.config import (
    AdagradConfig,
    AdamConfig,
    LearningRate,
    OptimizerConfig,
    SgdConfig,
)
from tml.optimizers.schedules import Schedule, build_schedule


class FusedOptimizerError(UserInputError):
    """A table's optimizer has no fused kernel on this device."""


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
    backward pass (``torchrec.optim.apply_optimizer_in_backward``), as FBGEMM's kernels take them.

    Args:
        config: The tables' optimizer.
        device_type: "cuda" or "cpu": FBGEMM's CPU kernels have no Adam.
        where: The config path of the tables, for messages.

    Raises:
        FusedOptimizerError: an algorithm or setting FBGEMM has no kernel for here.
    """
    algorithm = _algorithm(config)
    if isinstance(algorithm, SgdConfig):
        if algorithm.momentum:
            raise FusedOptimizerError(
                f"{where}: sgd.momentum {algorithm.momentum}: FBGEMM's fused embedding SGD has "
                "no momentum; use momentum 0, or adagrad"
            )
        return torch.optim.SGD, {"lr": algorithm.lr}
    if isinstance(algorithm, AdagradConfig):
        return torch.optim.Adagrad, {"lr": algorithm.lr, "eps": algorithm.eps}
    if device_type != "cuda":
        raise FusedOptimizerError(
            f"{where}: FBGEMM has no fused Adam for embedding tables on CPU; use sgd or adagrad "
            "here, or train on GPUs"
        )
    # torchrec's Adam accepts FBGEMM's own argument names (beta1, beta2), which its kernel reads.
    beta_1, beta_2 = algorithm.betas
    return torchrec_optim.Adam, {
        "lr": algorithm.lr,
        "eps": algorithm.eps,
        "beta1": beta_1,
        "beta2": beta_2,
    }
