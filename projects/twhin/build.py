"""What every TwHIN mode builds: data for a split, the sharded model with its fused table
optimizers, and the optimizer and schedules of a training run.

Each table gets its own optimizer inside the backward pass (torchrec's fused kernels, one kernel
per table so each follows its own schedule); the relation vectors are dense and data-parallel,
with the translation optimizer. Tables are placed by tml's planner under each table's
``sharding_types`` and initialised from the seed alone, so a job starts from the same weights on
any number of ranks.
"""

from __future__ import annotations

import logging

import torch
import torch.distributed as dist
from torchrec.distributed.embedding_sharding import USE_ONE_TBE_PER_TABLE
from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
from torchrec.distributed.model_parallel import DistributedModelParallel
from torchrec.distributed.planner.types import ParameterConstraints
from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward
from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizer, KeyedOptimizerWrapper

from projects.twhin.config import TwhinConfig
from projects.twhin.data.config import TwhinDataConfig
from projects.twhin.data.edges import EdgeDataset, Graph
from projects.twhin.model.config import TABLE_SHARDING_TYPES, TwhinModelConfig
from projects.twhin.model.model import TwhinModel, initialize_tables
from tml.distributed import DistributedEnvironment
from tml.optimizers.algorithms import (
    build_dense_optimizer,
    build_learning_rate_schedule,
    fused_optimizer_arguments,
)
from tml.optimizers.scheduler import LearningRateScheduler
from tml.optimizers.schedules import Schedule
from tml.sharding.placement import CPU_SHARDING_TYPES, ComputeKernel, ShardingType
from tml.sharding.planner import ShardingError, TablePlanner, build_topology, format_plan

logger = logging.getLogger(__name__)

RELATIONS = "relations"
TABLE_PREFIX = "table/"


# Data ------------------------------------------------------------------------------------------


def build_edges(
    config: TwhinConfig,
    data: TwhinDataConfig,
    environment: DistributedEnvironment,
    *,
    training: bool,
    where: str,
) -> EdgeDataset:
    """This rank's batches of a split (``where`` names it in messages)."""
    return EdgeDataset(
        data,
        Graph.of(config.model),
        rank=environment.rank,
        world_size=environment.world_size,
        training=training,
        where=where,
    )


# Model -----------------------------------------------------------------------------------------


def table_constraints(model: TwhinModelConfig, device_type: str) -> dict[str, ParameterConstraints]:
    """Each table on a fused kernel, split as its ``sharding_types`` allow on this device.

    Raises:
        ShardingError: a sharding type this device cannot run, naming the table.
    """
    allowed = (
        TABLE_SHARDING_TYPES if device_type == "cuda" else TABLE_SHARDING_TYPES & CPU_SHARDING_TYPES
    )
    constraints = {}
    for index, table in enumerate(model.embeddings.tables):
        chosen = table.sharding_types or sorted(allowed)
        unsupported = sorted(kind.value for kind in chosen if kind not in allowed)
        if unsupported:
            raise ShardingError(
                f"model.embeddings.tables.{index} ({table.name}): sharding_types {unsupported} "
                f"cannot run on {device_type}; choose from {sorted(k.value for k in allowed)}"
            )
        constraints[table.name] = ParameterConstraints(
            sharding_types=[ShardingType(kind).value for kind in chosen],
            compute_kernels=[ComputeKernel.FUSED.value],
        )
    return constraints


