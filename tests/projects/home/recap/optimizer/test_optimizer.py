import textwrap

import pytest
import torch
import yaml
from torch import nn
from torchrec.optim import RowWiseAdagrad

from projects.home.recap.embedding.config import LargeEmbeddingsConfig
from projects.home.recap.inputs import InputSpec, InputWidths, TaskSampling
from projects.home.recap.model.config import ModelConfig
from projects.home.recap.model.model_and_loss import build_model_and_loss
from projects.home.recap.model.ranking_model import ParameterGroups
from projects.home.recap.optimizer.config import RecapOptimizerConfig
from projects.home.recap.optimizer.optimizer import (
    OptimizerBuildError,
    build_optimizer,
    group_parameters,
)

TASKS = ["recap.engagement.is_favorited", "recap.engagement.is_replied"]


class Toy(nn.Module):
    """Shaped like the ranker: a backbone, a tower per task, a large table; it declares which
    part owns which parameter, as the ranker does."""

    def __init__(self, tasks=TASKS):
        super().__init__()
        self.dense = nn.ModuleDict(
            {
                "backbone": nn.Linear(3, 3),
                "towers": nn.ModuleDict(
                    {task.replace(".", "__"): nn.Linear(3, 1) for task in tasks}
                ),
            }
        )
        self.ebc = nn.ModuleDict({"table": nn.Embedding(5, 2)})
        self.tasks = list(tasks)

    def parameter_groups(self) -> ParameterGroups:
        towers = self.dense["towers"]
        return ParameterGroups(
            backbone=list(self.dense["backbone"].parameters()),
            towers={
                task: list(towers[task.replace(".", "__")].parameters()) for task in self.tasks
            },
            large_tables={"table": self.ebc["table"].weight},
        )


def optimizer_config(**rates) -> RecapOptimizerConfig:
    return RecapOptimizerConfig.model_validate(rates)


def multi(backbone=0.1, towers=None, tasks=TASKS):
    return optimizer_config(
        multi_task_learning_rates={
            "backbone_learning_rate": None if backbone is None else {"constant": backbone},
            "tower_learning_rates": towers or {task: {"constant": 0.01} for task in tasks},
        }
    )


TABLES = LargeEmbeddingsConfig.model_validate(
    {
        "tables": [{"name": "table", "num_embeddings": 5, "embedding_dim": 2}],
        "optimizer": {"init_learning_rate": 0.5, "learning_rate": {"constant": 0.25}},
    }
)


def test_parameters_group_by_tower_backbone_and_tables():
    model = Toy()
    groups = group_parameters(dict(model.named_parameters()), model.parameter_groups())
    assert sorted(groups) == sorted(
        ["backbone", "large_embeddings", *(f"tower/{task}" for task in TASKS)]
    )
    assert sorted(groups["tower/recap.engagement.is_replied"]) == [
        "dense.towers.recap__engagement__is_replied.bias",
        "dense.towers.recap__engagement__is_replied.weight",
    ]
    assert sorted(groups["backbone"]) == ["dense.backbone.bias", "dense.backbone.weight"]
    assert sorted(groups["large_embeddings"]) == ["ebc.table.weight"]


def test_single_task_learning_rate_puts_every_dense_parameter_in_one_group():
    model = Toy()
    groups = group_parameters(
        dict(model.named_parameters()), model.parameter_groups(), single_group=True
    )
    assert sorted(groups) == ["dense", "large_embeddings"]
    assert len(groups["dense"]) == 6


def test_a_parameter_owned_by_two_groups_is_an_error():
    model = Toy()
    owners = model.parameter_groups()
    owners.towers[TASKS[0]].append(owners.backbone[0])
    with pytest.raises(OptimizerBuildError, match="belongs to backbone and tower/"):
        group_parameters(dict(model.named_parameters()), owners)


def test_a_parameter_owned_by_no_group_is_an_error():
    model = Toy()
    model.extra = nn.Linear(1, 1)
    with pytest.raises(OptimizerBuildError, match=r"extra\.weight belongs to no parameter group"):
        group_parameters(dict(model.named_parameters()), model.parameter_groups())


def test_a_tower_without_parameters_is_an_error():
    model = Toy()
    owners = model.parameter_groups()
    owners.towers[TASKS[1]].clear()
    named = {n: p for n, p in model.named_parameters() if "is_replied" not in n}
    with pytest.raises(OptimizerBuildError, match="no trainable parameter of the model belongs"):
        group_parameters(named, owners)


