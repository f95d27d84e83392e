"""Optimizers of the large tables: fbgemm's fused (in-backward) optimizers, as torchrec exposes
them, chosen per table.

A table's optimizer is attached to its weight with torchrec's ``apply_optimizer_in_backward``
before planning: the planner sizes the optimizer state from it, and the sharder turns the class
and its keyword arguments into the fused parameters of fbgemm's table-batched kernel (the class
becomes an ``EmbOptimType``, the arguments keep fbgemm's names). Tables whose fused parameters
are equal share one kernel, and a kernel has one learning rate; so every table with an optimizer
of its own carries a private ``_batch_key`` (a grouping key torchrec drops before building the
kernel), and a kernel never mixes two schedules.

What fbgemm-gpu 1.8 runs, measured on its kernels:

* CPU: exact SGD and exact row-wise Adagrad (and exact Adagrad). Adam and partial row-wise Adam
  fail an assertion inside the kernel's constructor, and the CPU kernels ignore weight decay.
* GPU: all four, with weight decay.

Replicated tables (``data_parallel``, on the dense kernel) are trained by a plain torch
optimizer instead; torchrec's ``RowWiseAdagrad`` computes the same update as the fused kernel.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torchrec.optim as torchrec_optim
from fbgemm_gpu.split_table_batched_embeddings_ops_training import WeightDecayMode
from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward

from projects.home.recap.embedding.config import (
    EmbeddingBagConfig,
    EmbeddingOptimizerConfig,
    LargeEmbeddingsConfig,
)
from tml.core.errors import UserInputError

# torchrec's grouping key: tables with different values never share a kernel; it is removed
# from the fused parameters before fbgemm sees them.
_GROUPING_KEY = "_batch_key"

OptimizerFactory = Callable[[list[torch.Tensor]], torch.optim.Optimizer]


class TableOptimizerError(UserInputError):
    """A table's optimizer cannot run where the job runs it; the message names the table."""


@dataclass(frozen=True)
class TableAlgorithm:
    """One optimizer a table can have.

    Attributes:
        fused_class: The class given to ``apply_optimizer_in_backward``; torchrec maps it to
            fbgemm's optimizer type.
        fused_arguments: fbgemm's keyword arguments from the algorithm's config.
        runs_on_cpu: Whether fbgemm-gpu 1.8's CPU kernel runs it.
        replicated: The torch optimizer of a replicated (dense kernel) table, or None when
            there is none that computes the same update.
    """

    fused_class: type[torch.optim.Optimizer]
    fused_arguments: Callable[[Any], dict[str, Any]]
    runs_on_cpu: bool
    replicated: Callable[[Any], OptimizerFactory] | None


def _no_arguments(config: Any) -> dict[str, Any]:
    return {}


def _adagrad_arguments(config: Any) -> dict[str, Any]:
    return {
        "eps": config.epsilon,
        "weight_decay": config.weight_decay,
        # torch's meaning of weight_decay: an L2 term added to the gradient.
        "weight_decay_mode": WeightDecayMode.L2 if config.weight_decay else WeightDecayMode.NONE,
    }


def _adam_arguments(config: Any) -> dict[str, Any]:
    return {
        "beta1": config.beta_1,
        "beta2": config.beta_2,
        "eps": config.epsilon,
        "weight_decay": config.weight_decay,
    }


def _replicated_sgd(config: Any) -> OptimizerFactory:
    return lambda parameters: torch.optim.SGD(parameters, lr=0.0)


def _replicated_adagrad(config: Any) -> OptimizerFactory:
    return lambda parameters: torchrec_optim.RowWiseAdagrad(
        parameters, lr=0.0, eps=config.epsilon, weight_decay=config.weight_decay
    )


TABLE_ALGORITHMS: dict[str, TableAlgorithm] = {
    "sgd": TableAlgorithm(torchrec_optim.SGD, _no_arguments, True, _replicated_sgd),
    "rowwise_adagrad": TableAlgorithm(
        torchrec_optim.RowWiseAdagrad, _adagrad_arguments, True, _replicated_adagrad
    ),
    "adam": TableAlgorithm(torchrec_optim.Adam, _adam_arguments, False, None),
    "partial_rowwise_adam": TableAlgorithm(
        torchrec_optim.PartialRowWiseAdam, _adam_arguments, False, None
    ),
}


