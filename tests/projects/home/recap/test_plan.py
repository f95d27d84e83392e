"""The planning command: plans for GPU clusters made on this CPU machine, and saved plans that a
training job loads instead of planning."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torchrec.distributed.sharding_plan import get_default_sharders

from projects.home.recap.build import model_input_spec
from projects.home.recap.config import RecapConfig
from projects.home.recap.model.model_and_loss import build_model_and_loss
from projects.home.recap.plan import Cluster, communication_bytes, main, plan_cluster
from projects.home.recap.sharding import (
    ShardingError,
    TablePlanner,
    load_saved_plan,
    table_constraints,
)
from projects.home.recap.sharding_config import SavedPlan, ShardingType
from tests.helpers.multiprocess import run_on_ranks
from tests.projects.home.recap.distributed_jobs import (
    TABLES,
    tiny_config,
    train_job_with_sharding_log,
)
from tml.core.config import ConfigError, load_config_from_yaml
from tml.distributed import DistributedEnvironment

REPO = Path(__file__).resolve().parents[4]
PROD_SCALE = REPO / "projects/home/recap/config/prod_scale.yaml"
GIB = 2**30
H100 = {"hbm_gib": 80.0, "ddr_gib": 1024.0}
H200 = {"hbm_gib": 141.0, "ddr_gib": 2048.0}


def prod_scale(*overrides: str) -> RecapConfig:
    return load_config_from_yaml(RecapConfig, PROD_SCALE, list(overrides))


def cuda(world_size: int, local_world_size: int = 8, **memory) -> Cluster:
    return Cluster(world_size, local_world_size, "cuda", **(memory or H100))


def environment(world_size: int, device: str = "cpu", local_world_size: int | None = None):
    return DistributedEnvironment(
        rank=0,
        world_size=world_size,
        local_rank=0,
        local_world_size=local_world_size or world_size,
        device=torch.device(device),
        backend="gloo",
    )


def assert_sound(plan: SavedPlan, config: RecapConfig, cluster: Cluster) -> None:
    """Every table placed whole, every rank within its usable memory."""
    tables = {
        t.name: (t.num_embeddings, t.embedding_dim) for t in config.model.large_embeddings.tables
    }
    assert {table.name: (table.rows, table.dim) for table in plan.tables} == tables
    for table in plan.tables:
        assert sum(s.sizes[0] * s.sizes[1] for s in table.shards) == table.rows * table.dim
        assert all(0 <= shard.rank < cluster.world_size for shard in table.shards)
    assert [rank.rank for rank in plan.ranks] == list(range(cluster.world_size))
    for rank in plan.ranks:
        assert rank.hbm_capacity_bytes == cluster.hbm_gib * GIB
        assert rank.hbm_bytes <= rank.hbm_usable_bytes < rank.hbm_capacity_bytes
        assert rank.ddr_bytes <= rank.ddr_usable_bytes <= rank.ddr_capacity_bytes
    # Per-rank use is the sum of the shards placed there.
    for rank in plan.ranks:
        shards = [s for t in plan.tables for s in t.shards if s.rank == rank.rank]
        assert rank.hbm_bytes == sum(s.hbm_bytes for s in shards)
    assert plan.perf_ms == max(rank.perf_ms for rank in plan.ranks) > 0


@pytest.mark.parametrize(
    ("world_size", "memory"), [(8, H100), (8, H200), (64, H100), (64, H200)], ids=str
)
def test_production_tables_fit_gpu_clusters_row_wise(world_size, memory):
    config = prod_scale()
    cluster = cuda(world_size, **memory)
    plan = plan_cluster(config, cluster)
    assert_sound(plan, config, cluster)
    assert plan.batch_size_per_rank == config.train_data.global_batch_size // world_size
    usable = plan.ranks[0].hbm_usable_bytes
    for table in plan.tables:
        if table.rows * table.dim * 4 > usable:
            # Larger than one GPU: split by rows, across a machine at least.
            assert table.sharding_type in (ShardingType.ROW_WISE, ShardingType.TABLE_ROW_WISE)
            assert len({shard.rank for shard in table.shards}) >= 2
    user = next(table for table in plan.tables if table.name == "meta__user_id")
    assert user.rows * user.dim * 4 > usable  # the case above is exercised


def test_short_hbm_moves_a_table_to_uvm_caching_within_host_memory():
    # 8 x 40 GiB leaves 272 GiB for 333 GiB of tables: part must live in host memory.
    config = prod_scale()
    cluster = cuda(8, hbm_gib=40.0, ddr_gib=1024.0)
    plan = plan_cluster(config, cluster)
    assert_sound(plan, config, cluster)
    kernels = {table.compute_kernel.value for table in plan.tables}
    assert kernels & {"fused_uvm", "fused_uvm_caching"}
    assert sum(rank.ddr_bytes for rank in plan.ranks) > 0


def test_constraints_are_honoured():
    config = prod_scale(
        "model.large_embeddings.tables.0.compute_kernels=[fused_uvm_caching]",
        "model.large_embeddings.tables.1.sharding_types=[table_row_wise]",
    )
    plan = plan_cluster(config, cuda(64))
    chosen = {table.name: table for table in plan.tables}
    assert chosen["meta__user_id"].compute_kernel.value == "fused_uvm_caching"
    assert chosen["meta__author_id"].sharding_type == ShardingType.TABLE_ROW_WISE
    # table_row_wise keeps a table inside one machine.
    assert len({shard.rank // 8 for shard in chosen["meta__author_id"].shards}) == 1


def test_a_small_table_is_not_split():
    config = prod_scale(
        'model.large_embeddings.tables=[{"name": "meta__user_id", "num_embeddings": 1000, '
        '"embedding_dim": 16}]'
    )
    (table,) = plan_cluster(config, cuda(8)).tables
    assert table.sharding_type in (ShardingType.TABLE_WISE, ShardingType.DATA_PARALLEL)


def test_a_table_no_rank_can_hold_names_itself():
    config = prod_scale("model.large_embeddings.tables.0.sharding_types=[table_wise]")
    with pytest.raises(
        ShardingError, match=r"meta__user_id \(at least .*238\.4 GiB .* on one rank, table_wise"
    ) as raised:
        plan_cluster(config, cuda(8))
    assert "\n" not in str(raised.value)
    assert "meta__author_id" not in str(raised.value)


def test_communication_grows_with_ranks_only_for_row_wise():
    small, large = cuda(8), cuda(64)
    for kind in (ShardingType.TABLE_WISE, ShardingType.COLUMN_WISE):
        # Only the share of examples whose table is elsewhere grows: 7/8 -> 63/64.
        ratio = (
            communication_bytes(kind, 100, 128, 1, large)[0]
            / (communication_bytes(kind, 100, 128, 1, small)[0])
        )
        assert ratio == pytest.approx((63 / 64) / (7 / 8))
    row_wise = [
        communication_bytes(ShardingType.ROW_WISE, 100, 128, 8, c)[0] for c in (small, large)
    ]
    assert row_wise[1] > 8 * row_wise[0]
    # Replicated: nothing per example, the table's gradient every step.
    per_example, per_step = communication_bytes(ShardingType.DATA_PARALLEL, 100, 128, 8, small)
    assert per_example == 0 and per_step == pytest.approx(2 * 7 / 8 * 100 * 128 * 4)


def run_cli(*arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "projects.home.recap.plan",
            "--config_path",
            str(PROD_SCALE),
            *arguments,
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), "TML_BASE": str(REPO)},
        timeout=120,
    )


def test_cli_prints_and_saves_the_plan(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TML_BASE", str(REPO))
    status = main([
        "--config_path", str(PROD_SCALE), "--world_size=64", "--local_world_size=8",
        "--compute_device=cuda", "--hbm_gb=141", "--ddr_gb=2048",
        "--json", str(tmp_path / "plan.json"),
    ])  # fmt: skip
    printed = capsys.readouterr()
    assert status == 0, printed.err
    assert "meta__user_id" in printed.out and "planner's estimate" in printed.out
    saved = SavedPlan.model_validate_json((tmp_path / "plan.json").read_text())
    assert saved.world_size == 64 and len(saved.ranks) == 64
    assert {table.name for table in saved.tables} == {"meta__user_id", "meta__author_id"}


@pytest.mark.slow
def test_cli_says_in_one_line_what_does_not_fit():
    # Each shard fits a rank, but 16 x (15.3 GiB HBM + 2 GiB DDR) < 333.8 GiB of tables.
    done = run_cli(
        "--world_size=16", "--local_world_size=8", "--compute_device=cuda", "--hbm_gb=18",
        "--ddr_gb=16",
    )  # fmt: skip
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: ")
    assert "meta__user_id" in lines[0] and "meta__author_id" in lines[0]
    assert "need at least 333.8 GiB of HBM + DDR" in lines[0] and "short by 57.0 GiB" in lines[0]


def test_cli_refuses_a_topology_it_cannot_describe(capsys):
    for arguments in (
        ["--world_size=12", "--local_world_size=8", "--compute_device=cuda", "--hbm_gb=80"],
        ["--world_size=8", "--local_world_size=8", "--compute_device=cuda"],
        ["--world_size=2", "--local_world_size=2", "--compute_device=cpu", "--hbm_gb=80"],
    ):
        with pytest.raises(SystemExit) as raised:
            main(["--config_path", str(PROD_SCALE), "--ddr_gb=64", *arguments])
        assert raised.value.code == 2
    assert "--hbm_gb" in capsys.readouterr().err


# Saved plans ------------------------------------------------------------------------------------


def save(plan: SavedPlan, path: Path, edit=None) -> str:
    data = json.loads(plan.model_dump_json())
    if edit is not None:
        edit(data)
    path.write_text(json.dumps(data))
    return str(path)


def tiny_model(config: RecapConfig) -> torch.nn.Module:
    with torch.device("meta"):
        return build_model_and_loss(config.model, model_input_spec(config))


def test_a_saved_plan_loads_as_the_planner_made_it(tmp_path):
    config = prod_scale()
    cluster = cuda(16)
    model = tiny_model(config)
    constraints = table_constraints(config.model.large_embeddings, "cuda")
    planner = TablePlanner(cluster.topology(), 1024, constraints, log_stats=False)
    planned = planner.plan(model, get_default_sharders())
    path = save(plan_cluster(config, cluster, 1024), tmp_path / "plan.json")
    loaded = load_saved_plan(path, model, constraints, environment(16, "cuda", 8))
    assert loaded.plan == planned.plan


def tiny_plan(tmp_path: Path, world_size: int = 2) -> tuple[RecapConfig, SavedPlan]:
    config = tiny_config(tmp_path / "job")
    return config, plan_cluster(config, Cluster(world_size, world_size, "cpu", None, 8.0))


@pytest.mark.parametrize(
    ("edit", "job", "message"),
    [
        (None, environment(4), "made for 2 ranks (2 per machine) on cpu, but this job runs 4"),
        (None, environment(2, "cuda"), "on cpu, but this job runs 2 ranks (2 per machine) on cuda"),
        (lambda d: d["tables"][0].update(rows=7), environment(2), "is 7 x 4 in the plan but"),
        (lambda d: d["tables"].pop(), environment(2), "not in the plan: ['model.large_embeddings"),
        (
            lambda d: d["tables"][0].update(name="meta__item_id"),
            environment(2),
            "not in the model: ['model.large_embeddings.ebc.meta__item_id']",
        ),
        (
            lambda d: d["tables"][0].update(sharding_type="column_wise"),
            environment(2),
            "sharding type column_wise is not allowed by its config on this device (allowed: "
            "['table_wise']",
        ),
        (
            lambda d: d["tables"][0]["shards"][0].update(rank=5),
            environment(2),
            "shards on ranks [5] of a 2-rank job",
        ),
        (
            lambda d: d["tables"][0]["shards"][0].update(sizes=[3, 4]),
            environment(2),
            "its shards do not tile",
        ),
        (lambda d: d.update(tablez=[]), environment(2), "not a plan written by tml-recap-plan"),
    ],
    ids=["world", "device", "rows", "missing", "unknown", "constraint", "rank", "tile", "key"],
)
def test_a_saved_plan_that_does_not_match_the_job_is_one_clear_line(tmp_path, edit, job, message):
    config, plan = tiny_plan(tmp_path)
    path = save(plan, tmp_path / "plan.json", edit)
    constraints = table_constraints(config.model.large_embeddings, job.device.type)
    with pytest.raises(ShardingError, match=re.escape(message)) as raised:
        load_saved_plan(path, tiny_model(config), constraints, job)
    assert "\n" not in str(raised.value)


def test_a_missing_plan_file_is_named(tmp_path):
    config, _ = tiny_plan(tmp_path)
    constraints = table_constraints(config.model.large_embeddings, "cpu")
    with pytest.raises(ShardingError, match=r"nowhere\.json: cannot read it"):
        load_saved_plan(
            str(tmp_path / "nowhere.json"), tiny_model(config), constraints, environment(2)
        )


@pytest.mark.slow
def test_two_cpu_ranks_train_with_the_saved_plan(tmp_path):
    config, plan = tiny_plan(tmp_path)

    def both_on_rank_one(data: dict) -> None:
        # Not what the planner would choose (it spreads the tables): proof the file is used.
        for table in data["tables"]:
            table["shards"][0]["rank"] = 1

    path = save(plan, tmp_path / "plan.json", both_on_rank_one)
    config = tiny_config(tmp_path / "job", f"training.sharding_plan={path}")
    (first, logged), (second, _) = run_on_ranks(
        train_job_with_sharding_log, 2, config, workdir=tmp_path
    )
    assert first == second == config.training.num_train_steps
    assert any(f"using the saved sharding plan {path}" in message for message in logged)
    (placement,) = [message for message in logged if message.startswith("sharding plan:")]
    for table in TABLES:
        (row,) = [line for line in placement.splitlines() if f".{table} " in line]
        assert [cell.strip() for cell in row.split("|")][1:4] == ["table_wise", "fused", "1"]


@pytest.mark.slow
def test_a_plan_for_another_world_size_stops_the_job_before_training(tmp_path):
    _, plan = tiny_plan(tmp_path, world_size=4)
    path = save(plan, tmp_path / "plan.json")
    config = tiny_config(tmp_path / "job", f"training.sharding_plan={path}")
    with pytest.raises(AssertionError, match="made for 4 ranks"):
        run_on_ranks(train_job_with_sharding_log, 2, config, workdir=tmp_path)
    assert not (tmp_path / "job" / "checkpoints").exists() or not any(
        (tmp_path / "job" / "checkpoints").iterdir()
    )


def test_a_plan_needs_large_tables():
    with pytest.raises(ConfigError, match="sharding_plan"):
        load_config_from_yaml(
            RecapConfig,
            REPO / "projects/home/recap/config/local_prod.yaml",
            ["training.sharding_plan=plan.json"],
        )
