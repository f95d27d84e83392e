import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from projects.home.recap.data.parquet_format import (
    METADATA_KEY,
    ParquetDataFile,
    SegDenseWriter,
    WriteOptions,
    plan_layout,
)
from projects.home.recap.data.reader import DataFileError, FeatureRead
from projects.home.recap.data.schema import FeatureDtype, FeatureSpec, load_schema, parse_schema

from .conftest import rows_for


def test_layout_chunks_long_features_and_cuts_at_split_points():
    schema = parse_schema(
        {
            "schema": [
                {"feature_name": "v", "dtype": "float_list", "length": 10},
                {"feature_name": "s", "dtype": "int64_list", "length": 1},
                {"feature_name": "short", "dtype": "int64_list", "length": 3},
            ]
        },
        "inline",
    )
    layout = plan_layout(schema, chunk_size=4, split_points={"v": [7, 99]})
    assert [(c.column, c.start, c.stop) for c in layout["v"]] == [
        ("v[0:4]", 0, 4),
        ("v[4:7]", 4, 7),
        ("v[7:8]", 7, 8),
        ("v[8:10]", 8, 10),
    ]
    assert [(c.column, c.start, c.stop) for c in layout["s"]] == [("s", 0, 1)]
    assert [(c.column, c.start, c.stop) for c in layout["short"]] == [("short", 0, 3)]


def test_written_file_records_schema_and_layout_in_metadata(write_files, schema_path):
    (path,) = write_files([6])
    metadata = pq.read_schema(path).metadata[METADATA_KEY]
    stored = json.loads(metadata)
    assert stored["schema"] == load_schema(schema_path).to_json()["schema"]
    assert stored["layout"]["cont"][0] == ["cont[0:5]", 0, 5]
    assert pq.ParquetFile(path).metadata.row_group(0).column(0).compression == "ZSTD"


def test_read_selects_columns_across_chunks(write_files, schema_path):
    (path,) = write_files([6], row_group_size=4, chunk_size=5)
    schema = load_schema(schema_path)
    keep = np.array([1, 2, 6, 11])
    data_file = ParquetDataFile(
        path,
        schema,
        [
            FeatureRead(schema.get("cont", where="test"), keep),
            FeatureRead(schema.get("bin", where="t")),
        ],
    )
    assert data_file.row_group_rows == [4, 2]
    # Chunk cont[5:10] is only partly needed, cont[10:12] for one column; all three are read.
    assert data_file.columns == ["cont[0:5]", "cont[5:10]", "cont[10:12]", "bin[0:5]", "bin[5:6]"]
    first, second = data_file.read(0), data_file.read(1)
    expected = rows_for(np.arange(6))
    np.testing.assert_array_equal(
        np.concatenate([first["cont"], second["cont"]]), expected["cont"][:, keep]
    )
    np.testing.assert_array_equal(np.concatenate([first["bin"], second["bin"]]), expected["bin"])
    assert first["cont"].dtype == np.float32 and first["bin"].dtype == np.int64


def test_truncated_read_skips_the_chunks_it_does_not_need(write_files, schema_path):
    (path,) = write_files([3], chunk_size=5)
    schema = load_schema(schema_path)
    data_file = ParquetDataFile(
        path, schema, [FeatureRead(schema.get("cont", where="t"), np.arange(4))]
    )
    assert data_file.columns == ["cont[0:5]"]


def _plain_file(path, columns):
    pq.write_table(pa.table(columns), path)
    return path


SPEC = FeatureSpec("x", FeatureDtype.FLOAT_LIST, 3)
SCHEMA = parse_schema(
    {"schema": [SPEC.to_json(), {"feature_name": "y", "dtype": "int64_list", "length": 1}]},
    "s.json",
)


def test_plain_files_without_metadata_are_read_by_feature_name(tmp_path):
    values = [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]
    for column in (
        pa.array(values, type=pa.list_(pa.float64(), 3)),
        pa.array(values, type=pa.list_(pa.float32())),
    ):
        path = _plain_file(
            str(tmp_path / "p.parquet"), {"x": column, "y": pa.array([1, 2], pa.int32())}
        )
        data_file = ParquetDataFile(
            path, SCHEMA, [FeatureRead(SPEC), FeatureRead(SCHEMA.get("y", where="t"))]
        )
        result = data_file.read(0)
        np.testing.assert_array_equal(result["x"], np.array(values, np.float32))
        np.testing.assert_array_equal(result["y"], [[1], [2]])
        assert result["y"].dtype == np.int64


