"""Sharding: plan where each large table lives, then wrap the model in DistributedModelParallel.

The planner (torchrec's ``EmbeddingShardingPlanner``) sees the job's topology, the per-rank
batch size and the per-table constraints from the embedding config, and every rank runs the same
plan (computed on rank 0 and broadcast). Dense parameters are replicated and data-parallel.
"""

from __future__ import annotations

import logging
import os

import torch
import torch.distributed as dist
from torchrec.distributed.model_parallel import DistributedModelParallel
from torchrec.distributed.planner import EmbeddingShardingPlanner
from torchrec.distributed.planner.storage_reservations import FixedPercentageStorageReservation
from torchrec.distributed.planner.types import (
    HardwareConfig,
    KernelConfig,
    ParameterConstraints,
    PlannerError,
    Topology,
    TopologyFactory,
    TrainerConfig,
)
from torchrec.distributed.sharding_plan import get_default_sharders
from torchrec.distributed.types import ParameterSharding, ShardingPlan
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward

from projects.home.recap.embedding.config import LargeEmbeddingsConfig
from projects.home.recap.sharding_config import (
    CPU_COMPUTE_KERNELS,
    CPU_SHARDING_TYPES,
    ComputeKernel,
    ShardingType,
)
from tml.core.errors import UserInputError
from tml.distributed import DistributedEnvironment

logger = logging.getLogger(__name__)

# Share of device memory the planner leaves to dense parameters, activations and buffers.
_RESERVED_MEMORY = 0.15


class ShardingError(UserInputError):
    """The embedding config asks for a placement this job cannot run."""


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


def build_topology(environment: DistributedEnvironment) -> Topology:
    """The job's topology, built through torchrec's TopologyFactory as torchrec 1.8 asks."""
    device_type = environment.device.type
    memory_per_rank = _host_memory_bytes() // max(1, environment.local_world_size)
    hardware = HardwareConfig(
        hbm_cap_bytes=(
            torch.cuda.get_device_properties(environment.device).total_memory
            if device_type == "cuda"
            else None
        ),
        ddr_cap_bytes=memory_per_rank,
    )
    return TopologyFactory.create_topology(
        trainer_config=TrainerConfig(
            world_size=environment.world_size, local_world_size=environment.local_world_size
        ),
        hardware_config=hardware,
        kernel_config=KernelConfig(compute_device=device_type),
    )


def shard_model(
    model: torch.nn.Module,
    large_embeddings: LargeEmbeddingsConfig | None,
    environment: DistributedEnvironment,
    *,
    per_rank_batch_size: int,
    replicate_tables: bool = False,
) -> DistributedModelParallel:
    """Plans the large tables' placement and wraps ``model`` in DistributedModelParallel.

    Tables built on the ``meta`` device are materialised on their shards. Tables on the fused
    kernel are trained by a fused SGD whose rate the scheduler sets every step.

    Args:
        model: The model (with its loss), large tables possibly on ``meta``.
        large_embeddings: The tables' config, or None when the model has none.
        environment: This process's place in the job.
        per_rank_batch_size: Examples per rank per step; the planner's cost model uses it.
        replicate_tables: See :func:`table_constraints`.
    """
    sharders = get_default_sharders()
    constraints: dict[str, ParameterConstraints] = {}
    if large_embeddings is not None:
        constraints = table_constraints(
            large_embeddings, environment.device.type, replicate_tables=replicate_tables
        )
        tables = _large_embedding_parameters(model, [t.name for t in large_embeddings.tables])
        # The rate is a placeholder: the scheduler sets the scheduled rate before every step.
        apply_optimizer_in_backward(
            torch.optim.SGD, tables, {"lr": large_embeddings.optimizer.init_learning_rate}
        )
    planner = EmbeddingShardingPlanner(
        topology=build_topology(environment),
        batch_size=per_rank_batch_size,
        constraints=constraints,
        storage_reservation=FixedPercentageStorageReservation(_RESERVED_MEMORY),
        debug=False,
    )
    try:
        plan = planner.collective_plan(model, sharders, dist.GroupMember.WORLD)
    except PlannerError as error:
        # Only the planner's own verdict (tables too large for the devices, constraints no
        # sharder can meet) is a placement problem; anything else, such as a peer's connection
        # reset during the plan's broadcast, propagates with its real cause.
        reason = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
        raise ShardingError(
            f"torchrec's planner found no placement for the tables ({error.error_type.value}): "
            f"{reason}"
        ) from error

    if environment.is_main and plan.plan:
        logger.info("sharding plan:\n%s", format_plan(plan))
    return DistributedModelParallel(model, device=environment.device, plan=plan, sharders=sharders)


def format_plan(plan: ShardingPlan) -> str:
    """The plan as a table: one row per table with its sharding type, kernel and ranks."""
    rows = [("table", "sharding type", "compute kernel", "ranks", "shard sizes")]
    for module_path, module_plan in plan.plan.items():
        for table, sharding in module_plan.items():
            assert isinstance(sharding, ParameterSharding)
            shards = sharding.sharding_spec.shards if sharding.sharding_spec is not None else []
            sizes = " ".join("x".join(map(str, shard.shard_sizes)) for shard in shards)
            ranks = "all" if sharding.ranks is None else ",".join(map(str, sharding.ranks))
            rows.append(
                (
                    f"{module_path}.{table}",
                    sharding.sharding_type,
                    sharding.compute_kernel,
                    ranks,
                    sizes or "replicated",
                )
            )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        " | ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        for row in rows
    ]
    lines.insert(1, "-+-".join("-" * width for width in widths))
    return "\n".join(lines)


def _large_embedding_parameters(model: torch.nn.Module, names: list[str]) -> list[torch.Tensor]:
    collections = [m for m in model.modules() if isinstance(m, EmbeddingBagCollection)]
    if not collections:
        raise ShardingError(
            f"the config declares large embedding tables {names}, but the model has no "
            "EmbeddingBagCollection"
        )
    return [parameter for collection in collections for parameter in collection.parameters()]


def _check_supported(table: str, field: str, chosen: list | None, supported: frozenset) -> None:
    unsupported = [value.value for value in chosen or [] if value not in supported]
    if unsupported:
        raise ShardingError(
            f"model.large_embeddings table {table}: {field} {unsupported} need a GPU; on CPU "
            f"choose from {sorted(value.value for value in supported)}"
        )


def _host_memory_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
