"""Sharding: plan where each large table lives, then wrap the model in DistributedModelParallel.

The planner (torchrec's ``EmbeddingShardingPlanner``) sees the job's topology, the per-rank
batch size and the per-table constraints from the embedding config, and every rank runs the same
plan (computed on rank 0 and broadcast), unless the job names a plan saved by
``tml-recap-plan --json`` (checked against the model and the job, then used as it is). The same
planner settings serve that command, which plans any topology without its hardware. Dense
parameters are replicated and data-parallel.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pydantic
import torch
import torch.distributed as dist
from torch.distributed._shard.sharding_spec import EnumerableShardingSpec, ShardMetadata
from torchrec.distributed.model_parallel import DistributedModelParallel
from torchrec.distributed.planner.types import ParameterConstraints
from torchrec.distributed.sharding_plan import get_default_sharders, placement
from torchrec.distributed.types import (
    EmbeddingModuleShardingPlan,
    ParameterSharding,
    ShardingPlan,
)
from torchrec.modules.embedding_modules import EmbeddingBagCollection

from projects.home.recap.embedding.config import LargeEmbeddingsConfig
from projects.home.recap.optimizer.table_optimizers import (
    attach_table_optimizers,
    check_table_optimizers,
)
from projects.home.recap.sharding_config import PlannedTable, SavedPlan
from tml.distributed import DistributedEnvironment
from tml.sharding.placement import (
    CPU_COMPUTE_KERNELS,
    CPU_SHARDING_TYPES,
    KERNELS_OF_SHARDING,
    ComputeKernel,
    ShardingType,
)

# The planner, its settings and its failure messages are shared with TwHIN (tml.sharding); the
# ranker's modules and tests keep importing them from here.
from tml.sharding.planner import (
    ShardingError,
    TablePlanner,
    build_topology,
    format_plan,
    hardware_topology,
)

__all__ = [
    "ShardingError",
    "TablePlanner",
    "attach_table_optimizer",
    "format_plan",
    "hardware_topology",
    "load_saved_plan",
    "model_tables",
    "shard_model",
    "table_constraints",
]

logger = logging.getLogger(__name__)


def table_constraints(
    large_embeddings: LargeEmbeddingsConfig,
    device_type: str,
    *,
    replicate_tables: bool = False,
) -> dict[str, ParameterConstraints]:
    """Planner constraints from each table's ``sharding_types`` and ``compute_kernels``.

    Args:
        large_embeddings: The tables.
        device_type: "cuda" or "cpu"; on CPU only the Gloo-compatible choices are allowed.
        replicate_tables: Replicate every table (data_parallel, dense kernel), whose gradients
            accumulate across micro-batches; torchrec's model-parallel tables only have fused
            kernels, which update the table inside every backward pass.

    Raises:
        ShardingError: naming the table and the choices this device supports.
    """
    constraints = {}
    for table in large_embeddings.tables:
        sharding_types = table.sharding_types
        kernels = table.compute_kernels
        if device_type != "cuda":
            _check_supported(table.name, "sharding_types", sharding_types, CPU_SHARDING_TYPES)
            _check_supported(table.name, "compute_kernels", kernels, CPU_COMPUTE_KERNELS)
            sharding_types = sharding_types or sorted(CPU_SHARDING_TYPES)
            kernels = kernels or sorted(CPU_COMPUTE_KERNELS)
        if replicate_tables:  # allowed by the config check of gradient_accumulation
            sharding_types = [ShardingType.DATA_PARALLEL]
            kernels = [ComputeKernel.DENSE]
        constraints[table.name] = ParameterConstraints(
            sharding_types=[value.value for value in sharding_types] if sharding_types else None,
            compute_kernels=[value.value for value in kernels] if kernels else None,
        )
    return constraints


def shard_model(
    model: torch.nn.Module,
    large_embeddings: LargeEmbeddingsConfig | None,
    environment: DistributedEnvironment,
    *,
    per_rank_batch_size: int,
    replicate_tables: bool = False,
    saved_plan: str | None = None,
) -> DistributedModelParallel:
    """Places the large tables and wraps ``model`` in DistributedModelParallel.

    Tables built on the ``meta`` device are materialised on their shards. Tables on the fused
    kernel are trained by their fused optimizers, whose rates the scheduler sets every step.

    Args:
        model: The model (with its loss), large tables possibly on ``meta``.
        large_embeddings: The tables' config, or None when the model has none.
        environment: This process's place in the job.
        per_rank_batch_size: Examples per rank per step; the planner's cost model uses it.
        replicate_tables: See :func:`table_constraints`.
        saved_plan: A plan written by ``tml-recap-plan --json``, used instead of planning.

    Raises:
        ShardingError: when no placement fits, or the saved plan does not match the job.
    """
    sharders = get_default_sharders()
    constraints: dict[str, ParameterConstraints] = {}
    if large_embeddings is not None:
        constraints = table_constraints(
            large_embeddings, environment.device.type, replicate_tables=replicate_tables
        )
        attach_table_optimizer(model, large_embeddings)
    if saved_plan is not None:
        # Checked before anything is materialised, so a wrong plan fails at once.
        plan = load_saved_plan(saved_plan, model, constraints, environment)
        if environment.is_main:
            logger.info("using the saved sharding plan %s instead of planning", saved_plan)
    else:
        planner = TablePlanner(build_topology(environment), per_rank_batch_size, constraints)
        plan = planner.plan(model, sharders, dist.GroupMember.WORLD)
    if large_embeddings is not None:
        check_table_optimizers(
            large_embeddings, environment.device.type, replicated=replicated_tables(plan)
        )
    if environment.is_main and plan.plan:
        logger.info("sharding plan:\n%s", format_plan(plan))
    return DistributedModelParallel(model, device=environment.device, plan=plan, sharders=sharders)


def attach_table_optimizer(model: torch.nn.Module, large_embeddings: LargeEmbeddingsConfig) -> None:
    """Gives each large table its fused optimizer, before planning: the sharders and the
    planner's memory estimates read the optimizer from the parameters."""
    tables = _large_embedding_parameters(model, [t.name for t in large_embeddings.tables])
    attach_table_optimizers(tables, large_embeddings)


