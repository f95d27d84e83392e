"""TFRecord framing and tf.Example decoding, against files TensorFlow itself wrote."""

from __future__ import annotations

import gzip
import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest

from projects.home.recap.data.schema import load_schema, parse_schema
from projects.home.recap.data.tf_example import (
    Example,
    ExampleColumns,
    decode_varints,
    encode_example,
    parse_example,
)
from projects.home.recap.data.tfrecord import (
    TFRecordError,
    encode_record,
    iter_records,
    masked_crc32c,
    write_records,
)

FIXTURES = Path(__file__).parents[1] / "fixtures" / "tfrecords"
SCHEMA_2022 = Path(__file__).parents[5] / "projects/home/recap/config/home_recap_2022/segdense.json"


def load_fixture_module():
    spec = importlib.util.spec_from_file_location("make_fixtures", FIXTURES / "make_fixtures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def bits(values: np.ndarray) -> np.ndarray:
    return values.view(np.int32) if values.dtype == np.float32 else values


def test_masked_crc32c_matches_tensorflow():
    # Both checksums of the first record of a file TensorFlow wrote.
    plain = (FIXTURES / "part-00001.tfrecord").read_bytes()
    length = int.from_bytes(plain[:8], "little")
    assert masked_crc32c(plain[:8]) == int.from_bytes(plain[8:12], "little")
    data = plain[12 : 12 + length]
    assert masked_crc32c(data) == int.from_bytes(plain[12 + length : 16 + length], "little")


@pytest.mark.parametrize("name", ["part-00000.tfrecord.gz", "part-00001.tfrecord"])
def test_tensorflow_files_decode_to_what_was_written(name: str):
    fixtures = load_fixture_module()
    schema = load_schema(SCHEMA_2022)
    columns = ExampleColumns(schema)
    count = 0
    for _, data in iter_records(str(FIXTURES / name)):
        columns.add(data)
        count += 1
    expected = fixtures.fixture_records(name)
    assert count == len(expected)
    decoded = columns.take()
    assert decoded.rows == count and not decoded.rejected
    values = decoded.columns
    for row, record in enumerate(expected):
        for feature, written in record.items():
            assert np.array_equal(bits(values[feature][row]), bits(written)), (row, feature)


def test_missing_features_get_the_original_defaults():
    fixtures = load_fixture_module()
    schema = load_schema(SCHEMA_2022)
    columns = ExampleColumns(schema)
    for _, data in iter_records(str(FIXTURES / "missing_optional.tfrecord.gz")):
        columns.add(data)
    values = columns.take().columns
    assert not values["recap.engagement.is_shared"].any()
    assert not values[fixtures.EMBEDDINGS[0]].any()
    assert columns.missing["recap.engagement.is_shared"] == 8
    assert (
        values["meta.user_id"][0, 0]
        == fixtures.fixture_records("missing_optional.tfrecord.gz")[0]["meta.user_id"][0]
    )


def test_fast_decoder_agrees_with_protobuf_on_other_encodings():
    schema = parse_schema(
        {
            "schema": [
                {"feature_name": "f", "dtype": "float_list", "length": 3},
                {"feature_name": "i", "dtype": "int64_list", "length": 2},
                {"feature_name": "v", "dtype": "int64_list", "length": -1},
                {"feature_name": "b", "dtype": "bytes_list", "length": 1},
            ]
        },
        "test",
    )
    canonical = encode_example(
        {
            "f": np.array([1.5, -0.0, np.inf], np.float32),
            "i": np.array([-1, 2**62]),
            "v": np.array([7, 8, 9]),
            "b": [b"x"],
        }
    )
    # The same values with unpacked floats: field 1 of FloatList as separate fixed32 entries.
    example = Example()
    example.features.feature["f"].float_list.value.extend([1.5, -0.0, float("inf")])
    example.features.feature["i"].int64_list.value.extend([-1, 2**62])
    example.features.feature["v"].int64_list.value.extend([7, 8, 9])
    example.features.feature["b"].bytes_list.value.append(b"x")
    # The same values with the floats unpacked (one fixed32 entry each, as some non-TensorFlow
    # writers do), in a second Features occurrence, which protobuf merges into the first.
    float_list = b"".join(b"\x0d" + np.float32(v).tobytes() for v in (1.5, -0.0, np.inf))
    feature = b"\x12" + bytes([len(float_list)]) + float_list
    entry = b"\x0a\x01f\x12" + bytes([len(feature)]) + feature
    features = b"\x0a" + bytes([len(entry)]) + entry
    others = encode_example({"i": np.array([-1, 2**62]), "v": np.array([7, 8, 9]), "b": [b"x"]})
    unpacked = others + b"\x0a" + bytes([len(features)]) + features
    assert unpacked != canonical
    assert parse_example(unpacked)["f"][1].tolist() == [1.5, -0.0, np.inf]
    # The same values with v's packed list in two pieces (valid protobuf: they concatenate).
    pieces = b"\x0a\x01\x07\x0a\x02\x08\x09"
    feature = b"\x1a" + bytes([len(pieces)]) + pieces
    entry = b"\x0a\x01v\x12" + bytes([len(feature)]) + feature
    split = encode_example(
        {"f": np.array([1.5, -0.0, np.inf], np.float32), "i": np.array([-1, 2**62]), "b": [b"x"]}
    )
    split += b"\x0a" + bytes([len(entry) + 2]) + b"\x0a" + bytes([len(entry)]) + entry
    assert parse_example(split)["v"][1].tolist() == [7, 8, 9]
    columns = ExampleColumns(schema)
    columns.add(canonical)
    columns.add(unpacked)
    columns.add(example.SerializeToString())
    columns.add(split)
    values = columns.take().columns
    for row in range(4):
        assert (
            bits(values["f"][row]).tolist()
            == bits(np.array([1.5, -0.0, np.inf], np.float32)).tolist()
        )
        assert values["i"][row].tolist() == [-1, 2**62]
        assert values["v"][row] == [7, 8, 9]
        assert values["b"][row] == b"x"


def test_bad_records_name_the_feature_and_keep_nothing():
    schema = parse_schema(
        {
            "schema": [
                {"feature_name": "f", "dtype": "float_list", "length": 3},
                {"feature_name": "i", "dtype": "int64_list", "length": 2},
            ]
        },
        "test",
    )
    columns = ExampleColumns(schema)
    good = {"f": np.arange(3, dtype=np.float32), "i": np.array([5, 6])}
    records = [
        encode_example({**good, "f": np.zeros(2, np.float32)}),
        encode_example(good),
        encode_example({**good, "f": np.zeros(3, np.int64)}),
        b"\xff\xff\xff",
        encode_example({**good, "i": np.array([1, 2, 3])}),
        encode_example({**good, "i": np.array([2**40, -1])}),
    ]
    for record in records:
        columns.add(record)
    decoded = columns.take()
    messages = {position: str(error) for position, error in decoded.rejected}
    assert messages == {
        0: "feature 'f' holds 2 values, the schema says 3",
        2: "feature 'f' is a int64_list, the schema says float_list",
        3: messages[3],
        4: "feature 'i' holds 3 values, the schema says 2",
    }
    assert "not a valid tf.Example" in messages[3]
    # Only the good records, in order: nothing of a bad one is kept.
    assert decoded.rows == 2
    assert decoded.columns["f"].tolist() == [[0, 1, 2], [0, 1, 2]]
    assert decoded.columns["i"].tolist() == [[5, 6], [2**40, -1]]
    assert len(columns) == 0 and not columns.missing


def test_decode_varints_matches_protobuf():
    values = np.array([0, 1, 127, 128, 300, -1, -(2**63), 2**63 - 1, 2**40], np.int64)
    example = parse_example(encode_example({"x": values}))
    assert example["x"][1].tolist() == values.tolist()
    payload = (
        Example.FromString(encode_example({"x": values}))
        .features.feature["x"]
        .int64_list.SerializeToString()[2:]
    )
    assert decode_varints(payload).tolist() == values.tolist()


def _corrupt_copy(tmp_path: Path, content: bytes, name: str = "bad.tfrecord") -> str:
    path = tmp_path / name
    path.write_bytes(content)
    return str(path)


def test_flipped_byte_names_file_and_record(tmp_path: Path):
    records = [encode_example({"x": np.arange(i + 1)}) for i in range(4)]
    good = b"".join(encode_record(data) for data in records)
    offset = len(encode_record(records[0])) + 12 + 3  # inside record 1's data
    flipped = bytearray(good)
    flipped[offset] ^= 0x01
    path = _corrupt_copy(tmp_path, bytes(flipped))
    with pytest.raises(TFRecordError) as error:
        list(iter_records(path))
    assert str(error.value).startswith(f"{path}: record 1: corrupt record (data checksum")
    assert "\n" not in str(error.value)
    problems: list[TFRecordError] = []
    kept = [index for index, _ in iter_records(path, on_corrupt=problems.append)]
    assert kept == [0, 2, 3]
    assert [problem.record for problem in problems] == [1]


def test_truncated_and_empty_files(tmp_path: Path):
    good = b"".join(encode_record(encode_example({"x": np.arange(5)})) for _ in range(3))
    truncated = _corrupt_copy(tmp_path, good[:-7])
    with pytest.raises(TFRecordError, match=r"record 2: truncated: the file ends after"):
        list(iter_records(truncated))
    empty = _corrupt_copy(tmp_path, b"", "empty.tfrecord.gz")
    with pytest.raises(TFRecordError, match=r"empty.tfrecord.gz: record 0: the file is empty"):
        list(iter_records(empty))
    gz = tmp_path / "cut.tfrecord.gz"
    gz.write_bytes(gzip.compress(good)[:-20])
    with pytest.raises(TFRecordError, match=r"cut.tfrecord.gz: record \d: truncated compressed"):
        list(iter_records(str(gz)))


@pytest.mark.parametrize("compression", ["gzip", "zlib", "none"])
def test_writer_round_trips(tmp_path: Path, compression: str):
    path = str(tmp_path / "data")
    payloads = [os.urandom(n) for n in (0, 1, 100, 70000)]
    assert write_records(path, payloads, compression) == 4
    assert [data for _, data in iter_records(path)] == payloads


def test_gzip_members_padding_and_damage(tmp_path: Path):
    payloads = [os.urandom(n) for n in (10, 3000, 70000, 5)]
    framed = [encode_record(data) for data in payloads]
    # Two members (as `cat a.gz b.gz` makes), split inside a record, then zero padding.
    joined = tmp_path / "members.tfrecord.gz"
    cut = len(framed[0]) + 100
    body = b"".join(framed)
    joined.write_bytes(gzip.compress(body[:cut]) + gzip.compress(body[cut:]) + bytes(9))
    assert [data for _, data in iter_records(str(joined))] == payloads

    trailing = _corrupt_copy(tmp_path, gzip.compress(body) + b"junk", "trailing.tfrecord.gz")
    with pytest.raises(TFRecordError, match=r"record 4: corrupt compressed stream: .*not gzip"):
        list(iter_records(trailing))
    # A flipped byte in the deflate data or in the gzip trailer's CRC: the inflater says so.
    for position in (len(gzip.compress(body)) // 2, -6):
        damaged = bytearray(gzip.compress(body))
        damaged[position] ^= 0x10
        path = _corrupt_copy(tmp_path, bytes(damaged), "damaged.tfrecord.gz")
        problems: list[TFRecordError] = []
        list(iter_records(path, on_corrupt=problems.append))
        assert len(problems) == 1 and not problems[0].recoverable
        assert problems[0].path == path and "\n" not in str(problems[0])
