"""tf.Example records: decoded with ``protobuf`` (no TensorFlow), and gathered into the arrays
our Parquet writer takes.

Two decoders, one meaning:

* :func:`parse_example` uses protobuf with a descriptor of tf.Example built here (the message
  layout of TensorFlow's ``example.proto`` and ``feature.proto``; it has not changed since
  2016). It accepts every valid encoding and is the reference: ``--verify``, the inspection
  command and every record the batch scan does not recognise use it.
* :class:`ExampleColumns` decodes a batch at once: :mod:`example_scan` finds each feature's
  packed payload in every record with numpy; floats are then little-endian float32 as they lie,
  and the varints of a whole column are decoded together. No value becomes a Python object.
  The scan recognises only the canonical encoding (what TensorFlow writes); any other record,
  and any whose values do not fit the schema, goes through :func:`parse_example`, so both give
  the same values and the same errors (``test_example_scan.py`` checks this on damaged
  records).

Features the schema lists but a record lacks get the original's defaults (it parsed every
feature as a ``FixedLenFeature`` with default 0, 0.0 or b""; variable-length ones as empty), and
are counted. Features a record holds beyond the schema are ignored, as the original did.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message, message_factory

from projects.home.recap.data.example_scan import (
    ABSENT,
    BYTES_LIST,
    FLOAT_LIST,
    INT64_LIST,
    ScannedRecords,
    read_varints,
    scan_examples,
)
from projects.home.recap.data.schema import (
    VARIABLE_LENGTH,
    FeatureDtype,
    FeatureSpec,
    SegDenseSchema,
)
from tml.core.errors import UserInputError

# Field numbers of Feature's one-of, by kind (tensorflow/core/example/feature.proto).
_KIND_FIELDS = {FeatureDtype.BYTES_LIST: 1, FeatureDtype.FLOAT_LIST: 2, FeatureDtype.INT64_LIST: 3}
_CONTINUATION_BYTES = bytes(range(0x80, 0x100))
_MAX_VARINT = 10
_DEFAULTS: dict[FeatureDtype, Any] = {
    FeatureDtype.INT64_LIST: 0,
    FeatureDtype.FLOAT_LIST: 0.0,
    FeatureDtype.BYTES_LIST: b"",
}


class ExampleError(UserInputError):
    """A record is not a valid tf.Example for the schema; the message says which feature."""


def _build_example_class() -> type[message.Message]:
    """tf.Example as a protobuf class, from a descriptor written out field by field."""
    field = descriptor_pb2.FieldDescriptorProto
    package = "tensorflow"
    proto = descriptor_pb2.FileDescriptorProto(
        name=f"tml/{package}_example.proto", package=package, syntax="proto3"
    )
    for name, value_type in (
        ("BytesList", field.TYPE_BYTES),
        ("FloatList", field.TYPE_FLOAT),
        ("Int64List", field.TYPE_INT64),
    ):
        values = proto.message_type.add(name=name).field.add(
            name="value", number=1, type=value_type, label=field.LABEL_REPEATED
        )
        if value_type != field.TYPE_BYTES:
            values.options.packed = True
    feature = proto.message_type.add(name="Feature")
    feature.oneof_decl.add(name="kind")
    for kind, number in _KIND_FIELDS.items():
        list_type = {"bytes_list": "BytesList", "float_list": "FloatList"}.get(kind, "Int64List")
        feature.field.add(
            name=kind.value,
            number=number,
            type=field.TYPE_MESSAGE,
            label=field.LABEL_OPTIONAL,
            type_name=f".{package}.{list_type}",
            oneof_index=0,
        )
    features = proto.message_type.add(name="Features")
    entry = features.nested_type.add(name="FeatureEntry")
    entry.options.map_entry = True
    entry.field.add(name="key", number=1, type=field.TYPE_STRING, label=field.LABEL_OPTIONAL)
    entry.field.add(
        name="value",
        number=2,
        type=field.TYPE_MESSAGE,
        label=field.LABEL_OPTIONAL,
        type_name=f".{package}.Feature",
    )
    features.field.add(
        name="feature",
        number=1,
        type=field.TYPE_MESSAGE,
        label=field.LABEL_REPEATED,
        type_name=f".{package}.Features.FeatureEntry",
    )
    proto.message_type.add(name="Example").field.add(
        name="features",
        number=1,
        type=field.TYPE_MESSAGE,
        label=field.LABEL_OPTIONAL,
        type_name=f".{package}.Features",
    )
    # A private pool: TensorFlow's own classes, if loaded in the same process, keep theirs.
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{package}.Example"))


Example = _build_example_class()

Values = np.ndarray | list[bytes]


def parse_example(data: bytes) -> dict[str, tuple[FeatureDtype, Values]]:
    """Every feature of a serialized tf.Example: name -> (kind, values).

    Values are int64 or float32 arrays, or a list of bytes. A feature with no kind set is left
    out (TensorFlow treats it as missing).

    Raises:
        ExampleError: when the bytes are not a tf.Example.
    """
    try:
        example = Example.FromString(data)
    except message.DecodeError as error:
        raise ExampleError(f"not a valid tf.Example: {error}") from None
    parsed: dict[str, tuple[FeatureDtype, Values]] = {}
    for name, feature in example.features.feature.items():
        kind = feature.WhichOneof("kind")
        if kind is None:
            continue
        dtype = FeatureDtype(kind)
        values = getattr(feature, kind).value
        if dtype == FeatureDtype.BYTES_LIST:
            parsed[name] = (dtype, list(values))
        else:
            parsed[name] = (dtype, np.array(values, dtype=_numpy_dtype(dtype)))
    return parsed


def encode_example(features: Mapping[str, Values]) -> bytes:
    """A serialized tf.Example of name -> values (int arrays become int64_list, float arrays
    float_list, lists of bytes bytes_list)."""
    example = Example()
    for name, values in features.items():
        feature = example.features.feature[name]
        if isinstance(values, np.ndarray) and values.dtype.kind == "f":
            feature.float_list.value.extend(values.astype(np.float32).tolist())
        elif isinstance(values, np.ndarray):
            feature.int64_list.value.extend(values.astype(np.int64).tolist())
        else:
            feature.bytes_list.value.extend(values)
    return example.SerializeToString()


def _numpy_dtype(dtype: FeatureDtype) -> np.dtype:
    return np.dtype(np.float32) if dtype == FeatureDtype.FLOAT_LIST else np.dtype(np.int64)


def decode_varints(payload: bytes) -> np.ndarray:
    """The int64 values of concatenated varints (protobuf's packed int64 encoding), at numpy
    speed.

    Raises:
        ExampleError: when a varint is longer than 10 bytes or the payload ends inside one.
    """
    raw = np.frombuffer(payload, dtype=np.uint8)
    continued = raw >= 0x80
    if not continued.any():
        return raw.astype(np.int64)
    if continued[-1]:
        raise ExampleError("malformed int64_list: the values end inside a varint")
    ends = np.flatnonzero(~continued)
    starts = np.empty_like(ends)
    starts[0] = 0
    starts[1:] = ends[:-1] + 1
    lengths = ends - starts + 1
    if lengths.max() > 10:
        raise ExampleError("malformed int64_list: a varint longer than 10 bytes")
    shifts = (np.arange(raw.size) - np.repeat(starts, lengths)).astype(np.uint64) * np.uint64(7)
    # The 7-bit groups occupy disjoint bits, so a sum is their OR; bits shifted past 64 (the
    # tenth byte of a negative number holds one meaningful bit) drop out as they should.
    parts = (raw & np.uint8(0x7F)).astype(np.uint64) << shifts
    return np.add.reduceat(parts, starts).view(np.int64)


def _count_values(kind: FeatureDtype, payload: bytes) -> int:
    if kind == FeatureDtype.FLOAT_LIST:
        if len(payload) % 4:
            raise ExampleError("malformed float_list: length not a multiple of 4")
        return len(payload) // 4
    if payload and payload[-1] >= 0x80:
        raise ExampleError("malformed int64_list: the values end inside a varint")
    # One terminating byte (high bit clear) per varint.
    return len(payload.translate(None, _CONTINUATION_BYTES))


@dataclasses.dataclass
class DecodedRecords:
    """The records of one :meth:`ExampleColumns.take`.

    Attributes:
        columns: Feature name -> the accepted records' values, in the writer's form (one array
            per fixed-length numeric feature, lists for the others), rows in record order.
        rows: How many records were accepted.
        rejected: (position among the records added, why) of each record left out.
    """

    columns: dict[str, Any]
    rows: int
    rejected: list[tuple[int, ExampleError]]


class ExampleColumns:
    """Gathers serialized records into per-feature columns for :class:`SegDenseWriter`.

    ``add`` queues a record; ``take`` decodes everything queued at once and starts over. A
    record that is not a valid tf.Example for the schema (wrong kind or number of values, not a
    tf.Example at all) is left out whole and reported with its position, so a caller may skip
    it and go on.

    Decoding is a batch scan (:mod:`example_scan`) that finds every feature's packed payload in
    all records with numpy; floats are then little-endian float32 as they lie, and the varints
    of a whole column are decoded at once. A record the scan does not recognise, or whose values
    do not fit the schema, is decoded on its own by protobuf (which also words the error).

    Attributes:
        missing: Feature name -> accepted records that lacked it and got the default.
    """

    def __init__(self, schema: SegDenseSchema):
        self.schema = schema
        self.specs = list(schema)
        self._columns = {spec.name: index for index, spec in enumerate(self.specs)}
        self.missing: collections.Counter[str] = collections.Counter()
        self._records: list[bytes] = []

    def __len__(self) -> int:
        return len(self._records)

    def add(self, data: bytes) -> None:
        """Queues one serialized tf.Example as the next record."""
        self._records.append(data)

    def take(self) -> DecodedRecords:
        """Decodes the queued records; then starts over."""
        records, self._records = self._records, []
        scan = scan_examples(records, self._columns)
        # Per feature: (rows decoded from the scan, their values); rows whose values the scan
        # cannot vouch for join the records protobuf decodes.
        unsure = ~scan.understood
        scanned = []
        for index, spec in enumerate(self.specs):
            rows, values, doubtful = self._scanned_values(scan, index, spec)
            unsure[doubtful] = True
            scanned.append((rows, values))
        decoded: dict[int, dict[int, Any]] = {}
        rejected: list[tuple[int, ExampleError]] = []
        for row in np.flatnonzero(unsure).tolist():
            try:
                decoded[row] = self._decode_record(records[row])
            except ExampleError as error:
                rejected.append((row, error))
        accepted = np.ones(len(records), dtype=bool)
        accepted[[row for row, _ in rejected]] = False
        output_row = np.cumsum(accepted) - 1
        count = int(accepted.sum())
        from_scan = ~unsure
        columns = {}
        for index, spec in enumerate(self.specs):
            rows, values = scanned[index]
            keep = from_scan[rows]
            rows, values = rows[keep], _select(values, keep)
            fallback = [
                (int(output_row[row]), item[index])
                for row, item in decoded.items()
                if index in item
            ]
            present = len(rows) + len(fallback)
            if present < count:
                self.missing[spec.name] += count - present
            columns[spec.name] = self._column(spec, count, output_row[rows], values, fallback)
        return DecodedRecords(columns=columns, rows=count, rejected=rejected)

    def _scanned_values(
        self, scan: ScannedRecords, index: int, spec: FeatureSpec
    ) -> tuple[np.ndarray, Any, np.ndarray]:
        """One feature's values from the scan: (rows, values, rows to decode otherwise)."""
        kinds = scan.kinds[:, index]
        present = kinds != ABSENT
        expected = _SCAN_KINDS.get(spec.dtype, ABSENT)
        doubtful = present & (kinds != expected)
        rows = np.flatnonzero(present & (kinds == expected))
        offsets, lengths = scan.offsets[rows, index], scan.lengths[rows, index]
        if not spec.is_fixed_numeric:
            values, bad = _payload_lists(scan.buffer, offsets, lengths, spec)
            doubtful[rows[bad]] = True
            return rows[~bad], values, doubtful
        if spec.dtype == FeatureDtype.FLOAT_LIST:
            bad = lengths != 4 * spec.length
            doubtful[rows[bad]] = True
            rows, offsets = rows[~bad], offsets[~bad]
            joined = _gather(scan.buffer, offsets, np.full(len(rows), 4 * spec.length))
            return (
                rows,
                np.frombuffer(joined, dtype="<f4").reshape(len(rows), spec.length),
                doubtful,
            )
        values, bad = _fixed_varints(scan, offsets, lengths, spec.length)
        doubtful[rows[bad]] = True
        return rows[~bad], values, doubtful

    def _decode_record(self, data: bytes) -> dict[int, Any]:
        """One record decoded by protobuf: feature index -> values (an array, or a list of
        bytes).

        Raises:
            ExampleError: the record is not a tf.Example, or a feature has the wrong kind or
                number of values.
        """
        parsed = parse_example(data)
        values = {}
        for index, spec in enumerate(self.specs):
            item = parsed.get(spec.name)
            if item is not None:
                self._check(spec, item[0], len(item[1]))
                values[index] = item[1]
        return values

    @staticmethod
    def _check(spec: FeatureSpec, kind: FeatureDtype, count: int) -> None:
        if kind != spec.dtype:
            raise ExampleError(f"feature '{spec.name}' is a {kind}, the schema says {spec.dtype}")
        if spec.length != VARIABLE_LENGTH and count != spec.length:
            raise ExampleError(
                f"feature '{spec.name}' holds {count} values, the schema says {spec.length}"
            )

    @staticmethod
    def _column(
        spec: FeatureSpec,
        rows: int,
        scanned_rows: np.ndarray,
        scanned: Any,
        decoded: list[tuple[int, Any]],
    ) -> Any:
        """A feature's column of ``rows`` records: scanned values at their rows, values decoded
        one record at a time at theirs, the original's default elsewhere."""
        if spec.is_fixed_numeric:
            if len(scanned_rows) == rows:
                return scanned
            matrix = np.zeros((rows, spec.length), dtype=spec.numpy_dtype)
            matrix[scanned_rows] = scanned
            for row, values in decoded:
                matrix[row] = values
            return matrix
        default = _DEFAULTS[spec.dtype]
        fill: Any = [] if spec.length == VARIABLE_LENGTH else [default] * spec.length
        column: list[Any] = [fill] * rows
        for row, values in zip(scanned_rows.tolist(), scanned, strict=True):
            column[row] = values
        for row, values in decoded:
            column[row] = values.tolist() if isinstance(values, np.ndarray) else list(values)
        if spec.dtype == FeatureDtype.BYTES_LIST and spec.length == 1:
            return [row[0] for row in column]
        return column


# The scan's kind of each schema dtype.
_SCAN_KINDS = {
    FeatureDtype.BYTES_LIST: BYTES_LIST,
    FeatureDtype.FLOAT_LIST: FLOAT_LIST,
    FeatureDtype.INT64_LIST: INT64_LIST,
}


def _select(values: Any, keep: np.ndarray) -> Any:
    if keep.all():
        return values
    if isinstance(values, np.ndarray):
        return values[keep]
    return [item for item, kept in zip(values, keep.tolist(), strict=True) if kept]


def _gather(buffer: bytes, offsets: np.ndarray, lengths: np.ndarray) -> bytes:
    """The payloads at ``offsets`` joined in order."""
    view = memoryview(buffer)
    return b"".join(
        [
            view[start : start + size]
            for start, size in zip(offsets.tolist(), lengths.tolist(), strict=True)
        ]
    )


def _fixed_varints(
    scan: ScannedRecords, offsets: np.ndarray, lengths: np.ndarray, length: int
) -> tuple[np.ndarray, np.ndarray]:
    """Packed int64 payloads that must hold ``length`` values each: (``[good rows, length]``
    values, bad mask over the payloads given)."""
    if length == 1:
        # One varint per payload: read in place (the scan's padding covers the widest), no
        # joining.
        values, taken, valid = read_varints(scan.data, offsets, _MAX_VARINT)
        bad = ~valid | (taken != lengths)
        return values[~bad].reshape(-1, 1), bad
    joined = np.frombuffer(_gather(scan.buffer, offsets, lengths), dtype=np.uint8)
    ends = np.cumsum(lengths)
    # One terminating byte (high bit clear) per varint, and each payload ends with one.
    terminators = np.concatenate([[0], np.cumsum(joined < 0x80)])
    counts = terminators[ends] - terminators[ends - lengths]
    last = joined[np.maximum(ends - 1, 0)] if joined.size else np.zeros(len(lengths), np.uint8)
    bad = (counts != length) | (lengths == 0) | (last >= 0x80)
    if bad.any():
        keep = np.repeat(~bad, lengths)
        joined = joined[keep]
    try:
        values = decode_varints(joined.tobytes()) if joined.size else np.zeros(0, np.int64)
    except ExampleError:
        # A varint over 10 bytes: every row goes to protobuf, which names it.
        return np.zeros((0, length), np.int64), np.ones(len(lengths), dtype=bool)
    return values.reshape(-1, length), bad


def _payload_lists(
    buffer: bytes, offsets: np.ndarray, lengths: np.ndarray, spec: FeatureSpec
) -> tuple[list[Any], np.ndarray]:
    """Per-row value lists of a variable-length (or bytes) feature; bad mask of rows whose
    payload does not fit the schema."""
    view = memoryview(buffer)
    values: list[Any] = []
    bad = np.zeros(len(offsets), dtype=bool)
    for row, (start, size) in enumerate(zip(offsets.tolist(), lengths.tolist(), strict=True)):
        payload = bytes(view[start : start + size])
        try:
            if spec.dtype == FeatureDtype.BYTES_LIST:
                # Only empty string lists come through the scan.
                count, items = 0, []
            else:
                count = _count_values(spec.dtype, payload)
                items = (
                    np.frombuffer(payload, dtype="<f4").tolist()
                    if spec.dtype == FeatureDtype.FLOAT_LIST
                    else decode_varints(payload).tolist()
                )
            if spec.length != VARIABLE_LENGTH and count != spec.length:
                raise ExampleError("wrong number of values")
        except ExampleError:
            bad[row] = True
            items = []
        values.append(items)
    return [items for items, wrong in zip(values, bad.tolist(), strict=True) if not wrong], bad


def schema_values(
    parsed: Mapping[str, tuple[FeatureDtype, Values]], schema: SegDenseSchema
) -> dict[str, Any]:
    """A record's values for every schema feature, defaults filled in as the converter does
    (the reference for ``--verify``)."""
    values: dict[str, Any] = {}
    for spec in schema:
        item = parsed.get(spec.name)
        if item is not None:
            values[spec.name] = item[1]
        elif spec.is_fixed_numeric:
            values[spec.name] = np.zeros(spec.length, dtype=spec.numpy_dtype)
        elif spec.length == VARIABLE_LENGTH:
            values[spec.name] = []
        else:
            values[spec.name] = [_DEFAULTS[spec.dtype]] * spec.length
    return values
