import copy
import dataclasses
import math
import textwrap

import pytest
import torch

from projects.home.recap.config import RecapConfig
from projects.home.recap.inputs import InputSpec, InputWidths, TaskSampling
from projects.home.recap.model.config import module_key
from projects.home.recap.model.ranking_model import build_ranking_model, compile_dense
from tml.core.config import load_config_from_yaml

FAV, REPLY = "recap.engagement.is_favorited", "recap.engagement.is_replied"

LARGE_TABLES = """
large_embeddings:
  tables:
    - {name: meta__user_id, num_embeddings: 50, embedding_dim: 4}
    - {name: meta__author_id, num_embeddings: 30, embedding_dim: 4}
  optimizer: {init_learning_rate: 0.1}
"""
SMALL_TABLES = """
small_embeddings:
  tables:
    - {name: country, num_embeddings: 7, embedding_dim: 4, index: 1}
    - {name: language, num_embeddings: 11, embedding_dim: 4, index: 2}
"""
POSITION = "position_debias_config: {max_position: 8, num_dims: 4, drop_probability: 0.3, position_feature_index: 0}\n"  # noqa: E501


def towers(architecture: str) -> str:
    return "tasks:\n" + "".join(f"  {task}:\n    {architecture}\n" for task in (FAV, REPLY))


# Every architecture, as backbone and as tower, with every option it has; every featurization.
MODELS = {
    "mlp_share_none": textwrap.dedent("""
        featurization_config: {log1p_abs_config: {}}
        multi_task_type: share_none
        tasks:
          recap.engagement.is_favorited:
            mlp_config:
              layer_sizes: [16, 8, 1]
              batch_norm: {affine: true, momentum: 0.1}
              dropout: {rate: 0.1}
            affine_map: {scale: 2.0, bias: -1.0}
            pos_weight: 3.0
          recap.engagement.is_replied:
            mlp_config: {layer_sizes: [8, 1], batch_norm: {affine: false}}
        """),
    "mask_net_parallel_backbone": textwrap.dedent("""
        featurization_config:
          double_norm_log_config:
            batch_norm_config: {affine: true, momentum: 0.01}
            clip_magnitude: 5.0
            layer_norm_config: {axis: -1, center: true, epsilon: 0.0, scale: true}
        multi_task_type: share_all
        backbone:
          mask_net_config:
            use_parallel: true
            mask_blocks:
              - {output_size: 8, aggregation_size: 16}
              - {output_size: 6, reduction_factor: 0.5, input_layer_norm: true}
            mlp: {layer_sizes: [16], final_layer_activation: true}
        """)
    + towers("mlp_config: {layer_sizes: [8, 1], batch_norm: {affine: false}}"),
    "mask_net_serial_with_mlp_share_partial": textwrap.dedent("""
        featurization_config: {clip_log1p_abs_config: {clip_magnitude: 2.0}}
        multi_task_type: share_partial
        backbone:
          mask_net_config:
            use_parallel: false
            mask_blocks:
              - {output_size: 12, aggregation_size: 8, input_layer_norm: true}
              - {output_size: 8, reduction_factor: 1.0}
            mlp: {layer_sizes: [8], final_layer_activation: true}
        """)
    + towers(
        "mask_net_config: {mask_blocks: [{output_size: 6, aggregation_size: 4}], "
        "mlp: {layer_sizes: [4, 1]}}"
    ),
    "mask_net_serial_without_mlp_backbone": textwrap.dedent("""
        featurization_config: {log1p_abs_config: {}, feature_names_to_concat: [binary, discrete]}
        multi_task_type: share_all
        backbone:
          mask_net_config:
            mask_blocks:
              - {output_size: 6, aggregation_size: 4}
              - {output_size: 10, aggregation_size: 4}
        """)
    + towers("mlp_config: {layer_sizes: [4, 1]}"),
    "dcn_parallel_backbone": textwrap.dedent("""
        featurization_config:
          double_norm_log_config: {clip_magnitude: 5.0}
        multi_task_type: share_all
        backbone:
          dcn_config:
            poly_degree: 2
            parallel_mlp: {layer_sizes: [8]}
            use_parallel: true
            output_mlp: {layer_sizes: [12], final_layer_activation: true}
        """)
    + towers("mlp_config: {layer_sizes: [1]}"),
    "dcn_low_rank_stacked_tower": textwrap.dedent("""
        featurization_config: {log1p_abs_config: {}}
        """)
    + towers(
        "dcn_config: {poly_degree: 3, projection_dim: 4, use_parallel: false, "
        "parallel_mlp: {layer_sizes: [8, 1]}}"
    ),
    "dcn_cross_only_with_output_mlp": textwrap.dedent("""
        featurization_config: {log1p_abs_config: {}}
        """)
    + towers("dcn_config: {poly_degree: 1, output_mlp: {layer_sizes: [4, 1]}}"),
    "dlrm_backbone_with_every_embedding": textwrap.dedent("""
        featurization_config: {log1p_abs_config: {}}
        multi_task_type: share_all
        backbone:
          dlrm_config:
            bottom_mlp: {layer_sizes: [8, 4]}
            top_mlp: {layer_sizes: [8], final_layer_activation: true}
        """)
    + LARGE_TABLES
    + SMALL_TABLES
    + POSITION
    + towers("mlp_config: {layer_sizes: [1]}"),
    "dlrm_tower_share_partial": textwrap.dedent("""
        featurization_config: {log1p_abs_config: {}}
        multi_task_type: share_partial
        backbone: {mlp_config: {layer_sizes: [8], final_layer_activation: true}}
        """)
    + SMALL_TABLES
    + towers("dlrm_config: {bottom_mlp: {layer_sizes: [4]}, top_mlp: {layer_sizes: [6, 1]}}"),
    "no_featurization_config": towers("mlp_config: {layer_sizes: [8, 1]}"),
}