def replicated_tables(plan: ShardingPlan) -> list[str]:
    """Names of the tables the plan replicates (data_parallel, trained on the dense kernel)."""
    return [
        table
        for module_plan in plan.plan.values()
        for table, sharding in module_plan.items()
        if isinstance(sharding, ParameterSharding)
        and sharding.sharding_type == ShardingType.DATA_PARALLEL.value
    ]


def model_tables(model: torch.nn.Module) -> dict[tuple[str, str], tuple[int, int]]:
    """``(module path, table name) -> (rows, dim)`` of every EmbeddingBagCollection's tables."""
    return {
        (path, table.name): (table.num_embeddings, table.embedding_dim)
        for path, module in model.named_modules()
        if isinstance(module, EmbeddingBagCollection)
        for table in module.embedding_bag_configs()
    }


def load_saved_plan(
    path: str,
    model: torch.nn.Module,
    constraints: dict[str, ParameterConstraints],
    environment: DistributedEnvironment,
) -> ShardingPlan:
    """Reads a plan written by ``tml-recap-plan --json`` and checks it fits this job.

    Args:
        path: The JSON file.
        model: The model whose tables the plan must place, each with its shape.
        constraints: The tables' constraints on this device; the plan must honour them.
        environment: The job: the plan must be made for its world size, machines and device.

    Raises:
        ShardingError: one line saying what does not match.
    """
    where = f"training.sharding_plan {path}"
    try:
        saved = SavedPlan.model_validate_json(Path(path).read_bytes())
    except OSError as error:
        raise ShardingError(f"{where}: cannot read it ({error.strerror})") from None
    except pydantic.ValidationError as error:
        first = error.errors(include_url=False)[0]
        location = ".".join(str(part) for part in first["loc"])
        raise ShardingError(
            f"{where}: not a plan written by tml-recap-plan --json "
            f"({location + ': ' if location else ''}{first['msg']})"
        ) from None
    made_for = (saved.world_size, saved.local_world_size, saved.compute_device)
    job = (environment.world_size, environment.local_world_size, environment.device.type)
    if made_for != job:
        raise ShardingError(
            f"{where}: made for {_describe_job(*made_for)}, but this job runs "
            f"{_describe_job(*job)}; plan again with tml-recap-plan for this job"
        )
    tables = model_tables(model)
    planned = {(table.module, table.name): table for table in saved.tables}
    if len(planned) != len(saved.tables):
        raise ShardingError(f"{where}: places a table twice")
    missing = sorted(f"{m}.{n}" for m, n in tables.keys() - planned.keys())
    unknown = sorted(f"{m}.{n}" for m, n in planned.keys() - tables.keys())
    if missing or unknown:
        raise ShardingError(
            f"{where}: does not match the model's tables (not in the plan: {missing or 'none'}; "
            f"not in the model: {unknown or 'none'})"
        )
    plan: dict[str, EmbeddingModuleShardingPlan] = {}
    for key, table in planned.items():
        _check_planned_table(table, tables[key], constraints.get(table.name), saved.world_size)
        plan.setdefault(table.module, EmbeddingModuleShardingPlan())[table.name] = (
            _parameter_sharding(table, environment)
        )
    return ShardingPlan(plan)


