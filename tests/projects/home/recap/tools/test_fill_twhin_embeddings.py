"""Filling a TwHIN embedding feature from per-entity vectors, matched by id."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from projects.home.recap.data.parquet_format import ParquetDataFile
from projects.home.recap.data.reader import FeatureRead
from projects.home.recap.data.schema import load_schema
from projects.home.recap.tools.fill_twhin_embeddings import FillError, fill_files

from ..data.conftest import rows_for


def write_vectors(path, ids, width=4):
    vectors = np.arange(len(ids) * width, dtype=np.float32).reshape(len(ids), width)
    flat = pa.array(vectors.reshape(-1))
    pq.write_table(
        pa.table(
            {
                "id": pa.array(ids, pa.int64()),
                "embedding": pa.FixedSizeListArray.from_arrays(flat, width),
            }
        ),
        path,
    )
    return dict(zip(ids, vectors, strict=True))


def test_every_row_gets_its_entity_vector_and_the_rest_is_kept(
    tmp_path, write_files, make_config, schema_path
):
    inputs = write_files([10, 7])
    # meta.user_id of example i is 7919 * i: vectors for the even examples only.
    known = write_vectors(tmp_path / "user.parquet", [7919 * i for i in range(0, 17, 2)])
    written = fill_files(
        make_config(),
        str(tmp_path / "data" / "*.parquet"),
        str(tmp_path / "filled"),
        str(tmp_path / "user.parquet"),
        "meta__user_id",
        "user_embedding",
    )
    assert [p.rsplit("/", 1)[1] for p in written] == [p.rsplit("/", 1)[1] for p in inputs]
    schema = load_schema(schema_path)
    numeric = [FeatureRead(spec) for spec in schema if spec.name != "text"]
    rows = {name: [] for name in (read.spec.name for read in numeric)}
    for path in written:
        data = ParquetDataFile(path, schema, numeric)
        for group in range(len(data.row_group_rows)):
            for name, values in data.read(group).items():
                rows[name].append(values)
    rows = {name: np.concatenate(parts) for name, parts in rows.items()}
    expected = rows_for(np.arange(17))
    np.testing.assert_array_equal(rows["cont"], expected["cont"])
    for index, user in enumerate(rows["meta.user_id"][:, 0]):
        if user in known:
            np.testing.assert_array_equal(rows["user.emb"][index], known[user])
        else:
            assert np.isnan(rows["user.emb"][index]).all()


def test_a_width_mismatch_is_one_error_naming_the_vectors(
    tmp_path, write_files, make_config, capsys
):
    write_files([4])
    write_vectors(tmp_path / "user.parquet", [1, 2], width=3)
    with pytest.raises(FillError, match="width 3, the feature is 4 wide"):
        fill_files(
            make_config(),
            str(tmp_path / "data" / "*.parquet"),
            str(tmp_path / "filled"),
            str(tmp_path / "user.parquet"),
            "meta__user_id",
            "user_embedding",
        )