def z_score_model(tmp_path, use_batch_norm):
    stats = tmp_path / "stats.json"
    stats.write_text(
        '{"feature_name": "cont", "mean": '
        + str([0.1 * i for i in range(12)])
        + ', "std": '
        + str([1.0 + 0.1 * i for i in range(11)] + [0.0])
        + "}"
    )
    return textwrap.dedent(f"""
        featurization_config:
          z_score_log_config:
            analysis_path: {stats}
            clip_magnitude: 4.0
            use_batch_norm: {str(use_batch_norm).lower()}
        """) + towers("mlp_config: {layer_sizes: [8, 1]}")


def _tables(model):
    large = model.model.large_embeddings
    return dict(zip(large.table_names, [50, 30], strict=True)) if large is not None else None


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_architecture_trains_with_decreasing_loss(recap, name):
    model = recap.build(MODELS[name])
    batch = recap.make_batch(tables=_tables(model))
    losses = recap.train(model, batch)
    assert all(math.isfinite(loss) for loss in losses)
    assert losses[-1] < 0.9 * losses[0], losses


@pytest.mark.parametrize("use_batch_norm", [False, True])
def test_z_score_featurization_trains_with_decreasing_loss(recap, tmp_path, use_batch_norm):
    model = recap.build(z_score_model(tmp_path, use_batch_norm))
    losses = recap.train(model, recap.make_batch())
    assert losses[-1] < 0.9 * losses[0], losses


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_parameter_receives_a_gradient(recap, name):
    model = recap.build(MODELS[name])
    model.train()
    loss, _ = model(recap.make_batch(batch_size=64, tables=_tables(model)))
    loss.backward()
    for parameter_name, parameter in model.named_parameters():
        assert parameter.grad is not None, parameter_name
        assert torch.isfinite(parameter.grad).all(), parameter_name
        assert parameter.grad.abs().sum() > 0, parameter_name


