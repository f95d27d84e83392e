"""Fused (in-backward) optimizers of embedding tables: which torchrec class and which fbgemm
arguments an algorithm is, and whether this device's kernel runs it. Every project that trains
tables maps its own config format onto :class:`FusedSettings` and calls :func:`fused_optimizer`.

A table's optimizer is attached to its weight with torchrec's ``apply_optimizer_in_backward``
before planning; the sharder turns the class into fbgemm's ``EmbOptimType`` and passes the
keyword arguments, under fbgemm's own names, to the table-batched kernel.

What fbgemm-gpu 1.8 runs, measured on its kernels:

* CPU: exact SGD, exact Adagrad and exact row-wise Adagrad, without momentum. Adam and partial
  row-wise Adam fail an assertion inside the kernel's constructor, and the CPU kernels ignore
  weight decay.
* GPU: all of them, with weight decay.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

import torch
import torchrec.optim as torchrec_optim
from fbgemm_gpu.split_table_batched_embeddings_ops_training import WeightDecayMode

from tml.core.errors import UserInputError


class FusedOptimizerError(UserInputError):
    """A table's optimizer has no fused kernel where the job runs it; the message names the
    table (its config path) and the device."""


@dataclasses.dataclass(frozen=True)
class FusedAlgorithm:
    """One algorithm fbgemm's table-batched kernels implement.

    Attributes:
        fused_class: The class given to ``apply_optimizer_in_backward``; torchrec maps it to
            fbgemm's optimizer type.
        runs_on_cpu: Whether fbgemm-gpu 1.8's CPU kernel runs it.
        takes_decay_mode: Whether its kernel reads ``weight_decay_mode`` (row-wise Adagrad's
            does, and applies no decay without it).
    """

    fused_class: type[torch.optim.Optimizer]
    runs_on_cpu: bool
    takes_decay_mode: bool = False


# By the name configs use for the algorithm.
FUSED_ALGORITHMS: dict[str, FusedAlgorithm] = {
    "sgd": FusedAlgorithm(torchrec_optim.SGD, runs_on_cpu=True),
    "adagrad": FusedAlgorithm(torchrec_optim.Adagrad, runs_on_cpu=True),
    "rowwise_adagrad": FusedAlgorithm(
        torchrec_optim.RowWiseAdagrad, runs_on_cpu=True, takes_decay_mode=True
    ),
    "adam": FusedAlgorithm(torchrec_optim.Adam, runs_on_cpu=False),
    "partial_rowwise_adam": FusedAlgorithm(torchrec_optim.PartialRowWiseAdam, runs_on_cpu=False),
}


@dataclasses.dataclass(frozen=True)
class FusedSettings:
    """An algorithm's hyperparameters, whatever config format they came from.

    Attributes:
        lr: The learning rate (for a scheduled rate, a placeholder the scheduler overwrites).
        eps: The denominator's epsilon (Adagrad, Adam); None for SGD.
        betas: Adam's moment decays; None for the others.
        weight_decay: torch's meaning, an L2 term added to the gradient; None where the
            config has no such setting (fbgemm's default, none, applies).
        momentum: SGD's momentum, which no fused kernel has; only 0 is accepted.
    """

    lr: float
    eps: float | None = None
    betas: tuple[float, float] | None = None
    weight_decay: float | None = None
    momentum: float = 0.0


def check_fused_optimizer(
    name: str,
    settings: FusedSettings,
    device_type: str,
    *,
    where: str,
    choices: Iterable[str],
) -> FusedAlgorithm:
    """The algorithm ``name``, once its kernel is known to run it on ``device_type``.

    Args:
        name: The algorithm, a key of :data:`FUSED_ALGORITHMS`.
        settings: Its hyperparameters.
        device_type: "cuda" or "cpu".
        where: The config path of the table(s), for messages.
        choices: The algorithm names the caller's config offers, for the advice of a message.

    Raises:
        FusedOptimizerError: an algorithm or setting fbgemm has no kernel for here.
    """
    algorithm = FUSED_ALGORITHMS.get(name)
    if algorithm is None:
        raise FusedOptimizerError(f"{where}: optimizer '{name}' has no entry in FUSED_ALGORITHMS")
    if settings.momentum:
        raise FusedOptimizerError(
            f"{where}: {name}.momentum {settings.momentum}: fbgemm's fused embedding {name} has "
            "no momentum; use momentum 0, or an adaptive algorithm"
        )
    if device_type == "cuda":
        return algorithm
    if not algorithm.runs_on_cpu:
        usable = [choice for choice in choices if FUSED_ALGORITHMS[choice].runs_on_cpu]
        raise FusedOptimizerError(
            f"{where}: optimizer {name} has no {device_type} kernel in fbgemm-gpu (it runs on "
            f"cuda); on {device_type} choose one of {usable}"
        )
    if settings.weight_decay:
        raise FusedOptimizerError(
            f"{where}: {name}.weight_decay is ignored by fbgemm-gpu's {device_type} kernel; set "
            f"it to 0 on {device_type} (it applies on cuda)"
        )
    return algorithm


def fused_arguments(name: str, settings: FusedSettings) -> dict[str, Any]:
    """fbgemm's keyword arguments for the algorithm ``name`` (checked or not)."""
    arguments: dict[str, Any] = {"lr": settings.lr}
    if settings.betas is not None:
        # torchrec's Adam accepts fbgemm's own argument names, which its kernel reads.
        arguments["beta1"], arguments["beta2"] = settings.betas
    if settings.eps is not None:
        arguments["eps"] = settings.eps
    if settings.weight_decay is not None:
        arguments["weight_decay"] = settings.weight_decay
        if FUSED_ALGORITHMS[name].takes_decay_mode:
            arguments["weight_decay_mode"] = (
                WeightDecayMode.L2 if settings.weight_decay else WeightDecayMode.NONE
            )
    return arguments


def fused_optimizer(
    name: str,
    settings: FusedSettings,
    device_type: str,
    *,
    where: str,
    choices: Iterable[str],
) -> tuple[type[torch.optim.Optimizer], dict[str, Any]]:
    """The class and keyword arguments for ``apply_optimizer_in_backward`` that give tables the
    algorithm ``name``, checked against ``device_type``'s kernel (arguments as for
    :func:`check_fused_optimizer`).

    Raises:
        FusedOptimizerError: an algorithm or setting fbgemm has no kernel for here.
    """
    algorithm = check_fused_optimizer(name, settings, device_type, where=where, choices=choices)
    return algorithm.fused_class, fused_arguments(name, settings)
