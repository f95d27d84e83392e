import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from projects.home.recap.data.embedding_ids import (
    HashedIds,
    SparseFeatures,
    VocabError,
    VocabIds,
    hash_ids,
)
from projects.home.recap.embedding.config import EmbeddingBagConfig


def test_hash_is_deterministic_in_range_and_spreads_sequential_ids():
    ids = np.arange(10_000, dtype=np.int64) * 1024  # shared low bits: plain modulo piles them up
    rows = hash_ids(ids, 100)
    assert rows.min() >= 0 and rows.max() < 100
    assert np.array_equal(rows, hash_ids(ids, 100))
    assert np.bincount(rows, minlength=100).max() < 150  # ~100 each; modulo would put all in 0
    assert (
        hash_ids(np.array([-5, 2**62], dtype=np.int64), 7).tolist()
        == hash_ids(np.array([-5, 2**62], dtype=np.int64), 7).tolist()
    )


def _vocab(directory, ids, rows, name="part.parquet"):
    directory.mkdir(exist_ok=True)
    pq.write_table(
        pa.table({"id": pa.array(ids, pa.int64()), "row": pa.array(rows, pa.int64())}),
        directory / name,
    )
    return str(directory)


def test_vocab_maps_known_ids_and_hashes_unknown_ones_into_spare_rows(tmp_path):
    directory = _vocab(tmp_path / "vocab", [500, 100, 300], [2, 0, 1])
    mapper = VocabIds(directory, num_embeddings=10, where="t")
    ids = np.array([100, 300, 500, 7, 8, 9, 123456789], dtype=np.int64)
    rows = mapper(ids)
    assert rows[:3].tolist() == [0, 1, 2]
    assert all(3 <= row < 10 for row in rows[3:])
    assert rows[3:].tolist() == (hash_ids(ids[3:], 7) + 3).tolist()


def test_a_vocab_must_leave_rows_for_unknown_ids(tmp_path):
    # Unknown ids once shared row 0, which a listed id trains too.
    directory = _vocab(tmp_path / "vocab", [11, 22], [1, 0])
    with pytest.raises(VocabError, match=r"t: vocab .* uses all 2 rows, leaving none for ids"):
        VocabIds(directory, num_embeddings=2, where="t")
    with pytest.raises(VocabError, match=r"into the last 2 rows kept for unknown ids \(from row 1"):
        VocabIds(directory, num_embeddings=3, where="t", unknown_id_rows=2)


def test_unknown_ids_keep_their_rows_at_the_end_of_the_table_when_the_vocab_grows(tmp_path):
    small = _vocab(tmp_path / "small", [100, 200], [0, 1])
    grown = _vocab(tmp_path / "grown", [100, 200, 300, 400], [0, 1, 2, 3])
    unknown = np.arange(1_000, 3_000, dtype=np.int64)
    before = VocabIds(small, num_embeddings=20, where="t", unknown_id_rows=8)(unknown)
    after = VocabIds(grown, num_embeddings=20, where="t", unknown_id_rows=8)(unknown)
    assert before.tolist() == after.tolist()
    assert set(before.tolist()) == set(range(12, 20))  # spread over all 8 rows, not one
    assert np.bincount(before - 12).min() > 150  # ~250 each
    known = VocabIds(grown, num_embeddings=20, where="t", unknown_id_rows=8)
    assert known(np.array([300, 400])).tolist() == [2, 3]


def test_unknown_id_rows_needs_a_vocab_and_spare_rows():
    base = {"name": "t", "num_embeddings": 4, "embedding_dim": 2}
    with pytest.raises(ValueError, match="needs a vocab"):
        EmbeddingBagConfig.model_validate({**base, "unknown_id_rows": 2})
    with pytest.raises(ValueError, match="4 must be fewer than the table's 4 rows"):
        EmbeddingBagConfig.model_validate({**base, "vocab": "v", "unknown_id_rows": 4})


def test_vocab_errors_name_the_file_or_directory(tmp_path):
    with pytest.raises(VocabError, match=r"vocab directory .*missing does not exist"):
        VocabIds(str(tmp_path / "missing"), 10, "t")
    (tmp_path / "empty").mkdir()
    with pytest.raises(VocabError, match=r"holds no .parquet file"):
        VocabIds(str(tmp_path / "empty"), 10, "t")
    bad = tmp_path / "bad"
    bad.mkdir()
    pq.write_table(pa.table({"id": [1]}), bad / "v.parquet")
    with pytest.raises(VocabError, match=r"v\.parquet has no column 'row'"):
        VocabIds(str(bad), 10, "t")
    with pytest.raises(VocabError, match=r"outside the table's 3 rows"):
        VocabIds(_vocab(tmp_path / "big", [1], [5]), 3, "t")
    with pytest.raises(VocabError, match=r"lists id 1 twice"):
        VocabIds(_vocab(tmp_path / "twice", [1, 1], [0, 1]), 3, "t")


def test_sparse_features_key_tables_in_config_order(tmp_path):
    tables = [
        EmbeddingBagConfig(name="meta__user_id", num_embeddings=50, embedding_dim=4),
        EmbeddingBagConfig(
            name="meta__author_id",
            num_embeddings=6,
            embedding_dim=4,
            vocab=_vocab(tmp_path / "v", [7, 8], [3, 4]),
            unknown_id_rows=1,
        ),
    ]
    features = {
        "meta__author_id": torch.tensor([[7], [8], [9]]),
        "meta__user_id": torch.tensor([[1], [2], [3]]),
    }
    kjt = SparseFeatures(tables)(features)
    assert kjt.keys() == ["meta__user_id", "meta__author_id"]
    assert kjt.lengths().tolist() == [1] * 6
    assert kjt["meta__author_id"].values().tolist() == [3, 4, 5]  # 9 is unknown: the last row
    assert kjt["meta__user_id"].values().tolist() == HashedIds(50)(np.array([1, 2, 3])).tolist()