def test_parameter_groups_cover_every_parameter_once_by_owner(recap):
    model = recap.build(MODELS["dlrm_backbone_with_every_embedding"]).model
    groups = model.parameter_groups()
    names = {id(parameter): name for name, parameter in model.named_parameters()}

    def named(parameters):
        return sorted(names[id(parameter)] for parameter in parameters)

    assert list(groups.towers) == [FAV, REPLY]
    assert [module_key(task) for task in groups.towers] == [
        "recap__engagement__is_favorited",
        "recap__engagement__is_replied",
    ]
    for task, parameters in groups.towers.items():
        prefix = f"dense.towers.{module_key(task)}."
        expected = [name for name in names.values() if name.startswith(prefix)]
        assert named(parameters) == sorted(expected) and expected, task
    assert list(groups.large_tables) == ["meta__user_id", "meta__author_id"]
    assert named(groups.large_tables.values()) == [
        "large_embeddings.ebc.embedding_bags.meta__author_id.weight",
        "large_embeddings.ebc.embedding_bags.meta__user_id.weight",
    ]
    assert named(groups.backbone) == sorted(
        name
        for name in names.values()
        if name.startswith("dense.") and not name.startswith("dense.towers.")
    )
    everything = [*groups.backbone, *groups.large_tables.values()]
    everything += [p for parameters in groups.towers.values() for p in parameters]
    assert sorted(map(id, everything)) == sorted(names)


@pytest.mark.parametrize("task", ["backbone", "dense", "towers", "layers", "network", "model"])
def test_a_task_named_like_a_module_keeps_its_own_parameters(recap, task):
    # Names once decided the groups: a task called "backbone" took the backbone's parameters.
    text = (
        "multi_task_type: share_partial\n"
        "backbone: {mlp_config: {layer_sizes: [8], final_layer_activation: true}}\n"
        f"tasks:\n  {task}:\n    mlp_config: {{layer_sizes: [4, 1]}}\n"
        f"  {REPLY}:\n    mlp_config: {{layer_sizes: [4, 1]}}\n"
    )
    spec = recap.input_spec()
    spec = InputSpec(spec.widths, {**spec.task_sampling, task: TaskSampling()})
    model = recap.build(text, spec).model
    groups = model.parameter_groups()
    backbone = {id(p) for p in model.dense.backbone.parameters()}
    assert backbone <= {id(p) for p in groups.backbone}
    for name, tower in [
        (task, model.dense.towers[task]),
        (REPLY, model.dense.towers[module_key(REPLY)]),
    ]:
        assert [id(p) for p in groups.towers[name]] == [id(p) for p in tower.parameters()]
        assert not {id(p) for p in tower.parameters()} & {id(p) for p in groups.backbone}


def test_large_tables_are_built_on_meta_by_default(recap):
    config = recap.model_config(MODELS["dlrm_backbone_with_every_embedding"])
    model = build_ranking_model(config, recap.input_spec())
    assert model.large_embeddings.table_weights()["meta__user_id"].is_meta
    assert not any(p.is_meta for n, p in model.named_parameters() if n.startswith("dense."))


def test_outputs_follow_model_task_order_and_calibrate_by_name(recap):
    # The data lists four tasks in another order; the model's two find their own rates by name.
    model = recap.build(MODELS["mlp_share_none"]).model.eval()
    assert model.task_names == (FAV, REPLY)
    batch = recap.make_batch()
    outputs = model(batch.inputs)
    logits = outputs["logits"]
    assert logits.shape == (32, 2) and logits.dtype == torch.float32
    torch.testing.assert_close(outputs["probabilities"], torch.sigmoid(logits))
    p = outputs["probabilities"]
    ratios = torch.tensor([0.1 / 0.5, 0.01 / 1.0])  # favorited, then replied
    torch.testing.assert_close(
        outputs["calibrated_probabilities"], p * ratios / (1 - p + ratios * p)
    )


def test_each_tower_learns_its_own_label_when_data_has_more_tasks(recap):
    # Labels arrive in model order (the loader stacks them by name); only the favorited column is
    # positive, so only the favorited tower should move towards 1.
    model = recap.build(MODELS["no_featurization_config"])
    batch = recap.make_batch()
    batch.labels[:, 0], batch.labels[:, 1] = 1.0, 0.0
    recap.train(model, batch, steps=20, lr=3e-2)
    _, outputs = model(batch)
    probabilities = outputs["probabilities"].mean(dim=0)
    assert probabilities[0] > 0.9 and probabilities[1] < 0.1, probabilities


