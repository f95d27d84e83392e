import math

import pytest
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from projects.home.recap.inputs import (
    TWHIN_EMBEDDINGS,
    DenseInputs,
    InputSpec,
    InputWidths,
    RecapBatch,
    TaskSampling,
)


def make_batch():
    return RecapBatch(
        inputs=DenseInputs(
            continuous_features=torch.randn(2, 3),
            binary_features=torch.ones(2, 4),
            discrete_features=torch.arange(4).view(2, 2),
            user_embedding=torch.randn(2, 5),
        ),
        labels=torch.zeros(2, 1),
        weights=torch.ones(2, 1),
        sparse_features=KeyedJaggedTensor.from_lengths_sync(
            keys=["meta__user_id"], values=torch.tensor([7, 8]), lengths=torch.tensor([1, 1])
        ),
        extra_features={"meta__tweet_id": torch.tensor([[1], [2]])},
    )


def test_map_reaches_every_tensor_and_keeps_absent_ones_absent():
    batch = make_batch()
    doubled = batch.map(
        lambda value: value.to(torch.float64) if isinstance(value, torch.Tensor) else value
    )
    assert doubled.inputs.continuous_features.dtype == torch.float64
    assert doubled.extra_features["meta__tweet_id"].dtype == torch.float64
    assert doubled.inputs.author_embedding is None
    assert doubled.batch_size == 2


def test_to_and_pin_memory_keep_values():
    batch = make_batch()
    moved = batch.to(torch.device("cpu"), non_blocking=True)
    torch.testing.assert_close(moved.inputs.user_embedding, batch.inputs.user_embedding)
    assert moved.sparse_features.keys() == ["meta__user_id"]
    assert torch.equal(moved.sparse_features.values(), torch.tensor([7, 8]))


def test_every_dense_input_declares_where_it_is_read_from():
    sources = DenseInputs.sources()
    assert list(sources) == list(DenseInputs.names())
    assert {source.feature for source in sources.values()} >= {"continuous", *TWHIN_EMBEDDINGS}
    assert not sources["user_embedding"].always_present
    assert sources["discrete_features"].always_present


def test_the_example_inputs_follow_the_spec_and_export_whole():
    spec = InputSpec(
        InputWidths(continuous=3, binary=2, discrete=0, embeddings={"author_embedding": 4}),
        dtypes={"binary_features": torch.uint8},
    )
    example = spec.example_inputs(5)
    shapes = {name: tuple(tensor.shape) for name, tensor in example.present().items()}
    assert shapes == {
        "continuous_features": (5, 3),
        "binary_features": (5, 2),
        "discrete_features": (5, 0),
        "author_embedding": (5, 4),
    }
    assert example.binary_features.dtype == torch.uint8
    assert example.user_embedding is None

    class Sum(torch.nn.Module):
        def forward(self, inputs: DenseInputs) -> torch.Tensor:
            return inputs.continuous_features.sum(1) + inputs.author_embedding.sum(1)

    program = torch.export.export(Sum(), (example,))
    torch.testing.assert_close(program.module()(example), Sum()(example))


def test_calibration_ratio_of_a_task():
    sampling = TaskSampling(pos_downsampling_rate=1.0, neg_downsampling_rate=0.25)
    assert sampling.log_ratio == pytest.approx(math.log(0.25))
