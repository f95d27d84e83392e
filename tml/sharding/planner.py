"""torchrec's sharding planner with tml's settings: the job's topology, a share of memory left to
everything but the tables, and a failure explained by the tables and the shortfall.

Projects build their own per-table constraints and wrap the planned model in
DistributedModelParallel; this module only decides where the tables go.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torchrec.distributed.planner import EmbeddingShardingPlanner
from torchrec.distributed.planner.enumerators import EmbeddingEnumerator
from torchrec.distributed.planner.storage_reservations import FixedPercentageStorageReservation
from torchrec.distributed.planner.types import (
    HardwareConfig,
    KernelConfig,
    ParameterConstraints,
    PlannerError,
    ShardingOption,
    Storage,
    Topology,
    TopologyFactory,
    TrainerConfig,
)
from torchrec.distributed.types import ParameterSharding, ShardingPlan

from tml.core.errors import UserInputError
from tml.distributed import DistributedEnvironment
from tml.sharding.placement import ShardingType

# Share of each rank's memory the planner leaves to dense parameters, activations and buffers.
RESERVED_MEMORY = 0.15


class ShardingError(UserInputError):
    """The embedding config asks for a placement this job cannot run."""


def hardware_topology(
    *,
    world_size: int,
    local_world_size: int,
    compute_device: str,
    hbm_bytes_per_rank: int | None,
    ddr_bytes_per_rank: int,
) -> Topology:
    """A topology of identical ranks, built through torchrec's TopologyFactory as torchrec 1.8
    asks; it needs no process group, so any cluster can be planned from one machine.

    Args:
        world_size: Ranks in the job.
        local_world_size: Ranks per machine.
        compute_device: "cuda" or "cpu".
        hbm_bytes_per_rank: Device memory of a rank (None on CPU).
        ddr_bytes_per_rank: Host memory of a rank.
    """
    return TopologyFactory.create_topology(
        trainer_config=TrainerConfig(world_size=world_size, local_world_size=local_world_size),
        hardware_config=HardwareConfig(
            hbm_cap_bytes=hbm_bytes_per_rank, ddr_cap_bytes=ddr_bytes_per_rank
        ),
        kernel_config=KernelConfig(compute_device=compute_device),
    )


def build_topology(environment: DistributedEnvironment) -> Topology:
    """This job's topology: its ranks, this machine's device memory and a share of its host's."""
    device_type = environment.device.type
    return hardware_topology(
        world_size=environment.world_size,
        local_world_size=environment.local_world_size,
        compute_device=device_type,
        hbm_bytes_per_rank=(
            torch.cuda.get_device_properties(environment.device).total_memory
            if device_type == "cuda"
            else None
        ),
        ddr_bytes_per_rank=_host_memory_bytes() // max(1, environment.local_world_size),
    )