def test_each_group_gets_its_adam_and_schedule():
    model = Toy()
    optimizer, scheduler = build_optimizer(model, model.parameter_groups(), multi(), TABLES)
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


def test_a_table_with_its_own_optimizer_is_a_group_with_its_own_schedule():
    model = Toy()
    own = LargeEmbeddingsConfig.model_validate(
        {
            "tables": [
                {
                    "name": "table",
                    "num_embeddings": 5,
                    "embedding_dim": 2,
                    "optimizer": {"init_learning_rate": 0.3, "rowwise_adagrad": {}},
                }
            ],
            "optimizer": {"init_learning_rate": 0.5},
        }
    )
    optimizer, scheduler = build_optimizer(model, model.parameter_groups(), multi(), own)
    assert scheduler.apply(0)["large_embeddings/table"] == 0.3
    assert "large_embeddings" not in scheduler.group_names
    table_optimizer = dict(optimizer.optimizers)["large_embeddings/table"]
    assert isinstance(table_optimizer._optimizer, RowWiseAdagrad)  # replicated: torchrec's


def test_a_group_without_schedule_is_an_error():
    model = Toy()
    with pytest.raises(
        OptimizerBuildError, match=r"without a learning-rate schedule: \['backbone'\]"
    ):
        build_optimizer(model, model.parameter_groups(), multi(backbone=None), TABLES)


def test_a_tower_learning_rate_for_no_tower_is_an_error():
    model = Toy()
    towers = {task: {"constant": 0.01} for task in [*TASKS, "recap.engagement.is_shared"]}
    with pytest.raises(OptimizerBuildError, match=r"'recap\.engagement\.is_shared', which has no"):
        build_optimizer(model, model.parameter_groups(), multi(towers=towers), TABLES)


@pytest.mark.parametrize(
    "task", ["backbone", "dense", "towers", "layers", "network", "model", "embedding_bags"]
)
def test_a_task_named_like_an_internal_module_keeps_every_parameter_in_its_group(task):
    # Tower groups were once found by the substring ".<task>.": a task named "backbone" took
    # the backbone's parameters, "layers" took every MLP layer. Groups now come from ownership.
    text = f"""
        featurization_config:
          double_norm_log_config:
            batch_norm_config: {{affine: true}}
            layer_norm_config: {{}}
        multi_task_type: share_partial
        backbone: {{mlp_config: {{layer_sizes: [8], final_layer_activation: true}}}}
        large_embeddings:
          tables: [{{name: meta__user_id, num_embeddings: 10, embedding_dim: 4}}]
          optimizer: {{init_learning_rate: 0.1}}
        tasks:
          {task}:
            mlp_config: {{layer_sizes: [4, 1]}}
            affine_map: {{scale: 1.0}}
          {TASKS[1]}:
            mlp_config: {{layer_sizes: [4, 1]}}
        """
    config = ModelConfig.model_validate(yaml.safe_load(textwrap.dedent(text)))
    widths = InputWidths(continuous=6, binary=2, discrete=3, embeddings={"user_embedding": 4})
    spec = InputSpec(widths, {name: TaskSampling() for name in config.tasks})
    model = build_model_and_loss(config, spec, large_embedding_device=torch.device("cpu"))
    rates = multi(tasks=list(config.tasks))
    optimizer, scheduler = build_optimizer(
        model, model.parameter_groups(), rates, config.large_embeddings
    )
    assert sorted(scheduler.apply(0)) == sorted(
        ["backbone", "large_embeddings", f"tower/{task}", f"tower/{TASKS[1]}"]
    )
    groups = {name: set(group.params) for name, group in optimizer.optimizers}
    named = dict(model.named_parameters())
    expected = {
        f"tower/{task}": {n for n in named if n.startswith(f"model.dense.towers.{task}.")},
        f"tower/{TASKS[1]}": {
            n for n in named if n.startswith("model.dense.towers.recap__engagement__is_replied.")
        },
        "large_embeddings": {n for n in named if n.startswith("model.large_embeddings.")},
    }
    expected["backbone"] = set(named) - set().union(*expected.values())
    assert groups == expected
    assert any(n.startswith("model.dense.backbone.") for n in expected["backbone"])
    assert len(expected[f"tower/{task}"]) == 6  # two Linear layers and the affine map
