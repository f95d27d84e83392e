"""The vocabulary of table placement: torchrec's sharding types and compute kernels, which of
them combine, and which run without a GPU."""

from __future__ import annotations

import enum


class ShardingType(enum.StrEnum):
    """How torchrec may split a large table across ranks (torchrec's ``ShardingType`` values)."""

    DATA_PARALLEL = "data_parallel"
    TABLE_WISE = "table_wise"
    COLUMN_WISE = "column_wise"
    ROW_WISE = "row_wise"
    TABLE_ROW_WISE = "table_row_wise"
    TABLE_COLUMN_WISE = "table_column_wise"


class ComputeKernel(enum.StrEnum):
    """Where and how torchrec computes a table's lookups (torchrec's compute kernel values)."""

    DENSE = "dense"
    FUSED = "fused"
    FUSED_UVM = "fused_uvm"
    FUSED_UVM_CACHING = "fused_uvm_caching"


# The compute kernels torchrec offers for each sharding type.
KERNELS_OF_SHARDING: dict[ShardingType, frozenset[ComputeKernel]] = {
    kind: (
        frozenset({ComputeKernel.DENSE})
        if kind == ShardingType.DATA_PARALLEL
        else frozenset(
            {ComputeKernel.FUSED, ComputeKernel.FUSED_UVM, ComputeKernel.FUSED_UVM_CACHING}
        )
    )
    for kind in ShardingType
}

# What torchrec can run without CUDA (row-wise variants and UVM kernels need GPUs).
CPU_SHARDING_TYPES = frozenset(
    {
        ShardingType.DATA_PARALLEL,
        ShardingType.TABLE_WISE,
        ShardingType.COLUMN_WISE,
        ShardingType.TABLE_COLUMN_WISE,
    }
)
CPU_COMPUTE_KERNELS = frozenset({ComputeKernel.DENSE, ComputeKernel.FUSED})