def build_sharded_model(
    config: TwhinConfig, environment: DistributedEnvironment, per_rank_batch_size: int
) -> DistributedModelParallel:
    """The model with its tables placed and initialised, each with its fused optimizer.

    Raises:
        ShardingError: no placement fits, or a table asks for one this device cannot run.
        FusedOptimizerError: a table optimizer with no fused kernel on this device.
    """
    torch.manual_seed(config.training.seed)
    model = TwhinModel(config.model)
    device_type = environment.device.type
    for index, table in enumerate(config.model.embeddings.tables):
        optimizer_class, arguments = fused_optimizer_arguments(
            table.optimizer,
            device_type,
            where=f"model.embeddings.tables.{index} ({table.name}).optimizer",
        )
        apply_optimizer_in_backward(
            optimizer_class, [model.tables.embedding_bags[table.name].weight], arguments
        )
    constraints = table_constraints(config.model, device_type)
    # One kernel per table: tables that share a kernel share its learning rate, and each table
    # follows its own schedule.
    sharders = [EmbeddingBagCollectionSharder(fused_params={USE_ONE_TBE_PER_TABLE: True})]
    # The planner's cost model counts examples per rank: here, edges.
    planner = TablePlanner(build_topology(environment), per_rank_batch_size, constraints)
    plan = planner.plan(model, sharders, dist.GroupMember.WORLD)
    if environment.is_main:
        logger.info("sharding plan:\n%s", format_plan(plan))
    sharded = DistributedModelParallel(
        model, device=environment.device, plan=plan, sharders=sharders
    )
    initialize_tables(unwrap(sharded), config.training.seed)
    return sharded


def build_whole_model(config: TwhinConfig) -> TwhinModel:
    """The model with every table whole on the CPU, in one process (export, inspection)."""
    model = TwhinModel(config.model, device=torch.device("cpu"))
    initialize_tables(model, config.training.seed)
    return model


def unwrap(model: torch.nn.Module) -> TwhinModel:
    """The TwHIN model inside the parallel wrapper."""
    inner = model.module if isinstance(model, DistributedModelParallel) else model
    if not isinstance(inner, TwhinModel):
        raise TypeError(f"expected the TwHIN model, got {type(inner).__name__}")
    return inner


# Optimizer -------------------------------------------------------------------------------------


def build_optimizer(
    model: DistributedModelParallel, config: TwhinModelConfig
) -> tuple[KeyedOptimizer, LearningRateScheduler]:
    """The tables' fused optimizers (each at its table's schedule) and the relation vectors'
    optimizer, combined, with the scheduler that sets every rate before each step."""
    schedules = {
        table.name: build_learning_rate_schedule(table.optimizer)
        for table in config.embeddings.tables
    }
    scheduled: dict[str, tuple[torch.optim.Optimizer, Schedule]] = {}
    fused = model.fused_optimizer
    for kernel in _leaf_optimizers(fused):
        names = sorted({_table_of(key, schedules) for key in kernel.params})
        if len(names) != 1:  # USE_ONE_TBE_PER_TABLE keeps each table in its own kernel
            raise ShardingError(f"one fused kernel trains several tables {names}")
        group = f"{TABLE_PREFIX}{names[0]}"
        while group in scheduled:  # a second kernel of one table (another sharding type)
            group += "+"
        scheduled[group] = (kernel, schedules[names[0]])
    fused_names = set(fused.params)
    dense = {
        name: parameter
        for name, parameter in model.named_parameters()
        if name not in fused_names and parameter.requires_grad
    }
    relations = KeyedOptimizerWrapper(
        dense, lambda parameters: build_dense_optimizer(config.translation_optimizer, parameters)
    )
    scheduled[RELATIONS] = (
        relations,
        build_learning_rate_schedule(config.translation_optimizer),
    )
    scheduler = LearningRateScheduler(scheduled)
    scheduler.apply(0)
    return CombinedOptimizer([("tables", fused), (RELATIONS, relations)]), scheduler


def _leaf_optimizers(optimizer: KeyedOptimizer) -> list[KeyedOptimizer]:
    children = getattr(optimizer, "optimizers", None)
    if children is None:
        return [optimizer]
    return [leaf for _, child in children for leaf in _leaf_optimizers(child)]


def _table_of(parameter_name: str, tables: dict[str, Schedule]) -> str:
    # torchrec names a table's weight "...embedding_bags.<table>.weight", sharded or not.
    for name in tables:
        if parameter_name.endswith(f"embedding_bags.{name}.weight"):
            return name
    raise ShardingError(f"the fused optimizer trains {parameter_name}, which is no table")