def table_algorithm(config: EmbeddingOptimizerConfig) -> TableAlgorithm:
    """The algorithm a table optimizer config chose (``sgd`` when none is set)."""
    algorithm = TABLE_ALGORITHMS.get(config.algorithm)
    if algorithm is None:
        raise TableOptimizerError(
            f"table optimizer '{config.algorithm}' has no entry in TABLE_ALGORITHMS"
        )
    return algorithm


def own_optimizer_tables(large_embeddings: LargeEmbeddingsConfig) -> list[str]:
    """Tables with an optimizer of their own, in config order."""
    return [table.name for table in large_embeddings.tables if table.optimizer is not None]


def check_table_optimizers(
    large_embeddings: LargeEmbeddingsConfig,
    device_type: str,
    replicated: Iterable[str] = (),
) -> None:
    """Fails at start, naming the table and the device, when a kernel cannot run its optimizer.

    Args:
        large_embeddings: The tables and their optimizers.
        device_type: "cuda" or "cpu".
        replicated: Tables placed data_parallel (trained on the dense kernel).

    Raises:
        TableOptimizerError: an algorithm or its weight decay that the kernel does not run.
    """
    replicated = set(replicated)
    for table in large_embeddings.tables:
        config = large_embeddings.table_optimizer(table)
        algorithm = table_algorithm(config)
        where = f"model.large_embeddings table {table.name}"
        if table.name in replicated:
            if algorithm.replicated is None:
                usable = [name for name, a in TABLE_ALGORITHMS.items() if a.replicated]
                raise TableOptimizerError(
                    f"{where}: optimizer {config.algorithm} runs only on a fused kernel, and "
                    f"the table is replicated (data_parallel); choose one of {usable} or a "
                    "sharded placement"
                )
            continue
        if device_type == "cuda":
            continue
        if not algorithm.runs_on_cpu:
            usable = [name for name, a in TABLE_ALGORITHMS.items() if a.runs_on_cpu]
            raise TableOptimizerError(
                f"{where}: optimizer {config.algorithm} has no {device_type} kernel in "
                f"fbgemm-gpu (it runs on cuda); on {device_type} choose one of {usable}"
            )
        weight_decay = getattr(getattr(config, config.algorithm), "weight_decay", 0.0)
        if weight_decay:
            raise TableOptimizerError(
                f"{where}: {config.algorithm}.weight_decay is ignored by fbgemm-gpu's "
                f"{device_type} kernel; set it to 0 on {device_type} (it applies on cuda)"
            )


def attach_table_optimizers(
    tables: Mapping[str, torch.Tensor], large_embeddings: LargeEmbeddingsConfig
) -> None:
    """Gives every large table its fused optimizer, before planning.

    Args:
        tables: Each table's weight (unsharded, possibly on ``meta``) by table name.
        large_embeddings: The tables' config.
    """
    for table in large_embeddings.tables:
        config = large_embeddings.table_optimizer(table)
        algorithm = table_algorithm(config)
        arguments = {
            # A placeholder: the scheduler sets the scheduled rate before every step.
            "lr": config.init_learning_rate,
            **algorithm.fused_arguments(getattr(config, config.algorithm)),
        }
        if table.optimizer is not None:
            arguments[_GROUPING_KEY] = table.name
        apply_optimizer_in_backward(algorithm.fused_class, [tables[table.name]], arguments)


def replicated_optimizer(
    large_embeddings: LargeEmbeddingsConfig, table: EmbeddingBagConfig | None
) -> OptimizerFactory:
    """The torch optimizer of replicated tables: ``table``'s own, or the collection's (None)."""
    config = large_embeddings.table_optimizer(table) if table else large_embeddings.optimizer
    factory = table_algorithm(config).replicated
    if factory is None:  # check_table_optimizers rejected it before sharding
        raise TableOptimizerError(f"optimizer {config.algorithm} cannot train a replicated table")
    return factory(getattr(config, config.algorithm))
