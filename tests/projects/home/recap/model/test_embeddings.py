import pytest
import torch
import torch.distributed.checkpoint as dcp
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from projects.home.recap.embedding.config import LargeEmbeddingsConfig, SmallEmbeddingsConfig
from projects.home.recap.model.embeddings import (
    LargeEmbeddings,
    SmallEmbeddings,
    TwhinNorms,
    load_pretrained_embeddings,
)


def test_small_embeddings_read_their_columns_modulo_the_rows():
    config = SmallEmbeddingsConfig(
        tables=[
            {"name": "a", "num_embeddings": 5, "embedding_dim": 2, "index": 2},
            {"name": "b", "num_embeddings": 3, "embedding_dim": 1, "index": 0},
        ]
    )
    module = SmallEmbeddings(config)
    discrete = torch.tensor([[4, 9, 7], [-1, 0, 3]])
    a, b = module.tables[0].weight, module.tables[1].weight
    expected = torch.stack([torch.cat([a[2], b[1]]), torch.cat([a[3], b[2]])])
    torch.testing.assert_close(module(discrete), expected)
    assert module.out_features == 3


def test_small_embedding_names_are_unique():
    with pytest.raises(ValueError, match="repeated"):
        SmallEmbeddingsConfig(
            tables=[
                {"name": "a", "num_embeddings": 5, "embedding_dim": 2, "index": i} for i in (0, 1)
            ]
        )


def large_config(pretrained=None):
    return LargeEmbeddingsConfig(
        tables=[
            {"name": "meta__user_id", "num_embeddings": 6, "embedding_dim": 3},
            {
                "name": "meta__author_id",
                "num_embeddings": 4,
                "embedding_dim": 2,
                "pretrained": pretrained,
            },
        ],
        optimizer={"init_learning_rate": 0.1},
    )


def test_large_embeddings_pool_by_sum_in_config_order():
    module = LargeEmbeddings(large_config(), torch.device("cpu"))
    # Keys in the other order than the tables; the author bag of example 0 holds two ids.
    sparse = KeyedJaggedTensor.from_lengths_sync(
        keys=["meta__author_id", "meta__user_id"],
        values=torch.tensor([1, 3, 2, 5, 0]),
        lengths=torch.tensor([2, 1, 1, 1]),
    )
    user = module.ebc.embedding_bags["meta__user_id"].weight
    author = module.ebc.embedding_bags["meta__author_id"].weight
    expected = torch.stack(
        [torch.cat([user[5], author[1] + author[3]]), torch.cat([user[0], author[2]])]
    )
    torch.testing.assert_close(module(sparse), expected)


def test_large_embeddings_stay_on_meta_until_sharding_places_them():
    module = LargeEmbeddings(large_config(), torch.device("meta"))
    assert all(parameter.is_meta for parameter in module.parameters())


def test_twhin_norms_normalise_each_embedding_in_fp32():
    norms = TwhinNorms({"user_embedding": 3, "author_embedding": 2})
    user = torch.tensor([[1.0, 2.0, 3.0]], dtype=torch.bfloat16)
    out = norms({"user_embedding": user, "author_embedding": torch.tensor([[5.0, 7.0]])})
    torch.testing.assert_close(out[0], torch.tensor([[-1.2247, 0.0, 1.2247]]), atol=1e-4, rtol=0)
    torch.testing.assert_close(out[1], torch.tensor([[-1.0, 1.0]]), atol=1e-4, rtol=0)


def test_pretrained_tables_load_from_a_distributed_checkpoint(recap, tmp_path):
    snapshot = torch.arange(8, dtype=torch.float32).view(4, 2)
    dcp.save({"twhin.author": snapshot, "other": torch.zeros(3)}, checkpoint_id=str(tmp_path))
    config = large_config({"emb_name": "twhin.author", "embedding_snapshot_uri": str(tmp_path)})
    tables = LargeEmbeddings(config, torch.device("cpu"))
    user_before = tables.ebc.embedding_bags["meta__user_id"].weight.clone()
    assert load_pretrained_embeddings(tables) == ["meta__author_id"]
    bags = tables.ebc.embedding_bags
    torch.testing.assert_close(bags["meta__author_id"].weight.detach(), snapshot)
    torch.testing.assert_close(bags["meta__user_id"].weight.detach(), user_before)
    assert load_pretrained_embeddings(None) == []


def test_table_weights_are_the_tables_by_name_sharing_their_storage():
    tables = LargeEmbeddings(large_config(), torch.device("cpu"))
    weights = tables.table_weights()
    assert list(weights) == ["meta__user_id", "meta__author_id"]
    for name, weight in weights.items():
        parameter = tables.ebc.embedding_bags[name].weight
        assert weight.data_ptr() == parameter.data_ptr() and weight.shape == parameter.shape
    assert {name: id(p) for name, p in tables.table_parameters().items()} == {
        name: id(tables.ebc.embedding_bags[name].weight) for name in weights
    }


@pytest.mark.parametrize(
    ("emb_name", "stored", "message"),
    [
        ("missing", torch.zeros(4, 2), "has no tensor 'missing'"),
        ("table", torch.zeros(5, 2), r"is \(5, 2\), the table is \(4, 2\)"),
    ],
)
def test_pretrained_errors_name_the_table(tmp_path, emb_name, stored, message):
    dcp.save({"table": stored}, checkpoint_id=str(tmp_path))
    config = large_config({"emb_name": emb_name, "embedding_snapshot_uri": str(tmp_path)})
    with pytest.raises(ValueError, match=message):
        load_pretrained_embeddings(LargeEmbeddings(config, torch.device("cpu")))