def _describe_job(world_size: int, local_world_size: int, device: str) -> str:
    return f"{world_size} ranks ({local_world_size} per machine) on {device}"


def _check_planned_table(
    table: PlannedTable,
    shape: tuple[int, int],
    constraint: ParameterConstraints | None,
    world_size: int,
) -> None:
    where = f"training.sharding_plan: table {table.name}"
    if (table.rows, table.dim) != shape:
        raise ShardingError(
            f"{where} is {table.rows} x {table.dim} in the plan but {shape[0]} x {shape[1]} in "
            "the model"
        )
    allowed = {
        "sharding type": (table.sharding_type, constraint.sharding_types if constraint else None),
        "compute kernel": (
            table.compute_kernel,
            constraint.compute_kernels if constraint else None,
        ),
    }
    for what, (chosen, choices) in allowed.items():
        if choices is not None and chosen.value not in choices:
            raise ShardingError(
                f"{where}: {what} {chosen.value} is not allowed by its config on this device "
                f"(allowed: {choices})"
            )
    if table.compute_kernel not in KERNELS_OF_SHARDING[table.sharding_type]:
        raise ShardingError(
            f"{where}: torchrec has no {table.compute_kernel.value} kernel for "
            f"{table.sharding_type.value} tables"
        )
    outside = sorted({s.rank for s in table.shards if s.rank >= world_size})
    if outside:
        raise ShardingError(f"{where}: shards on ranks {outside} of a {world_size}-rank job")
    if table.sharding_type == ShardingType.DATA_PARALLEL:
        whole = all(
            s.offsets == [0, 0] and s.sizes == [table.rows, table.dim] for s in table.shards
        )
        if not whole or sorted(s.rank for s in table.shards) != list(range(world_size)):
            raise ShardingError(f"{where}: a data_parallel table needs one whole copy per rank")
        return
    inside = all(
        s.offsets[0] + s.sizes[0] <= table.rows and s.offsets[1] + s.sizes[1] <= table.dim
        for s in table.shards
    )
    area = sum(s.sizes[0] * s.sizes[1] for s in table.shards)
    if not inside or area != table.rows * table.dim:
        raise ShardingError(f"{where}: its shards do not tile the {table.rows} x {table.dim} table")


def _parameter_sharding(
    table: PlannedTable, environment: DistributedEnvironment
) -> ParameterSharding:
    # The same fields torchrec's planner fills for a table without cache or kernel options.
    replicated = table.sharding_type == ShardingType.DATA_PARALLEL
    return ParameterSharding(
        sharding_type=table.sharding_type.value,
        compute_kernel=table.compute_kernel.value,
        ranks=[shard.rank for shard in table.shards],
        sharding_spec=None
        if replicated
        else EnumerableShardingSpec(
            [
                ShardMetadata(
                    shard_offsets=list(shard.offsets),
                    shard_sizes=list(shard.sizes),
                    placement=placement(
                        environment.device.type, shard.rank, environment.local_world_size
                    ),
                )
                for shard in table.shards
            ]
        ),
    )


def _large_embedding_parameters(
    model: torch.nn.Module, names: list[str]
) -> dict[str, torch.Tensor]:
    collections = [m for m in model.modules() if isinstance(m, EmbeddingBagCollection)]
    if not collections:
        raise ShardingError(
            f"the config declares large embedding tables {names}, but the model has no "
            "EmbeddingBagCollection"
        )
    return {
        name: bag.weight
        for collection in collections
        for name, bag in collection.embedding_bags.items()
    }


def _check_supported(table: str, field: str, chosen: list | None, supported: frozenset) -> None:
    unsupported = [value.value for value in chosen or [] if value not in supported]
    if unsupported:
        raise ShardingError(
            f"model.large_embeddings table {table}: {field} {unsupported} need a GPU; on CPU "
            f"choose from {sorted(value.value for value in supported)}"
        )
