"""Optimizers of the large tables: fbgemm's fused (in-backward) optimizers, chosen per table.

Which class and arguments an algorithm is, and what each device's kernel runs, is
:mod:`tml.optimizers.fused`'s; this module maps recap's table optimizer config onto it and
groups the tables. A table's optimizer is attached to its weight with torchrec's
``apply_optimizer_in_backward`` before planning: the planner sizes the optimizer state from it,
and the sharder turns it into the fused parameters of fbgemm's table-batched kernel. Tables
whose fused parameters are equal share one kernel, and a kernel has one learning rate; so every
table with an optimizer of its own carries a private ``_batch_key`` (a grouping key torchrec
drops before building the kernel), and a kernel never mixes two schedules.

Replicated tables (``data_parallel``, on the dense kernel) are trained by a plain torch
optimizer instead; torchrec's ``RowWiseAdagrad`` computes the same update as the fused kernel.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
import torchrec.optim as torchrec_optim
from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward

from projects.home.recap.embedding.config import (
    EmbeddingBagConfig,
    EmbeddingOptimizerConfig,
    LargeEmbeddingsConfig,
)
from tml.optimizers.fused import (
    FUSED_ALGORITHMS,
    FusedOptimizerError,
    FusedSettings,
    check_fused_optimizer,
    fused_arguments,
)

# torchrec's grouping key: tables with different values never share a kernel; it is removed
# from the fused parameters before fbgemm sees them.
_GROUPING_KEY = "_batch_key"

OptimizerFactory = Callable[[list[torch.Tensor]], torch.optim.Optimizer]

# The algorithms of EmbeddingOptimizerConfig (its field names, which are fused algorithm names).
TABLE_ALGORITHMS = ("sgd", "rowwise_adagrad", "adam", "partial_rowwise_adam")


def _replicated_sgd(config: Any) -> OptimizerFactory:
    return lambda parameters: torch.optim.SGD(parameters, lr=0.0)


def _replicated_adagrad(config: Any) -> OptimizerFactory:
    return lambda parameters: torchrec_optim.RowWiseAdagrad(
        parameters, lr=0.0, eps=config.epsilon, weight_decay=config.weight_decay
    )


# The torch optimizer of a replicated (dense kernel) table, for the algorithms that have one
# computing the same update as the fused kernel.
REPLICATED_OPTIMIZERS: dict[str, Callable[[Any], OptimizerFactory]] = {
    "sgd": _replicated_sgd,
    "rowwise_adagrad": _replicated_adagrad,
}


def fused_settings(config: EmbeddingOptimizerConfig) -> FusedSettings:
    """A table optimizer config's hyperparameters; the learning rate is a placeholder that the
    scheduler overwrites before every step."""
    algorithm = getattr(config, config.algorithm)
    betas = None
    if hasattr(algorithm, "beta_1"):
        betas = (algorithm.beta_1, algorithm.beta_2)
    return FusedSettings(
        lr=config.init_learning_rate,
        eps=getattr(algorithm, "epsilon", None),
        betas=betas,
        weight_decay=getattr(algorithm, "weight_decay", None),
    )


def own_optimizer_tables(large_embeddings: LargeEmbeddingsConfig) -> list[str]:
    """Tables with an optimizer of their own, in config order."""
    return [table.name for table in large_embeddings.tables if table.optimizer is not None]


def _where(table: EmbeddingBagConfig) -> str:
    return f"model.large_embeddings table {table.name}"


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
        FusedOptimizerError: an algorithm or its weight decay that the kernel does not run.
    """
    replicated = set(replicated)
    for table in large_embeddings.tables:
        config = large_embeddings.table_optimizer(table)
        if table.name not in replicated:
            check_fused_optimizer(
                config.algorithm,
                fused_settings(config),
                device_type,
                where=_where(table),
                choices=TABLE_ALGORITHMS,
            )
        elif config.algorithm not in REPLICATED_OPTIMIZERS:
            raise FusedOptimizerError(
                f"{_where(table)}: optimizer {config.algorithm} runs only on a fused kernel, "
                f"and the table is replicated (data_parallel); choose one of "
                f"{list(REPLICATED_OPTIMIZERS)} or a sharded placement"
            )


def attach_table_optimizers(
    tables: Mapping[str, torch.Tensor], large_embeddings: LargeEmbeddingsConfig
) -> None:
    """Gives every large table its fused optimizer, before planning (its kernel was checked by
    :func:`check_table_optimizers`, which knows which tables are replicated).

    Args:
        tables: Each table's weight (unsharded, possibly on ``meta``) by table name.
        large_embeddings: The tables' config.
    """
    for table in large_embeddings.tables:
        config = large_embeddings.table_optimizer(table)
        fused_class = FUSED_ALGORITHMS[config.algorithm].fused_class
        arguments = fused_arguments(config.algorithm, fused_settings(config))
        if table.optimizer is not None:
            arguments[_GROUPING_KEY] = table.name
        apply_optimizer_in_backward(fused_class, [tables[table.name]], arguments)


def replicated_optimizer(
    large_embeddings: LargeEmbeddingsConfig, table: EmbeddingBagConfig | None
) -> OptimizerFactory:
    """The torch optimizer of replicated tables: ``table``'s own, or the collection's (None)."""
    config = large_embeddings.table_optimizer(table) if table else large_embeddings.optimizer
    factory = REPLICATED_OPTIMIZERS.get(config.algorithm)
    if factory is None:  # check_table_optimizers rejected it before sharding
        raise FusedOptimizerError(f"optimizer {config.algorithm} cannot train a replicated table")
    return factory(getattr(config, config.algorithm))
