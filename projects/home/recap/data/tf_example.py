"""tf.Example records: decoded with ``protobuf`` (no TensorFlow), and gathered into the arrays
our Parquet writer takes.

Two decoders, one meaning:

* :func:`parse_example` uses protobuf with a descriptor of tf.Example built here (the message
  layout of TensorFlow's ``example.proto`` and ``feature.proto``; it has not changed since
  2016). It accepts every valid encoding and is the reference: ``--verify`` and the inspection
  command use it.
* :class:`ExampleColumns` parses with a second descriptor of the same messages in which the
  packed numeric lists are declared ``bytes``: on the wire a packed list *is* one
  length-delimited field, so protobuf's C parser (upb) hands each list over as one bytes object
  and no value ever becomes a Python object. Floats are already little-endian float32; the
  varints of a whole batch are decoded at once with numpy. A record that does not re-encode to
  its own size under that descriptor (unpacked values, a list or message in several pieces)
  goes through :func:`parse_example` instead, so both give the same values.

Features the schema lists but a record lacks get the original's defaults (it parsed every
feature as a ``FixedLenFeature`` with default 0, 0.0 or b""; variable-length ones as empty), and
are counted. Features a record holds beyond the schema are ignored, as the original did.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message, message_factory

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
_DEFAULTS: dict[FeatureDtype, Any] = {
    FeatureDtype.INT64_LIST: 0,
    FeatureDtype.FLOAT_LIST: 0.0,
    FeatureDtype.BYTES_LIST: b"",
}


class ExampleError(UserInputError):
    """A record is not a valid tf.Example for the schema; the message says which feature."""


def _build_example_class(packed_as_bytes: bool = False) -> type[message.Message]:
    """tf.Example as a protobuf class, from a descriptor written out field by field.

    Args:
        packed_as_bytes: Declare FloatList and Int64List's values as one ``bytes`` field, which
            reads their packed encoding as the raw payload (and refuses other encodings).
    """
    field = descriptor_pb2.FieldDescriptorProto
    package = "tml_raw" if packed_as_bytes else "tensorflow"
    proto = descriptor_pb2.FileDescriptorProto(
        name=f"tml/{package}_example.proto", package=package, syntax="proto3"
    )
    for name, value_type in (
        ("BytesList", field.TYPE_BYTES),
        ("FloatList", field.TYPE_FLOAT),
        ("Int64List", field.TYPE_INT64),
    ):
        if packed_as_bytes and value_type != field.TYPE_BYTES:
            proto.message_type.add(name=name).field.add(
                name="value", number=1, type=field.TYPE_BYTES, label=field.LABEL_OPTIONAL
            )
            continue
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
_RawExample = _build_example_class(packed_as_bytes=True)

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


def _quick_check(spec: FeatureSpec) -> Callable[[bytes], bool] | None:
    """For a fixed-length numeric feature, a test that its packed payload holds exactly the
    schema's number of values (True), cheaper than counting them; None for other features."""
    if not spec.is_fixed_numeric:
        return None
    length = spec.length
    if spec.dtype == FeatureDtype.FLOAT_LIST:
        size = 4 * length
        return lambda payload: len(payload) == size

    def terminators_match(payload: bytes) -> bool:
        # One terminating byte (high bit clear) per varint, and the payload ends with one.
        return (
            payload[-1:] < b"\x80" and len(payload.translate(None, _CONTINUATION_BYTES)) == length
        )

    return terminators_match