class TablePlanner:
    """torchrec's planner with the job's settings; it keeps the sharding options it chose (their
    memory and time estimates), and explains a failure by the tables and the shortfall.

    Args:
        topology: The ranks to place the tables on.
        per_rank_batch_size: Examples per rank per step; the planner's cost model uses it.
        constraints: Per-table constraints (:func:`table_constraints`).
        log_stats: Let torchrec log its own summary of the plan.
    """

    def __init__(
        self,
        topology: Topology,
        per_rank_batch_size: int,
        constraints: dict[str, ParameterConstraints],
        *,
        log_stats: bool = True,
    ) -> None:
        self.topology = topology
        # Built here rather than left to the planner, to read what they computed after a failure.
        self._enumerator = EmbeddingEnumerator(
            topology=topology, batch_size=per_rank_batch_size, constraints=constraints
        )
        self._reservation = FixedPercentageStorageReservation(RESERVED_MEMORY)
        self.chosen: list[ShardingOption] = []
        self._planner = EmbeddingShardingPlanner(
            topology=topology,
            batch_size=per_rank_batch_size,
            enumerator=self._enumerator,
            storage_reservation=self._reservation,
            constraints=constraints,
            debug=False,
            stats=None if log_stats else [],
            callbacks=[self._keep],
        )

    def plan(
        self,
        model: torch.nn.Module,
        sharders: list,
        process_group: dist.ProcessGroup | None = None,
    ) -> ShardingPlan:
        """Plans ``model``'s tables: here, or on rank 0 of ``process_group`` and broadcast.

        Raises:
            ShardingError: when no placement fits, naming the tables and the shortfall.
        """
        try:
            if process_group is None:
                return self._planner.plan(model, sharders)
            return self._planner.collective_plan(model, sharders, process_group)
        except PlannerError as error:
            # Only the planner's own verdict (tables too large for the devices, constraints no
            # sharder can meet) is a placement problem; anything else, such as a peer's
            # connection reset during the plan's broadcast, propagates with its real cause.
            raise ShardingError(self._no_placement(error)) from error

    def usable_topology(self) -> Topology:
        """The topology less the memory reserved for everything but the tables (after a plan)."""
        reserved = self._reservation.last_reserved_topology
        return reserved if reserved is not None else self.topology

    def _keep(self, options: list[ShardingOption]) -> list[ShardingOption]:
        self.chosen = options
        return options

    def _no_placement(self, error: PlannerError) -> str:
        head = f"torchrec's planner found no placement for the tables ({error.error_type.value})"
        reason = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
        options: dict[str, list[ShardingOption]] = {}
        for option in self._enumerator.last_stored_search_space or []:
            options.setdefault(option.name, []).append(option)
        reserved = self._reservation.last_reserved_topology
        if not options or reserved is None:
            return f"{head}: {reason}"
        shortfall = _shortfall(options, reserved)
        return f"{head}: {shortfall or reason}"


def _shortfall(options: dict[str, list[ShardingOption]], usable: Topology) -> str | None:
    """Why no placement fits, from lower bounds on what each table needs; None if none shows.

    The checks go from the most specific to the least: a table none of whose placements fits a
    rank; a memory tier that even each table's smallest use of it overflows; the sum of both.
    """
    rank = usable.devices[0].storage
    ranks = len(usable.devices)
    too_big = []
    for name, choices in options.items():
        if not any(all(shard.storage.fits_in(rank) for shard in o.shards) for o in choices):
            # Among equally small placements, name a sharded one: replication is never smaller.
            smallest = min(
                choices,
                key=lambda o: (
                    max(_total(s.storage) for s in o.shards),
                    o.sharding_type == ShardingType.DATA_PARALLEL.value,
                ),
            )
            largest_shard = max((s.storage for s in smallest.shards), key=_total)
            too_big.append(
                f"{name} (at least {_gib(largest_shard.hbm)} GiB HBM + "
                f"{_gib(largest_shard.ddr)} GiB DDR on one rank, {smallest.sharding_type} on "
                f"{smallest.compute_kernel})"
            )
    if too_big:
        return (
            f"{'; '.join(too_big)} does not fit a rank's {_gib(rank.hbm)} GiB HBM + "
            f"{_gib(rank.ddr)} GiB DDR left for tables: use larger devices or allow more "
            "sharding_types / compute_kernels for it"
        )
    capacity = {"HBM": sum(d.storage.hbm for d in usable.devices)}
    capacity["DDR"] = sum(d.storage.ddr for d in usable.devices)
    capacity["HBM + DDR"] = capacity["HBM"] + capacity["DDR"]
    need_of = {
        "HBM": lambda o: sum(s.storage.hbm for s in o.shards),
        "DDR": lambda o: sum(s.storage.ddr for s in o.shards),
        "HBM + DDR": lambda o: sum(_total(s.storage) for s in o.shards),
    }
    for tier, need in need_of.items():
        least = {name: min(need(o) for o in choices) for name, choices in options.items()}
        total = sum(least.values())
        if total > capacity[tier]:
            named = sorted(least, key=least.__getitem__, reverse=True)
            return (
                f"tables {', '.join(f'{n} ({_gib(least[n])} GiB)' for n in named)} need at "
                f"least {_gib(total)} GiB of {tier}, the {ranks} ranks have "
                f"{_gib(capacity[tier])} GiB for tables: short by "
                f"{_gib(total - capacity[tier])} GiB"
            )
    return None


def _total(storage: Storage) -> int:
    return storage.hbm + storage.ddr


def _gib(size: float) -> str:
    return f"{size / 2**30:.1f}"


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


def _host_memory_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
