"""Plan a cluster from this machine: where each large table goes, and the memory and time per rank.

    python -m projects.home.recap.plan --config_path CFG --world_size 64 --local_world_size 8 \\
        --compute_device cuda --hbm_gb 80 --ddr_gb 1024 [--batch_size_per_rank N] \\
        [--json FILE] [dotted.path=value ...]

(installed as ``tml-recap-plan``). The model is built on the ``meta`` device (its tables take no
memory), and torchrec's planner places the large tables on the described ranks with the settings
and per-table constraints a training job uses; no process group or GPU is needed. It prints each
table's placement, each rank's device (HBM) and host (DDR) memory against its capacity, and the
planner's time estimate; ``--json`` writes the same, which ``training.sharding_plan`` reads back
so that the cluster job uses the reviewed plan. A config that does not fit is one line naming the
tables and the shortfall, and exit status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import torch
from torchrec.distributed.planner.types import ShardingOption, Topology
from torchrec.distributed.sharding_plan import get_default_sharders

from projects.home.recap.build import model_input_spec, replicates_tables
from projects.home.recap.config import RecapConfig
from projects.home.recap.data.sharing import per_rank_batch_size
from projects.home.recap.model.model_and_loss import build_model_and_loss
from projects.home.recap.sharding import (
    TablePlanner,
    attach_table_optimizer,
    hardware_topology,
    model_tables,
    table_constraints,
)
from projects.home.recap.sharding_config import (
    PlannedRank,
    PlannedShard,
    PlannedTable,
    SavedPlan,
    ShardingType,
)
from tml.core.cli import add_config_arguments, exit_status, parse_command_line
from tml.core.config import load_config_from_yaml

GIB = 2**30
# What travels per lookup: an int64 id and its int32 length going in, fp32 vectors coming out.
_ID_BYTES = 8 + 4
_VALUE_BYTES = 4


@dataclasses.dataclass(frozen=True)
class Cluster:
    """The ranks to plan for, all alike.

    Attributes:
        world_size: Ranks in the job.
        local_world_size: Ranks per machine.
        compute_device: "cuda" or "cpu".
        hbm_gib: Device memory per rank, GiB (None on CPU).
        ddr_gib: Host memory per machine, GiB, shared by its ranks.
    """

    world_size: int
    local_world_size: int
    compute_device: str
    hbm_gib: float | None
    ddr_gib: float

    def topology(self) -> Topology:
        """torchrec's view of these ranks."""
        return hardware_topology(
            world_size=self.world_size,
            local_world_size=self.local_world_size,
            compute_device=self.compute_device,
            hbm_bytes_per_rank=int(self.hbm_gib * GIB) if self.hbm_gib is not None else None,
            ddr_bytes_per_rank=int(self.ddr_gib * GIB) // self.local_world_size,
        )


def plan_cluster(
    config: RecapConfig, cluster: Cluster, batch_size_per_rank: int | None = None
) -> SavedPlan:
    """Plans ``config``'s large tables on ``cluster`` as a training job would.

    Args:
        config: The job.
        cluster: The ranks.
        batch_size_per_rank: Examples per rank per step (default: the training data's global
            batch shared among the ranks).

    Raises:
        ShardingError: when the tables do not fit, naming them and the shortfall.
        UserInputError: for a config the cluster cannot run (e.g. a GPU-only choice on CPU).
    """
    if batch_size_per_rank is None:
        batch_size_per_rank = per_rank_batch_size(
            config.train_data.global_batch_size, cluster.world_size
        )
    # Everything on meta: the dense part of a production model takes no memory either.
    with torch.device("meta"):
        model = build_model_and_loss(config.model, model_input_spec(config))
    constraints = {}
    if config.model.large_embeddings is not None:
        constraints = table_constraints(
            config.model.large_embeddings,
            cluster.compute_device,
            replicate_tables=replicates_tables(config),
        )
        attach_table_optimizer(model, config.model.large_embeddings)
    planner = TablePlanner(cluster.topology(), batch_size_per_rank, constraints, log_stats=False)
    planner.plan(model, get_default_sharders())
    return _saved_plan(
        planner.chosen, planner.usable_topology(), cluster, batch_size_per_rank, model
    )


