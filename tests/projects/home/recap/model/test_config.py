import pytest

from projects.home.recap.model.architectures import ARCHITECTURES
from projects.home.recap.model.config import TaskModel, embedding_vector_widths

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
    assert embedding_vector_widths(config) == {"c": 4, "position_debias": 4}
