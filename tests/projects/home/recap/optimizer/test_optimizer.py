import pytest
import torch
from torch import nn

from projects.home.recap.embedding.config import LargeEmbeddingsConfig
from projects.home.recap.optimizer.config import RecapOptimizerConfig
from projects.home.recap.optimizer.optimizer import (
    OptimizerBuildError,
    build_optimizer,
    group_parameters,
)

TASKS = ["recap.engagement.is_favorited", "recap.engagement.is_replied"]


def is_table(name: str) -> bool:
    return name.startswith("ebc.")


class Toy(nn.Module):
    """Named like the ranker: a backbone, a tower per task, a large table."""

    def __init__(self):
        super().__init__()
        self.dense = nn.ModuleDict(
            {
                "backbone": nn.Linear(3, 3),
                "towers": nn.ModuleDict(
                    {task.replace(".", "__"): nn.Linear(3, 1) for task in TASKS}
                ),
            }
        )
        self.ebc = nn.ModuleDict({"table": nn.Embedding(5, 2)})


def optimizer_config(**rates) -> RecapOptimizerConfig:
    return RecapOptimizerConfig.model_validate(rates)


def multi(backbone=0.1, towers=None):
    return optimizer_config(
        multi_task_learning_rates={
            "backbone_learning_rate": None if backbone is None else {"constant": backbone},
            "tower_learning_rates": towers or {task: {"constant": 0.01} for task in TASKS},
        }
    )


TABLES = LargeEmbeddingsConfig.model_validate(
    {
        "tables": [{"name": "table", "num_embeddings": 5, "embedding_dim": 2}],
        "optimizer": {"init_learning_rate": 0.5, "learning_rate": {"constant": 0.25}},
    }
)


def test_parameters_group_by_tower_name_backbone_and_tables():
    groups = group_parameters(dict(Toy().named_parameters()), TASKS, is_large_embedding=is_table)
    assert sorted(groups) == sorted(
        ["backbone", "large_embeddings", *(f"tower/{task}" for task in TASKS)]
    )
    assert sorted(groups["tower/recap.engagement.is_replied"]) == [
        "dense.towers.recap__engagement__is_replied.bias",
        "dense.towers.recap__engagement__is_replied.weight",
    ]
    assert sorted(groups["backbone"]) == ["dense.backbone.bias", "dense.backbone.weight"]


def test_single_task_learning_rate_puts_every_dense_parameter_in_one_group():
    groups = group_parameters(
        dict(Toy().named_parameters()), TASKS, is_large_embedding=is_table, single_group=True
    )
    assert sorted(groups) == ["dense", "large_embeddings"]
    assert len(groups["dense"]) == 6


def test_a_parameter_in_two_towers_is_an_error():
    parameters = {"dense.towers.a.x.b.weight": nn.Parameter(torch.zeros(1))}
    with pytest.raises(OptimizerBuildError, match="belongs to two towers"):
        group_parameters(parameters, ["a", "b"], is_large_embedding=is_table)


def test_a_tower_without_parameters_is_an_error():
    parameters = {"dense.backbone.weight": nn.Parameter(torch.zeros(1))}
    with pytest.raises(OptimizerBuildError, match="no parameter of the model belongs to"):
        group_parameters(parameters, TASKS, is_large_embedding=is_table)


def test_each_group_gets_its_adam_and_schedule():
    model = Toy()
    optimizer, scheduler = build_optimizer(
        model, multi(), TASKS, TABLES, is_large_embedding=is_table
    )
    assert scheduler.apply(0) == {
        "backbone": 0.1,
        "tower/recap.engagement.is_favorited": 0.01,
        "tower/recap.engagement.is_replied": 0.01,
        "large_embeddings": 0.25,
    }
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    loss = sum(p.sum() for p in model.parameters())
    loss.backward()
    optimizer.step()
    for name, parameter in model.named_parameters():
        assert not torch.equal(parameter, before[name]), name
    state = optimizer.state_dict()["state"]
    assert "exp_avg" in state["backbone.dense.backbone.weight"]  # Adam
    assert (
        "large_embeddings.ebc.table.weight" not in state
        or not state["large_embeddings.ebc.table.weight"]
    )  # plain SGD keeps no state


def test_a_group_without_schedule_is_an_error():
    with pytest.raises(
        OptimizerBuildError, match=r"without a learning-rate schedule: \['backbone'\]"
    ):
        build_optimizer(Toy(), multi(backbone=None), TASKS, TABLES, is_large_embedding=is_table)


def test_a_tower_learning_rate_for_no_tower_is_an_error():
    towers = {task: {"constant": 0.01} for task in [*TASKS, "recap.engagement.is_shared"]}
    with pytest.raises(OptimizerBuildError, match=r"'recap\.engagement\.is_shared', which has no"):
        build_optimizer(Toy(), multi(towers=towers), TASKS, TABLES, is_large_embedding=is_table)