def communication_bytes(
    sharding_type: ShardingType, rows: int, dim: int, shards: int, cluster: Cluster
) -> tuple[float, float]:
    """Bytes a rank sends per step for one table with one id per example, forward and backward.

    Returns:
        ``(per example, per step)``: what grows with the batch (averaged over the ranks, per
        example a rank trains), and what a step costs whatever the batch.
    """
    world, local = cluster.world_size, cluster.local_world_size
    away = (world - 1) / world  # share of examples whose table lives on another rank
    vector = _VALUE_BYTES * dim
    if sharding_type == ShardingType.DATA_PARALLEL:
        # Lookups are local; the table's gradient is all-reduced (a ring sends 2 (W-1)/W of it).
        return 0.0, 2 * away * rows * vector
    if sharding_type == ShardingType.TABLE_WISE:
        # Ids to the owner, the pooled vector back, its gradient to the owner.
        return away * (_ID_BYTES + 2 * vector), 0.0
    if sharding_type in (ShardingType.COLUMN_WISE, ShardingType.TABLE_COLUMN_WISE):
        # Every column shard needs the ids; the vector pieces add up to one vector.
        return away * (shards * _ID_BYTES + 2 * vector), 0.0
    if sharding_type == ShardingType.ROW_WISE:
        # Each rank pools its rows for every example of the job, then a reduce-scatter (and an
        # all-gather of gradients backward) moves W - 1 partial vectors per example.
        return away * _ID_BYTES + 2 * (world - 1) * vector, 0.0
    # table_row_wise: row-wise inside one machine, then table-wise across machines.
    across = (world - local) / world
    return away * _ID_BYTES + 2 * (local - 1) * vector + 2 * across * vector, 0.0


def format_report(plan: SavedPlan) -> str:
    """The plan as tables: placement per table, memory and time per rank, and the totals."""
    lines = [
        f"plan for {plan.world_size} ranks ({plan.local_world_size} per machine) on "
        f"{plan.compute_device}, {plan.batch_size_per_rank} examples per rank per step",
        "",
    ]
    if not plan.tables:
        return "\n".join([*lines, "the model has no large tables: nothing to shard"])
    rows = [
        (
            "table",
            "rows",
            "dim",
            "sharding type",
            "kernel",
            "ranks",
            "GiB/shard",
            "est. ms",
            "comm B/example",
        )
    ]
    for table in plan.tables:
        largest = max(table.shards, key=lambda s: s.hbm_bytes + s.ddr_bytes)
        rows.append(
            (
                table.name,
                f"{table.rows:,}",
                str(table.dim),
                table.sharding_type.value,
                table.compute_kernel.value,
                _ranges(sorted({shard.rank for shard in table.shards})),
                _gib(largest.hbm_bytes + largest.ddr_bytes),
                f"{table.perf_ms:.3f}",
                f"{table.communication_bytes_per_example:,.0f}"
                + (
                    f" + {_gib(table.communication_bytes_per_step)} GiB/step"
                    if table.communication_bytes_per_step
                    else ""
                ),
            )
        )
    lines += [*_table(rows), ""]
    rank_rows = [
        (
            "rank",
            "HBM GiB used",
            "usable",
            "capacity",
            "DDR GiB used",
            "usable",
            "capacity",
            "est. ms",
        )
    ]
    for rank in plan.ranks:
        rank_rows.append(
            (
                str(rank.rank),
                _gib(rank.hbm_bytes),
                _gib(rank.hbm_usable_bytes),
                _gib(rank.hbm_capacity_bytes),
                _gib(rank.ddr_bytes),
                _gib(rank.ddr_usable_bytes),
                _gib(rank.ddr_capacity_bytes),
                f"{rank.perf_ms:.3f}",
            )
        )
    lines += [*_table(rank_rows), ""]
    fullest_hbm = max(plan.ranks, key=lambda r: r.hbm_bytes)
    fullest_ddr = max(plan.ranks, key=lambda r: r.ddr_bytes)
    per_example = sum(table.communication_bytes_per_example for table in plan.tables)
    lines += [
        f"most HBM on a rank: {_gib(fullest_hbm.hbm_bytes)} of "
        f"{_gib(fullest_hbm.hbm_usable_bytes)} GiB usable (rank {fullest_hbm.rank}); most DDR: "
        f"{_gib(fullest_ddr.ddr_bytes)} of {_gib(fullest_ddr.ddr_usable_bytes)} GiB "
        f"(rank {fullest_ddr.rank})",
        f"planner's estimate: {plan.perf_ms:.3f} ms per step on the slowest rank for the tables' "
        "lookups, gradients and communication (torchrec's cost model: compare plans with it)",
        f"table communication: {per_example:,.0f} bytes per example per rank, "
        f"{per_example * plan.batch_size_per_rank / 2**20:,.1f} MiB per rank per step",
    ]
    return "\n".join(lines)


