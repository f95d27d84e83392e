"""The batch scan of tf.Examples, against protobuf's own decoding of every record."""

from __future__ import annotations

import numpy as np
import pytest

from projects.home.recap.data.example_scan import (
    ABSENT,
    FLOAT_LIST,
    INT64_LIST,
    scan_examples,
)
from projects.home.recap.data.schema import VARIABLE_LENGTH, parse_schema
from projects.home.recap.data.tf_example import (
    Example,
    ExampleColumns,
    ExampleError,
    encode_example,
    parse_example,
    schema_values,
)

SCHEMA = parse_schema(
    {
        "schema": [
            {"feature_name": "dense", "dtype": "float_list", "length": 7},
            {"feature_name": "ids", "dtype": "int64_list", "length": 4},
            {"feature_name": "label", "dtype": "int64_list", "length": 1},
            {"feature_name": "weight", "dtype": "float_list", "length": 1},
            {"feature_name": "history", "dtype": "int64_list", "length": -1},
            {"feature_name": "name", "dtype": "bytes_list", "length": 1},
        ]
    },
    "test",
)


def random_record(rng: np.random.Generator) -> dict:
    record = {
        "dense": rng.normal(size=7).astype(np.float32),
        "ids": rng.integers(-(2**63), 2**63 - 1, size=4, dtype=np.int64),
        "label": rng.integers(0, 2, size=1),
        "weight": rng.random(1).astype(np.float32),
        "history": rng.integers(0, 2**20, size=int(rng.integers(0, 5))),
        "name": [b"n%d" % rng.integers(100)],
    }
    for name in list(record):
        if rng.random() < 0.15:
            del record[name]
    if rng.random() < 0.2:
        record["not_in_schema"] = rng.integers(0, 300, size=3)
    return record


def reference(data: bytes) -> dict | ExampleError:
    """What protobuf makes of one record under the schema: its values, or the error."""
    try:
        parsed = parse_example(data)
    except ExampleError as error:
        return error
    for spec in SCHEMA:
        if spec.name in parsed:
            kind, values = parsed[spec.name]
            if kind != spec.dtype or (
                spec.length != VARIABLE_LENGTH and len(values) != spec.length
            ):
                return ExampleError(spec.name)
    return schema_values(parsed, SCHEMA)


def same(decoded, expected) -> bool:
    if isinstance(expected, np.ndarray) and expected.dtype == np.float32:
        return np.array_equal(
            np.asarray(decoded, np.float32).view(np.int32), expected.view(np.int32)
        )
    if isinstance(expected, np.ndarray):
        return np.asarray(decoded).tolist() == expected.tolist()
    return list(decoded) == list(expected)


def check_against_protobuf(records: list[bytes]) -> None:
    columns = ExampleColumns(SCHEMA)
    for record in records:
        columns.add(record)
    decoded = columns.take()
    expected = [reference(record) for record in records]
    rejected = {position for position, _ in decoded.rejected}
    assert rejected == {i for i, item in enumerate(expected) if isinstance(item, ExampleError)}
    accepted = [item for item in expected if not isinstance(item, ExampleError)]
    assert decoded.rows == len(accepted)
    for row, values in enumerate(accepted):
        for spec in SCHEMA:
            column = decoded.columns[spec.name]
            want = values[spec.name]
            if spec.name == "name":
                assert column[row] == (want[0] if want else b""), (row, spec.name)
            else:
                assert same(column[row], want), (row, spec.name)


def test_canonical_records_are_scanned_and_decode_like_protobuf():
    rng = np.random.default_rng(0)
    records = [encode_example(random_record(rng)) for _ in range(300)]
    records.append(b"")  # an Example with no features at all
    scan = scan_examples(records, {spec.name: i for i, spec in enumerate(SCHEMA)})
    # Only records with a string list (or no features) need protobuf; the numbers are found.
    parsed = [parse_example(record) for record in records]
    has_strings = np.array(["name" in item for item in parsed])
    assert scan.understood.tolist() == (~has_strings).tolist()
    for row, item in enumerate(parsed):
        if not scan.understood[row]:
            continue
        for column, name in enumerate(["dense", "ids", "label", "weight", "history"]):
            kind = scan.kinds[row, column]
            if name not in item:
                assert kind == ABSENT
                continue
            assert kind == (FLOAT_LIST if item[name][1].dtype == np.float32 else INT64_LIST)
    check_against_protobuf(records)


def test_damaged_records_are_rejected_or_decoded_exactly_as_protobuf_does():
    rng = np.random.default_rng(1)
    records = []
    for _ in range(1000):
        record = bytearray(encode_example(random_record(rng)))
        for _ in range(int(rng.integers(1, 3))):
            damage = rng.integers(4)
            if damage == 0 and record:
                record[rng.integers(len(record))] ^= 1 << int(rng.integers(8))
            elif damage == 1 and record:
                record[rng.integers(len(record))] = int(rng.integers(256))
            elif damage == 2:
                record = record[: int(rng.integers(len(record) + 1))]
        records.append(bytes(record))
    check_against_protobuf(records)


def test_other_valid_encodings_go_to_protobuf():
    canonical = encode_example({"dense": np.arange(7, dtype=np.float32), "label": np.array([1])})
    # The same features twice (protobuf keeps the last), and features with no kind set.
    twice = encode_example({"label": np.array([0])}) + canonical[:]
    example = Example.FromString(canonical)
    example.features.feature["ids"].SetInParent()
    no_kind = example.SerializeToString()
    # Unpacked int64 values (tag 0x08 each), as some writers produce.
    unpacked_list = b"\x08\x05\x08\x06\x08\x07\x08\x08"
    feature = b"\x1a" + bytes([len(unpacked_list)]) + unpacked_list
    entry = b"\x0a\x03ids\x12" + bytes([len(feature)]) + feature
    unpacked = canonical + b"\x0a" + bytes([len(entry) + 2]) + b"\x0a" + bytes([len(entry)]) + entry
    records = [canonical, twice, no_kind, unpacked]
    scan = scan_examples(records, {spec.name: i for i, spec in enumerate(SCHEMA)})
    assert scan.understood.tolist() == [True, False, True, False]
    check_against_protobuf(records)
    decoded = ExampleColumns(SCHEMA)
    for record in records:
        decoded.add(record)
    result = decoded.take()
    assert result.columns["label"][:, 0].tolist() == [1, 1, 1, 1]
    assert result.columns["ids"][3].tolist() == [5, 6, 7, 8]


@pytest.mark.parametrize("batch", [1, 2, 64])
def test_batches_of_any_size_agree(batch: int):
    rng = np.random.default_rng(batch)
    records = [encode_example(random_record(rng)) for _ in range(batch)]
    check_against_protobuf(records)


def test_single_values_take_every_varint_width():
    schema = parse_schema(
        {"schema": [{"feature_name": "x", "dtype": "int64_list", "length": 1}]}, "t"
    )
    values = [-1, -(2**63), 2**63 - 1, 0, 127, 128, 2**40]
    columns = ExampleColumns(schema)
    for value in values:
        columns.add(encode_example({"x": np.array([value])}))
    decoded = columns.take()
    assert not decoded.rejected
    assert decoded.columns["x"][:, 0].tolist() == values
