import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from projects.home.recap.data.batch import RecapBatch


def make_batch():
    return RecapBatch(
        continuous_features=torch.randn(2, 3),
        binary_features=torch.ones(2, 4),
        discrete_features=torch.arange(4).view(2, 2),
        labels=torch.zeros(2, 1),
        weights=torch.ones(2, 1),
        user_embedding=torch.randn(2, 5),
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
    assert doubled.continuous_features.dtype == torch.float64
    assert doubled.extra_features["meta__tweet_id"].dtype == torch.float64
    assert doubled.author_embedding is None
    assert doubled.batch_size == 2


def test_to_and_pin_memory_keep_values():
    batch = make_batch()
    moved = batch.to(torch.device("cpu"), non_blocking=True)
    torch.testing.assert_close(moved.user_embedding, batch.user_embedding)
    assert moved.sparse_features.keys() == ["meta__user_id"]
    assert torch.equal(moved.sparse_features.values(), torch.tensor([7, 8]))
