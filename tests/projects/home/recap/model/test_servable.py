import pytest
import torch

from projects.home.recap.model.servable import (
    ServableRankingModel,
    export_ranking_model,
    servable_inputs,
)

MODEL = """
featurization_config:
  double_norm_log_config:
    batch_norm_config: {affine: true, momentum: 0.1}
    layer_norm_config: {epsilon: 0.001}
multi_task_type: share_partial
backbone:
  mask_net_config:
    mask_blocks: [{output_size: 8, aggregation_size: 4}, {output_size: 8, aggregation_size: 4}]
    use_parallel: true
large_embeddings:
  tables:
    - {name: meta__user_id, num_embeddings: 50, embedding_dim: 4}
    - {name: meta__author_id, num_embeddings: 30, embedding_dim: 4}
  optimizer: {init_learning_rate: 0.1}
small_embeddings:
  tables: [{name: country, num_embeddings: 7, embedding_dim: 4, index: 1}]
position_debias_config: {max_position: 8, num_dims: 4, position_feature_index: 0}
"""
TABLES = {"meta__user_id": 50, "meta__author_id": 30}


def eval_outputs(model, batch):
    model.eval()
    with torch.no_grad():
        _, outputs = model(batch)
    return outputs


def test_exported_program_reproduces_the_model_at_another_batch_size(recap):
    model = recap.build(MODEL + recap.mlp_towers("[6, 1]"), return_backbone=True)
    recap.train(model, recap.make_batch(tables=TABLES), steps=3)  # move batch-norm statistics
    servable = ServableRankingModel(model.model)
    example = recap.make_batch(batch_size=8, tables=TABLES)
    program = export_ranking_model(servable, *servable_inputs(example, servable.table_names))
    assert model.training  # export leaves the caller's mode alone
    batch = recap.make_batch(batch_size=5, tables=TABLES, seed=7)
    expected = eval_outputs(model, batch)
    exported = program.module()(*servable_inputs(batch, ["meta__user_id", "meta__author_id"]))
    assert set(exported) == {"logits", "probabilities", "calibrated_probabilities", "backbone"}
    for name, value in exported.items():
        torch.testing.assert_close(value, expected[name], rtol=1e-5, atol=1e-6)


def test_servable_refuses_tables_that_are_not_materialised(recap):
    model = recap.build(MODEL + recap.mlp_towers())
    model.model.large_embeddings.ebc.to_empty(device="meta")
    with pytest.raises(ValueError, match="not materialised"):
        ServableRankingModel(model.model)


def test_servable_inputs_need_one_id_per_example(recap):
    batch = recap.make_batch(batch_size=3, tables={"meta__user_id": 50})
    inputs, sparse_ids = servable_inputs(batch, ["meta__user_id"])
    assert inputs is batch.inputs and sparse_ids.shape == (3, 1)
    assert servable_inputs(batch, []) == (batch.inputs, None)
    with pytest.raises(ValueError, match="no key 'meta__author_id'"):
        servable_inputs(batch, ["meta__author_id"])


@pytest.mark.parametrize("dynamic_batch", [True, False])
def test_a_model_without_tables_exports_with_only_its_dense_inputs(recap, dynamic_batch):
    model = recap.build(recap.mlp_towers())
    example = recap.make_batch(batch_size=4)
    program = export_ranking_model(
        ServableRankingModel(model.model), example.inputs, dynamic_batch=dynamic_batch
    )
    batch = recap.make_batch(batch_size=3 if dynamic_batch else 4, seed=5)
    inputs, sparse_ids = servable_inputs(batch, [])
    exported = program.module()(inputs, sparse_ids)
    expected = eval_outputs(model, batch)
    for name, value in exported.items():
        torch.testing.assert_close(value, expected[name], rtol=1e-5, atol=1e-6)
