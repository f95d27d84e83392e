import pytest
import torch
from torchrec.distributed.train_pipeline import Tracer

MODEL = """
featurization_config: {log1p_abs_config: {}}
large_embeddings:
  tables:
    - {name: meta__user_id, num_embeddings: 50, embedding_dim: 4}
  optimizer: {init_learning_rate: 0.1}
stratifiers:
  - {name: country_us, index: 3, value: 1}
  - {name: position_top, index: 0, value: 0}
"""
TABLES = {"meta__user_id": 50}


def test_outputs_are_detached_and_complete(recap):
    model = recap.build(MODEL + recap.mlp_towers(), return_backbone=True)
    batch = recap.make_batch(tables=TABLES)
    loss, outputs = model(batch)
    assert loss.requires_grad
    assert set(outputs) == {
        "logits",
        "probabilities",
        "calibrated_probabilities",
        "backbone",
        "labels",
        "weights",
        "loss",
        "task_losses",
        "stratifiers",
    }
    assert not any(value.requires_grad for value in outputs.values())
    assert outputs["task_losses"].shape == (2,)
    torch.testing.assert_close(outputs["loss"], outputs["task_losses"].mean())
    torch.testing.assert_close(
        outputs["stratifiers"], batch.inputs.discrete_features[:, [3, 0]].long(), rtol=0, atol=0
    )


def test_without_stratifiers_there_is_no_stratifier_output(recap):
    model = recap.build(recap.mlp_towers())
    _, outputs = model(recap.make_batch())
    assert "stratifiers" not in outputs and "backbone" not in outputs


def test_labels_with_more_columns_than_towers_are_rejected(recap):
    model = recap.build(recap.mlp_towers())
    with pytest.raises(ValueError, match="one column per model task"):
        model(recap.make_batch(tasks=4))


def test_torchrec_pipeline_tracing_finds_the_sparse_features_of_the_batch(recap):
    # TrainPipelineSparseDist traces the model with the sharded EBC as a leaf and pipelines its
    # input only if it is `batch.sparse_features` unchanged; emulate it on the unsharded model.
    model = recap.build(MODEL + recap.mlp_towers())
    tracer = Tracer(leaf_modules=["model.large_embeddings.ebc", "model.dense", "loss"])
    graph = tracer.trace(model)
    [node] = [n for n in graph.nodes if n.op == "call_module" and n.target.endswith(".ebc")]
    [argument] = node.args
    assert argument.op == "call_function" and argument.args[1] == "sparse_features"
    assert argument.args[0].op == "placeholder"