class ExampleColumns:
    """Gathers decoded records into per-feature columns for :class:`SegDenseWriter`.

    ``add`` checks a record against the schema (kinds, lengths) and keeps it only when it is
    valid, so a caller may skip a bad record and go on; ``take`` returns the rows gathered so
    far (one array per fixed-length numeric feature, lists for the others) and starts over.

    Attributes:
        missing: Feature name -> records that lacked it and got the default.
    """

    def __init__(self, schema: SegDenseSchema):
        self.schema = schema
        self.specs = list(schema)
        # name -> (index, kind, payload check): the check a fixed-length numeric feature's
        # payload passes in one comparison (float bytes, or varint terminators), else None.
        self._plan = {
            spec.name: (index, spec.dtype.value, _quick_check(spec))
            for index, spec in enumerate(self.specs)
        }
        self.missing: collections.Counter[str] = collections.Counter()
        self._reset()

    def _reset(self) -> None:
        self.rows = 0
        # Per feature: rows with a packed payload, the payloads, rows decoded another way.
        self._payload_rows: list[list[int]] = [[] for _ in self.specs]
        self._payloads: list[list[bytes]] = [[] for _ in self.specs]
        self._decoded: list[list[tuple[int, Any]]] = [[] for _ in self.specs]

    def __len__(self) -> int:
        return self.rows

    def add(self, data: bytes) -> None:
        """Adds one serialized tf.Example as the next row.

        Raises:
            ExampleError: the record is not a tf.Example, or a feature has the wrong kind or
                number of values; nothing of the record is kept.
        """
        try:
            example = _RawExample.FromString(data)
        except message.DecodeError:
            example = None
        # Serialized again it must take the record's own size: a packed list in several pieces
        # (bytes keep the last piece) or a message split in two re-encodes shorter. Those, and
        # unpacked values (which the bytes declaration refuses), take the reference decoder.
        if example is None or example.ByteSize() != len(data):
            self._add_parsed(parse_example(data))
            return
        plan = self._plan
        staged = []
        features = example.features.feature
        # Check every feature before keeping any, so a bad record leaves no trace. (Keys, then
        # lookups: the map's items() view iterates in Python, at twice the cost.)
        for name in features:
            planned = plan.get(name)
            if planned is None:
                continue
            feature = features[name]
            kind = feature.WhichOneof("kind")
            if kind is None:
                continue
            index, expected_kind, quick = planned
            if kind == FeatureDtype.BYTES_LIST:
                values = list(feature.bytes_list.value)
                self._check(self.specs[index], kind, len(values))
            else:
                values = getattr(feature, kind).value
                if kind != expected_kind or quick is None or not quick(values):
                    self._check(self.specs[index], kind, _count_values(kind, values))
            staged.append((index, kind == FeatureDtype.BYTES_LIST, values))
        row = self.rows
        for index, is_bytes, values in staged:
            if is_bytes:
                self._decoded[index].append((row, values))
            else:
                self._payload_rows[index].append(row)
                self._payloads[index].append(values)
        self.rows = row + 1

    def _add_parsed(self, parsed: Mapping[str, tuple[FeatureDtype, Values]]) -> None:
        staged = []
        for index, spec in enumerate(self.specs):
            item = parsed.get(spec.name)
            if item is not None:
                kind, values = item
                self._check(spec, kind, len(values))
                staged.append((index, values))
        for index, values in staged:
            self._decoded[index].append((self.rows, values))
        self.rows += 1

    @staticmethod
    def _check(spec: FeatureSpec, kind: FeatureDtype, count: int) -> None:
        if kind != spec.dtype:
            raise ExampleError(f"feature '{spec.name}' is a {kind}, the schema says {spec.dtype}")
        if spec.length != VARIABLE_LENGTH and count != spec.length:
            raise ExampleError(
                f"feature '{spec.name}' holds {count} values, the schema says {spec.length}"
            )

    def take(self) -> dict[str, Any]:
        """The gathered rows, feature name -> values in the writer's form; then starts over.

        Raises:
            ExampleError: a malformed varint, which only the batch decode detects.
        """
        for index, spec in enumerate(self.specs):
            present = len(self._payload_rows[index]) + len(self._decoded[index])
            if present < self.rows:
                self.missing[spec.name] += self.rows - present
        out = {spec.name: self._column(index, spec) for index, spec in enumerate(self.specs)}
        self._reset()
        return out

    def _column(self, index: int, spec: FeatureSpec) -> Any:
        rows = self.rows
        if not spec.is_fixed_numeric:
            return self._list_column(index, spec)
        dtype = spec.numpy_dtype
        payload_rows = self._payload_rows[index]
        if len(payload_rows) == rows and not self._decoded[index]:
            matrix = None
        else:
            matrix = np.zeros((rows, spec.length), dtype=dtype)
        if payload_rows:
            joined = b"".join(self._payloads[index])
            if spec.dtype == FeatureDtype.FLOAT_LIST:
                values = np.frombuffer(joined, dtype="<f4")
            else:
                values = decode_varints(joined)
            values = values.reshape(len(payload_rows), spec.length)
            if matrix is None:
                return values
            matrix[payload_rows] = values
        for row, values in self._decoded[index]:
            matrix[row] = values
        return matrix

    def _list_column(self, index: int, spec: FeatureSpec) -> list[Any]:
        default = _DEFAULTS[spec.dtype]
        fill: Any = [] if spec.length == VARIABLE_LENGTH else [default] * spec.length
        column: list[Any] = [fill] * self.rows
        for row, payload in zip(self._payload_rows[index], self._payloads[index], strict=True):
            # Variable-length numeric features arrive packed.
            if spec.dtype == FeatureDtype.FLOAT_LIST:
                column[row] = np.frombuffer(payload, dtype="<f4").tolist()
            else:
                column[row] = decode_varints(payload).tolist()
        for row, values in self._decoded[index]:
            column[row] = values.tolist() if isinstance(values, np.ndarray) else list(values)
        if spec.dtype == FeatureDtype.BYTES_LIST and spec.length == 1:
            return [row[0] for row in column]
        return column


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