def test_missing_column_names_file_and_column(tmp_path):
    path = _plain_file(str(tmp_path / "p.parquet"), {"y": pa.array([1])})
    with pytest.raises(DataFileError, match=r"p\.parquet: column 'x' \(feature 'x'\) is missing"):
        ParquetDataFile(path, SCHEMA, [FeatureRead(SPEC)])


def test_wrong_fixed_length_names_file_and_column(tmp_path):
    path = _plain_file(
        str(tmp_path / "p.parquet"), {"x": pa.array([[1.0, 2.0]], pa.list_(pa.float32(), 2))}
    )
    with pytest.raises(
        DataFileError, match=r"p\.parquet: column 'x': holds 2 values per row, expected 3"
    ):
        ParquetDataFile(path, SCHEMA, [FeatureRead(SPEC)])


def test_wrong_variable_row_length_names_file_and_column(tmp_path):
    path = _plain_file(
        str(tmp_path / "p.parquet"),
        {"x": pa.array([[1.0, 2.0, 3.0], [1.0]], pa.list_(pa.float32()))},
    )
    data_file = ParquetDataFile(path, SCHEMA, [FeatureRead(SPEC)])
    with pytest.raises(
        DataFileError, match=r"p\.parquet: column 'x': row 1 .* holds 1 values, expected 3"
    ):
        data_file.read(0)


def test_wrong_value_type_and_nulls_are_errors(tmp_path):
    path = _plain_file(
        str(tmp_path / "p.parquet"), {"x": pa.array([["a", "b", "c"]], pa.list_(pa.string(), 3))}
    )
    with pytest.raises(DataFileError, match=r"column 'x': values of type string do not match"):
        ParquetDataFile(path, SCHEMA, [FeatureRead(SPEC)])
    path = _plain_file(
        str(tmp_path / "n.parquet"), {"x": pa.array([[1.0, None, 3.0]], pa.list_(pa.float32(), 3))}
    )
    with pytest.raises(DataFileError, match=r"n\.parquet: column 'x': 1 null values"):
        ParquetDataFile(path, SCHEMA, [FeatureRead(SPEC)]).read(0)


def test_file_written_with_another_length_is_an_error(write_files, tmp_path, schema_path):
    (path,) = write_files([2])
    longer = json.loads(Path(schema_path).read_text())
    longer["schema"][0]["length"] = 20
    schema = parse_schema(longer, "longer.json")
    with pytest.raises(
        DataFileError, match=r"feature 'cont' has length 12 in this file, the schema says 20"
    ):
        ParquetDataFile(path, schema, [FeatureRead(schema.get("cont", where="t"))])


def test_unreadable_file_is_named(tmp_path, schema_path):
    path = tmp_path / "junk.parquet"
    path.write_bytes(b"not a parquet file at all")
    schema = load_schema(schema_path)
    with pytest.raises(DataFileError, match=r"cannot read Parquet file .*junk\.parquet"):
        ParquetDataFile(str(path), schema, [FeatureRead(schema.get("bin", where="t"))])


def test_nan_and_inf_pass_through(tmp_path):
    schema = parse_schema({"schema": [SPEC.to_json()]}, "s.json")
    path = str(tmp_path / "nan.parquet")
    with SegDenseWriter(path, schema, WriteOptions()) as writer:
        writer.write({"x": np.array([[np.nan, np.inf, -np.inf]], np.float32)})
    result = ParquetDataFile(path, schema, [FeatureRead(SPEC)]).read(0)["x"]
    assert np.isnan(result[0, 0]) and result[0, 1] == np.inf and result[0, 2] == -np.inf


def test_writer_rejects_wrong_shapes(tmp_path):
    schema = parse_schema({"schema": [SPEC.to_json()]}, "s.json")
    with (
        SegDenseWriter(str(tmp_path / "w.parquet"), schema) as writer,
        pytest.raises(ValueError, match=r"feature 'x' needs shape \[rows, 3\], got \[2, 2\]"),
    ):
        writer.write({"x": np.zeros((2, 2), np.float32)})


def test_list_values_are_written_non_nullable(write_files):
    # Dense features have no missing values: one definition level less per value to write.
    (path,) = write_files([6])
    lists = [field for field in pq.read_schema(path) if pa.types.is_fixed_size_list(field.type)]
    assert lists
    assert not any(field.type.value_field.nullable for field in lists)
    parquet = pq.ParquetFile(path).schema
    leaves = [
        parquet.column(i) for i in range(len(parquet)) if parquet.column(i).max_repetition_level
    ]
    assert leaves
    assert {leaf.max_definition_level for leaf in leaves} == {1}
