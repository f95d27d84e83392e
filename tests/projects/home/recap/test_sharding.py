import pytest
import torch
import torch.distributed as dist
import torchrec
from torchrec.distributed.planner import EmbeddingShardingPlanner
from torchrec.distributed.planner.types import PlannerError
from torchrec.distributed.types import ParameterSharding, ShardingPlan

from projects.home.recap.embedding.config import LargeEmbeddingsConfig
from projects.home.recap.sharding import (
    ShardingError,
    format_plan,
    shard_model,
    table_constraints,
)


def tables(**fields) -> LargeEmbeddingsConfig:
    return LargeEmbeddingsConfig.model_validate(
        {
            "tables": [{"name": "users", "num_embeddings": 10, "embedding_dim": 4, **fields}],
            "optimizer": {"init_learning_rate": 0.1},
        }
    )


def test_cpu_defaults_to_the_gloo_compatible_choices():
    constraint = table_constraints(tables(), "cpu")["users"]
    assert sorted(constraint.sharding_types) == [
        "column_wise",
        "data_parallel",
        "table_column_wise",
        "table_wise",
    ]
    assert sorted(constraint.compute_kernels) == ["dense", "fused"]


def test_gpu_keeps_the_configured_choices():
    constraint = table_constraints(
        tables(sharding_types=["row_wise"], compute_kernels=["fused_uvm_caching"]), "cuda"
    )["users"]
    assert constraint.sharding_types == ["row_wise"]
    assert constraint.compute_kernels == ["fused_uvm_caching"]
    assert table_constraints(tables(), "cuda")["users"].sharding_types is None


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"sharding_types": ["row_wise"]}, r"sharding_types \['row_wise'\] need a GPU"),
        ({"compute_kernels": ["fused_uvm"]}, r"compute_kernels \['fused_uvm'\] need a GPU"),
    ],
)
def test_gpu_only_choices_are_refused_on_cpu_naming_the_table(fields, message):
    with pytest.raises(ShardingError, match=f"table users: {message}"):
        table_constraints(tables(**fields), "cpu")


def test_gradient_accumulation_replicates_tables():
    constraint = table_constraints(tables(), "cpu", replicate_tables=True)["users"]
    assert constraint.sharding_types == ["data_parallel"]
    assert constraint.compute_kernels == ["dense"]


def test_the_plan_prints_as_a_table():
    plan = ShardingPlan(
        {
            "model.ebc": {
                "users": ParameterSharding(
                    sharding_type="table_wise", compute_kernel="fused", ranks=[1]
                )
            }
        }
    )
    lines = format_plan(plan).splitlines()
    assert [cell.strip() for cell in lines[0].split("|")][:4] == [
        "table",
        "sharding type",
        "compute kernel",
        "ranks",
    ]
    assert "model.ebc.users" in lines[2] and "table_wise" in lines[2] and "| 1 " in lines[2]


class _Tables(torch.nn.Module):
    """Just the large tables, on meta, as the ranker holds them before sharding."""

    def __init__(self, config: LargeEmbeddingsConfig) -> None:
        super().__init__()
        self.ebc = torchrec.EmbeddingBagCollection(
            tables=[
                torchrec.EmbeddingBagConfig(
                    name=table.name,
                    embedding_dim=table.embedding_dim,
                    num_embeddings=table.num_embeddings,
                    feature_names=[table.name],
                )
                for table in config.tables
            ],
            device=torch.device("meta"),
        )


def test_a_table_too_large_for_the_machine_is_a_placement_error_with_its_cause(
    single_process_group,
):
    # A trillion rows cannot fit this machine's memory whatever the sharding.
    config = tables(num_embeddings=10**12, sharding_types=["table_wise"])
    with pytest.raises(ShardingError, match="found no placement") as raised:
        shard_model(_Tables(config), config, single_process_group, per_rank_batch_size=8)
    assert isinstance(raised.value.__cause__, PlannerError)


def test_a_failure_outside_the_planner_keeps_its_own_type_and_message(
    single_process_group, monkeypatch
):
    # What a rank sees when a peer dies while the plan is being shared: not a placement problem.
    def peer_lost(*args, **kwargs):
        raise dist.DistBackendError("Connection reset by peer")

    monkeypatch.setattr(EmbeddingShardingPlanner, "collective_plan", peer_lost)
    config = tables()
    with pytest.raises(dist.DistBackendError, match="Connection reset by peer"):
        shard_model(_Tables(config), config, single_process_group, per_rank_batch_size=8)
