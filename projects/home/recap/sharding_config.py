"""The file a reviewed sharding plan is saved in, and the placement vocabulary it uses (torchrec's
sharding types and compute kernels, from :mod:`tml.sharding.placement`)."""

from __future__ import annotations

import pydantic

from tml.core.config import BaseConfig, Field
from tml.sharding.placement import (
    CPU_COMPUTE_KERNELS,
    CPU_SHARDING_TYPES,
    KERNELS_OF_SHARDING,
    ComputeKernel,
    ShardingType,
)

# The placement vocabulary lives in tml.sharding (TwHIN shares it); the ranker's modules keep
# reading it from here.
__all__ = [
    "CPU_COMPUTE_KERNELS",
    "CPU_SHARDING_TYPES",
    "KERNELS_OF_SHARDING",
    "ComputeKernel",
    "PlannedRank",
    "PlannedShard",
    "PlannedTable",
    "SavedPlan",
    "ShardingType",
]


# The saved plan ------------------------------------------------------------------------------
# What ``tml-recap-plan --json`` writes and ``training.sharding_plan`` reads back: the placement
# (each table's sharding type, kernel and shards) and, for whoever reviews it, the planner's
# memory and time estimates. Unknown keys are rejected, so a hand-edited typo is caught.


class PlannedShard(BaseConfig):
    """One shard of a table: a block of rows and columns on one rank."""

    rank: pydantic.NonNegativeInt = Field(description="The rank holding the shard.")
    offsets: list[pydantic.NonNegativeInt] = Field(
        min_length=2, max_length=2, description="First row and first column of the shard."
    )
    sizes: list[pydantic.PositiveInt] = Field(
        min_length=2, max_length=2, description="Rows and columns of the shard."
    )
    hbm_bytes: pydantic.NonNegativeInt = Field(
        0, description="The planner's estimate of the shard's device memory (weights, state)."
    )
    ddr_bytes: pydantic.NonNegativeInt = Field(
        0, description="The planner's estimate of the shard's host memory (UVM tables)."
    )


class PlannedTable(BaseConfig):
    """Where one large table lives."""

    module: str = Field(description="Path of the EmbeddingBagCollection in the model.")
    name: str = Field(description="Table name.")
    rows: pydantic.PositiveInt = Field(description="Rows of the whole table.")
    dim: pydantic.PositiveInt = Field(description="Width of the whole table.")
    sharding_type: ShardingType = Field(description="How the table is split across ranks.")
    compute_kernel: ComputeKernel = Field(description="Where its lookups run.")
    shards: list[PlannedShard] = Field(
        min_length=1,
        description="The shards; a data_parallel table has one whole copy per rank.",
    )
    perf_ms: float = Field(
        0.0,
        description="The planner's estimate of the table's time per step, summed over its "
        "shards (lookups, gradients and communication), in milliseconds.",
    )
    communication_bytes_per_example: float = Field(
        0.0,
        description="Bytes sent over the network per training example for this table "
        "(ids in, pooled vectors out, their gradients back), averaged over the job.",
    )
    communication_bytes_per_step: float = Field(
        0.0,
        description="Bytes sent per rank per step independently of the batch (the gradient "
        "all-reduce of a data_parallel table).",
    )


class PlannedRank(BaseConfig):
    """The planner's estimates for one rank."""

    rank: pydantic.NonNegativeInt = Field(description="The rank.")
    hbm_bytes: pydantic.NonNegativeInt = Field(description="Device memory of its shards.")
    hbm_usable_bytes: pydantic.NonNegativeInt = Field(
        description="Device memory the planner may fill with shards (capacity less the share "
        "reserved for dense parameters, activations and buffers)."
    )
    hbm_capacity_bytes: pydantic.NonNegativeInt = Field(description="Device memory.")
    ddr_bytes: pydantic.NonNegativeInt = Field(description="Host memory of its shards.")
    ddr_usable_bytes: pydantic.NonNegativeInt = Field(
        description="Host memory the planner may fill with shards."
    )
    ddr_capacity_bytes: pydantic.NonNegativeInt = Field(description="Host memory of the rank.")
    perf_ms: float = Field(description="The planner's time estimate of its shards per step.")


class SavedPlan(BaseConfig):
    """A sharding plan as ``tml-recap-plan --json`` writes it."""

    world_size: pydantic.PositiveInt = Field(description="Ranks of the job the plan is for.")
    local_world_size: pydantic.PositiveInt = Field(description="Ranks per machine.")
    compute_device: str = Field(description="'cuda' or 'cpu'.")
    batch_size_per_rank: pydantic.PositiveInt = Field(
        description="Examples per rank per step the planner's estimates assume."
    )
    tables: list[PlannedTable] = Field(description="Every large table's placement.")
    ranks: list[PlannedRank] = Field([], description="Memory and time per rank.")
    perf_ms: float = Field(
        0.0,
        description="The planner's rating of the plan: the slowest rank's estimated embedding "
        "time per step, in milliseconds.",
    )