def build_argument_parser() -> argparse.ArgumentParser:
    """The command line: a config with overrides, and the cluster to plan for."""
    parser = argparse.ArgumentParser(
        prog="tml-recap-plan",
        description="Plan the large tables' sharding for a cluster, without its hardware.",
    )
    add_config_arguments(parser)
    parser.add_argument("--world_size", type=_positive_int, required=True, help="Ranks.")
    parser.add_argument(
        "--local_world_size", type=_positive_int, required=True, help="Ranks per machine."
    )
    parser.add_argument("--compute_device", choices=["cuda", "cpu"], required=True)
    parser.add_argument(
        "--hbm_gb", type=_positive_float, help="Device memory per GPU, GiB (cuda only)."
    )
    parser.add_argument(
        "--ddr_gb",
        type=_positive_float,
        required=True,
        help="Host memory per machine, GiB, shared by its ranks (UVM tables live there; on "
        "cpu, all tables).",
    )
    parser.add_argument(
        "--batch_size_per_rank",
        type=_positive_int,
        help="Examples per rank per step (default: train_data.global_batch_size / world_size).",
    )
    parser.add_argument("--json", type=Path, help="Also write the plan here, as JSON.")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Prints the plan (exit 0), or one line saying why there is none (exit 2)."""
    parser = build_argument_parser()
    args = parse_command_line(parser, argv)
    if args.world_size % args.local_world_size:
        parser.error("--world_size must be a multiple of --local_world_size")
    if args.compute_device == "cuda" and args.hbm_gb is None:
        parser.error("--compute_device cuda needs --hbm_gb, the memory of one GPU")
    if args.compute_device == "cpu" and args.hbm_gb is not None:
        parser.error("cpu ranks have no HBM: drop --hbm_gb (--ddr_gb holds the tables)")
    cluster = Cluster(
        world_size=args.world_size,
        local_world_size=args.local_world_size,
        compute_device=args.compute_device,
        hbm_gib=args.hbm_gb,
        ddr_gib=args.ddr_gb,
    )

    def run() -> None:
        config = load_config_from_yaml(RecapConfig, args.config_path, args.overrides)
        plan = plan_cluster(config, cluster, args.batch_size_per_rank)
        print(format_report(plan))
        if args.json is not None:
            args.json.write_text(plan.model_dump_json(indent=2) + "\n")

    return exit_status(run)


def _saved_plan(
    chosen: list[ShardingOption],
    usable: Topology,
    cluster: Cluster,
    batch_size_per_rank: int,
    model: torch.nn.Module,
) -> SavedPlan:
    shapes = model_tables(model)
    tables = []
    for option in chosen:
        rows, dim = shapes[(option.path, option.name)]
        kind = ShardingType(option.sharding_type)
        per_example, per_step = communication_bytes(kind, rows, dim, len(option.shards), cluster)
        tables.append(
            PlannedTable(
                module=option.path,
                name=option.name,
                rows=rows,
                dim=dim,
                sharding_type=kind,
                compute_kernel=option.compute_kernel,
                shards=[
                    PlannedShard(
                        rank=shard.rank,
                        offsets=list(shard.offset),
                        sizes=list(shard.size),
                        hbm_bytes=shard.storage.hbm,
                        ddr_bytes=shard.storage.ddr,
                    )
                    for shard in option.shards
                ],
                perf_ms=sum(shard.perf.total for shard in option.shards),
                communication_bytes_per_example=per_example,
                communication_bytes_per_step=per_step,
            )
        )
    ranks = []
    for rank, (device, left) in enumerate(
        zip(cluster.topology().devices, usable.devices, strict=True)
    ):
        mine = [shard for option in chosen for shard in option.shards if shard.rank == rank]
        ranks.append(
            PlannedRank(
                rank=rank,
                hbm_bytes=sum(shard.storage.hbm for shard in mine),
                hbm_usable_bytes=left.storage.hbm,
                hbm_capacity_bytes=device.storage.hbm,
                ddr_bytes=sum(shard.storage.ddr for shard in mine),
                ddr_usable_bytes=left.storage.ddr,
                ddr_capacity_bytes=device.storage.ddr,
                perf_ms=sum(shard.perf.total for shard in mine),
            )
        )
    return SavedPlan(
        world_size=cluster.world_size,
        local_world_size=cluster.local_world_size,
        compute_device=cluster.compute_device,
        batch_size_per_rank=batch_size_per_rank,
        tables=tables,
        ranks=ranks,
        # torchrec's rating of a plan (NoopPerfModel): the slowest rank's summed shard times.
        perf_ms=max((rank.perf_ms for rank in ranks), default=0.0),
    )


def _table(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        " | ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    lines.insert(1, "-+-".join("-" * width for width in widths))
    return lines


def _ranges(ranks: list[int]) -> str:
    """``0-7,16`` for ranks 0 to 7 and 16."""
    spans: list[list[int]] = []
    for rank in ranks:
        if spans and rank == spans[-1][1] + 1:
            spans[-1][1] = rank
        else:
            spans.append([rank, rank])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)


def _gib(size: float) -> str:
    return f"{size / GIB:.2f}"


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


if __name__ == "__main__":
    sys.exit(main())