def test_backbone_output_is_what_towers_read(recap):
    model = recap.build(MODELS["dcn_parallel_backbone"], return_backbone=True)
    _, outputs = model(recap.make_batch())
    assert outputs["backbone"].shape == (32, 12)
    assert not outputs["backbone"].requires_grad


def test_missing_features_are_named(recap):
    model = recap.build(MODELS["dlrm_backbone_with_every_embedding"]).model
    batch = recap.make_batch(tables={"meta__user_id": 50, "meta__author_id": 30})
    inputs, sparse = batch.inputs, batch.sparse_features
    model(inputs, sparse)
    for name in ["author_embedding", "discrete_features"]:
        with pytest.raises(ValueError, match=name):
            model(dataclasses.replace(inputs, **{name: None}), sparse)
    with pytest.raises(ValueError, match="sparse_features"):
        model(inputs, None)
    narrow = dataclasses.replace(inputs, continuous_features=inputs.continuous_features[:, :5])
    with pytest.raises(ValueError, match=r"continuous_features should be \[batch, 12\]"):
        model(narrow, sparse)


def test_build_rejects_columns_past_the_discrete_width(recap):
    config = recap.model_config(MODELS["dlrm_backbone_with_every_embedding"])
    narrow = recap.input_spec().with_widths(discrete=2)
    with pytest.raises(ValueError, match="small table 'language' reads discrete column 2"):
        build_ranking_model(config, narrow)


def test_build_rejects_embeddings_the_model_cannot_read(recap):
    config = recap.model_config(MODELS["no_featurization_config"])
    spec = recap.input_spec().with_widths(embeddings={"user_embedding": 4, "item_embedding": 4})
    with pytest.raises(ValueError, match=r"embeddings \['item_embedding'\]"):
        build_ranking_model(config, spec)


def test_production_shaped_model_has_the_analytic_parameter_count():
    config = load_config_from_yaml(RecapConfig, "projects/home/recap/config/local_prod.yaml")
    widths = InputWidths(
        continuous=2117,
        binary=59,
        discrete=320,
        embeddings={"user_embedding": 200, "user_eng_embedding": 200, "author_embedding": 200},
    )
    # Sampling rates set calibration constants only; they do not change the parameter count.
    spec = InputSpec(widths, {task: TaskSampling() for task in config.model.tasks})
    model = build_ranking_model(config.model, spec)

    def linear(fan_in, fan_out):
        return fan_in * fan_out + fan_out

    featurized = 2117 + 59
    inputs = featurized + 3 * 200
    expected = 2 * 2117  # featurization batch norm (affine)
    expected += 2 * featurized  # featurization layer norm
    expected += 3 * 2 * 200  # TwHIN layer norms
    block = linear(inputs, 1024) + linear(1024, inputs) + linear(inputs, 1024) + 2 * 1024
    expected += 4 * block + linear(4 * 1024, 2048)  # MaskNet and its MLP
    expected += 10 * (
        linear(2048, 256) + linear(256, 128) + linear(128, 1)
    )  # towers, BN affine off
    assert sum(p.numel() for p in model.parameters()) == expected == 48_115_108


def test_compiled_dense_model_trains_like_eager_with_the_same_names(recap):
    model = recap.build(MODELS["mask_net_parallel_backbone"])
    compiled = copy.deepcopy(model)
    compile_dense(compiled.model)
    assert [n for n, _ in compiled.named_parameters()] == [n for n, _ in model.named_parameters()]
    batch = recap.make_batch()
    eager_losses = recap.train(model, batch, steps=3)
    compiled_losses = recap.train(compiled, batch, steps=3)
    torch.testing.assert_close(compiled_losses, eager_losses, rtol=1e-4, atol=1e-5)
