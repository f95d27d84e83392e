import pytest

from projects.home.recap.model import architectures
from projects.home.recap.model.architectures import ARCHITECTURES, build_task_network
from projects.home.recap.model.config import TaskModel
from projects.home.recap.model.input_layout import InputLayout

SMALL = "small_embeddings: {tables: [{name: c, num_embeddings: 5, embedding_dim: 4, index: 0}]}\n"
DLRM = "dlrm_config: {bottom_mlp: {layer_sizes: [4]}, top_mlp: {layer_sizes: [1]}}"


def towers(architecture):
    return f"tasks:\n  recap.engagement.is_favorited:\n    {architecture}\n"


def test_the_table_covers_every_architecture():
    assert set(ARCHITECTURES) == set(TaskModel._field_groups["one_of"]["architecture"])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (towers("mlp_config: {layer_sizes: [4, 2]}"), "layer_sizes ends in 2"),
        (
            towers("mask_net_config: {mask_blocks: [{output_size: 1, aggregation_size: 2}]}"),
            "MaskNet tower needs an mlp",
        ),
        (towers("dcn_config: {poly_degree: 2}"), "add an output_mlp"),
        (
            towers("dcn_config: {poly_degree: 2, parallel_mlp: {layer_sizes: [1]}}"),
            "add an output_mlp",
        ),
        (towers(DLRM), "DLRM needs embedding vectors"),
        (
            SMALL.replace("embedding_dim: 4", "embedding_dim: 3") + towers(DLRM),
            r"every embedding vector must be 4 wide; these are not: \{'c': 3\}",
        ),
        (
            SMALL
            + "multi_task_type: share_all\nbackbone: {mlp_config: {layer_sizes: [4]}}\n"
            + towers(DLRM),
            "DLRM tower under share_all",
        ),
    ],
)
def test_configs_the_model_cannot_honour_are_rejected_at_load(recap, text, message):
    with pytest.raises(ValueError, match=message):
        recap.model_config(text)


def test_dlrm_backbone_and_towers_that_fit_are_accepted(recap):
    config = recap.model_config(
        SMALL
        + "position_debias_config: {num_dims: 4, position_feature_index: 1}\n"
        + "multi_task_type: share_partial\n"
        + f"backbone: {{{DLRM}}}\n"
        + towers(DLRM)
    )
    assert config.embedding_vector_widths() == {"c": 4, "position_debias": 4}


def test_parameters_outside_the_towers_are_named_by_each_part(recap):
    config = recap.model_config(
        SMALL
        + "featurization_config:\n"
        + "  double_norm_log_config:\n"
        + "    batch_norm_config: {affine: true}\n"
        + "    layer_norm_config: {center: false, scale: false}\n"
        + "multi_task_type: share_all\n"
        + "backbone: {mlp_config: {layer_sizes: [4]}}\n"
        + towers("mlp_config: {layer_sizes: [1]}")
    )
    data_features = ["continuous", "user_embedding", "meta__user_id"]
    assert config.shared_parameter_sources(data_features) == [
        "backbone",
        "featurization batch norm",
        "user_embedding layer norm",
        "small embeddings",
    ]
    bare = recap.model_config(
        "featurization_config: {log1p_abs_config: {}}\n" + towers("mlp_config: {layer_sizes: [1]}")
    )
    assert bare.shared_parameter_sources(["continuous", "binary"]) == []


def test_an_architecture_without_a_builder_is_a_clear_error(monkeypatch):
    tower = TaskModel.model_validate({"mlp_config": {"layer_sizes": [1]}})
    monkeypatch.delitem(architectures.ARCHITECTURES, "mlp_config")
    with pytest.raises(ValueError, match="architecture 'mlp_config' has no builder"):
        build_task_network(tower, InputLayout(3))


def test_a_config_with_no_architecture_is_a_clear_error():
    # Only a config built without validation can get here; it must not fail deep in a builder.
    with pytest.raises(ValueError, match="no architecture is set"):
        build_task_network(TaskModel.model_construct(), InputLayout(3))
