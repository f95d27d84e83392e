"""The on-disk format: segdense records as Parquet columns, and reading them back as arrays.

Layout (see docs/data.md for the measurements behind it):

* a feature of length 1 is one scalar column named after the feature;
* a longer fixed-length feature is split into column chunks of at most ``chunk_size`` values,
  each a ``fixed_size_list`` column named ``feature[start:stop]``, with extra cuts at chosen
  split points (the truncation points of the config that wrote the data), so a reader that
  keeps the first 2117 of 6000 values decodes only the chunks covering them;
* a variable-length feature (length -1) is one ``list`` column;
* the file's key-value metadata holds the schema and this layout under ``tml.segdense``.

Files without that metadata are read too, with one column per feature named after it (a scalar,
a ``fixed_size_list`` or a ``list`` whose rows all have the schema length), so Parquet written
by other tools works as long as its columns follow the schema.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
from collections.abc import Iterator, Mapping, Sequence
from typing import IO, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from projects.home.recap.data.reader import Arrays, DataFileError, FeatureRead
from projects.home.recap.data.schema import (
    VARIABLE_LENGTH,
    FeatureDtype,
    FeatureSpec,
    SegDenseSchema,
    parse_schema,
)
from tml.storage import StorageError, fetch_ranges, is_url, open_input_file

METADATA_KEY = b"tml.segdense"
FORMAT_VERSION = 1

_ARROW_TYPES: dict[FeatureDtype, pa.DataType] = {
    FeatureDtype.INT64_LIST: pa.int64(),
    FeatureDtype.FLOAT_LIST: pa.float32(),
    FeatureDtype.BYTES_LIST: pa.binary(),
}
# Value types a reader accepts for each schema dtype (cast on read): other tools often write
# int32 or bool flags, or float64.
_ACCEPTED_TYPES = {
    FeatureDtype.INT64_LIST: lambda t: pa.types.is_integer(t) or pa.types.is_boolean(t),
    FeatureDtype.FLOAT_LIST: pa.types.is_floating,
    FeatureDtype.BYTES_LIST: lambda t: pa.types.is_binary(t) or pa.types.is_string(t),
}


@dataclasses.dataclass(frozen=True)
class ColumnChunk:
    """Values ``start:stop`` of a feature, stored in the Parquet column ``column``."""

    column: str
    start: int
    stop: int


Layout = dict[str, tuple[ColumnChunk, ...]]


@dataclasses.dataclass(frozen=True)
class WriteOptions:
    """How files are written. The defaults are the measured choice (docs/data.md)."""

    compression: str = "zstd"
    compression_level: int | None = 1
    row_group_size: int = 2048
    chunk_size: int = 512
    # Measured (docs/data.md): dictionary pages do not pay on dense numeric features, while
    # byte_stream_split makes float columns smaller and faster to decode.
    use_dictionary: bool = False
    # "floats": float columns only (readable by any pyarrow >= 15); "all": integers too (needs
    # a reader with Parquet 2.11 support, pyarrow >= 17); "none".
    byte_stream_split: str = "floats"
    # feature name -> extra cut points (e.g. the config's truncation points).
    split_points: Mapping[str, Sequence[int]] = dataclasses.field(default_factory=dict)


def plan_layout(
    schema: SegDenseSchema, chunk_size: int, split_points: Mapping[str, Sequence[int]]
) -> Layout:
    """Which Parquet column holds which values of every feature.

    Args:
        schema: The features to lay out.
        chunk_size: Most values in one column of a long feature.
        split_points: Feature name -> additional positions where a new column starts.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    layout: Layout = {}
    for spec in schema:
        cuts = {point for point in split_points.get(spec.name, ()) if 0 < point < spec.length}
        if spec.length == VARIABLE_LENGTH or spec.length == 1:
            layout[spec.name] = (ColumnChunk(spec.name, 0, spec.length),)
            continue
        points = sorted({*range(0, spec.length, chunk_size), *cuts, spec.length})
        if len(points) == 2:
            layout[spec.name] = (ColumnChunk(spec.name, 0, spec.length),)
            continue
        layout[spec.name] = tuple(
            ColumnChunk(f"{spec.name}[{start}:{stop}]", start, stop)
            for start, stop in itertools.pairwise(points)
        )
    return layout


def arrow_schema(schema: SegDenseSchema, layout: Layout) -> pa.Schema:
    """The Parquet files' Arrow schema, with the segdense schema and layout in its metadata."""
    fields = []
    for spec in schema:
        value_type = _ARROW_TYPES[spec.dtype]
        for chunk in layout[spec.name]:
            if spec.length == VARIABLE_LENGTH:
                column_type = pa.list_(value_type)
            elif spec.length == 1:
                column_type = value_type
            else:
                # Non-nullable values: a dense feature has none missing, and the writer then
                # encodes one definition level less per value (~10 % of the write's CPU,
                # docs/data.md); readers see the same values (files with nullable values read
                # the same way).
                element = pa.field("item", value_type, nullable=False)
                column_type = pa.list_(element, chunk.stop - chunk.start)
            fields.append(pa.field(chunk.column, column_type, nullable=False))
    metadata = {
        "version": FORMAT_VERSION,
        **schema.to_json(),
        "layout": {
            name: [[chunk.column, chunk.start, chunk.stop] for chunk in chunks]
            for name, chunks in layout.items()
        },
    }
    return pa.schema(fields, metadata={METADATA_KEY: json.dumps(metadata).encode()})


def _byte_stream_split_columns(schema: pa.Schema, which: str) -> list[str]:
    """Parquet column paths to encode with byte_stream_split (nested lists need the leaf path)."""
    kinds = {
        "none": lambda value_type: False,
        "floats": pa.types.is_floating,
        "all": lambda value_type: (
            pa.types.is_floating(value_type) or pa.types.is_integer(value_type)
        ),
    }
    if which not in kinds:
        raise ValueError(f"byte_stream_split must be one of {sorted(kinds)}, got {which!r}")
    paths = []
    for field in schema:
        nested = pa.types.is_list(field.type) or pa.types.is_fixed_size_list(field.type)
        value_type = field.type.value_type if nested else field.type
        if kinds[which](value_type):
            paths.append(f"{field.name}.list.element" if nested else field.name)
    return paths


class SegDenseWriter:
    """Writes records of a schema into one Parquet file.

    Use as a context manager; ``write`` takes a batch of rows as one array per feature:
    ``[rows, length]`` for fixed-length numeric features (``[rows]`` also for length 1), a
    sequence of per-row lists for variable-length ones, a sequence of ``bytes`` for bytes.
    """

    def __init__(
        self, path: str | IO[bytes], schema: SegDenseSchema, options: WriteOptions = WriteOptions()
    ):
        # A path, or an open binary file (the converter's upload to an object store).
        self.path = path
        self.schema = schema
        self.options = options
        self.layout = plan_layout(schema, options.chunk_size, options.split_points)
        self._arrow_schema = arrow_schema(schema, self.layout)
        self._writer = pq.ParquetWriter(
            path,
            self._arrow_schema,
            compression=options.compression,
            compression_level=options.compression_level,
            use_dictionary=options.use_dictionary,
            use_byte_stream_split=_byte_stream_split_columns(
                self._arrow_schema, options.byte_stream_split
            ),
            write_statistics=False,
        )
        self.num_rows = 0

    def write(self, rows: Mapping[str, Any]) -> None:
        """Appends rows; every schema feature must be present, with the same number of rows."""
        columns = []
        counts = set()
        for spec in self.schema:
            if spec.name not in rows:
                raise ValueError(f"{self.path}: no values for feature '{spec.name}'")
            for array in self._feature_columns(spec, rows[spec.name]):
                counts.add(len(array))
                columns.append(array)
        if len(counts) > 1:
            raise ValueError(f"{self.path}: features have different row counts {sorted(counts)}")
        table = pa.Table.from_arrays(columns, schema=self._arrow_schema)
        self._writer.write_table(table, row_group_size=self.options.row_group_size)
        self.num_rows += table.num_rows

    def _feature_columns(self, spec: FeatureSpec, values: Any) -> list[pa.Array]:
        value_type = _ARROW_TYPES[spec.dtype]
        if spec.length == VARIABLE_LENGTH:
            return [pa.array(values, type=pa.list_(value_type))]
        if spec.dtype == FeatureDtype.BYTES_LIST:
            if spec.length == 1:
                return [pa.array(values, type=value_type)]
            values = [list(row) for row in values]
            return [pa.array(values, type=pa.list_(value_type, spec.length))]
        matrix = np.asarray(values, dtype=spec.numpy_dtype)
        if matrix.ndim == 1 and spec.length == 1:
            matrix = matrix[:, None]
        if matrix.ndim != 2 or matrix.shape[1] != spec.length:
            raise ValueError(
                f"{self.path}: feature '{spec.name}' needs shape [rows, {spec.length}], "
                f"got {list(matrix.shape)}"
            )
        if spec.length == 1:
            return [pa.array(matrix[:, 0], type=value_type)]
        result = []
        for chunk in self.layout[spec.name]:
            part = np.ascontiguousarray(matrix[:, chunk.start : chunk.stop])
            flat = pa.array(part.reshape(-1), type=value_type)
            column_type = self._arrow_schema.field(chunk.column).type
            result.append(pa.FixedSizeListArray.from_arrays(flat, type=column_type))
        return result

    def close(self) -> None:
        self._writer.close()

    def __enter__(self) -> SegDenseWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


@contextlib.contextmanager
def _source(path: str) -> Iterator[str | pa.NativeFile]:
    """A local path as is, or an open remote file closed after use (tml.storage)."""
    source = open_input_file(path)
    try:
        yield source
    finally:
        if not isinstance(source, str):
            source.close()


@dataclasses.dataclass(frozen=True)
class _ChunkRead:
    chunk: ColumnChunk
    # Positions inside the chunk, and where they land in the output.
    local: slice | np.ndarray
    target: slice


class ParquetDataFile:
    """One Parquet file checked against the schema; reads row groups of chosen features.

    Implements :class:`projects.home.recap.data.reader.DataFile`. Opening reads only the
    footer. The object is cheap to pickle and safe to share between threads: each read opens
    the file anew with the already-parsed footer.

    A file in an object store is read a row group at a time by fetching the wanted column
    chunks together (:func:`tml.storage.fetch_ranges`: a few concurrent ranged requests, no
    metadata request) and decoding them from memory; the memory a read holds is those chunks.
    """

    def __init__(self, path: str, schema: SegDenseSchema, reads: Sequence[FeatureRead]):
        """Opens ``path`` and checks that it holds every feature in ``reads``.

        Raises:
            DataFileError: naming the file (and the column) when it is unreadable, lacks a
                column, or a column has the wrong type or length.
        """
        self.path = path
        self._remote = is_url(path)
        try:
            with _source(path) as source:
                self._metadata = pq.read_metadata(source)
                self._size = None if isinstance(source, str) else source.size()
        except StorageError:
            raise  # no such bucket / access denied: stops the job even with ignore_data_errors
        except (OSError, pa.ArrowException) as error:
            raise DataFileError(f"cannot read Parquet file {path}: {error}") from None
        self.row_group_rows = [
            self._metadata.row_group(index).num_rows
            for index in range(self._metadata.num_row_groups)
        ]
        self.num_rows = sum(self.row_group_rows)
        arrow = self._metadata.schema.to_arrow_schema()
        layout = self._stored_layout(arrow, schema)
        self._plans: dict[str, list[_ChunkRead]] = {}
        self._reads = list(reads)
        self._columns: list[str] = []
        for read in self._reads:
            self._plans[read.spec.name] = self._plan_feature(read, layout, arrow)
            self._columns.extend(item.chunk.column for item in self._plans[read.spec.name])
        self._leaves = _leaf_columns(self._metadata, self._columns) if self._remote else []

    @property
    def columns(self) -> list[str]:
        """The Parquet columns a read touches."""
        return list(self._columns)

    def _stored_layout(self, arrow: pa.Schema, schema: SegDenseSchema) -> Layout:
        raw = (arrow.metadata or {}).get(METADATA_KEY)
        if raw is None:
            return {spec.name: (ColumnChunk(spec.name, 0, spec.length),) for spec in schema}
        try:
            stored = json.loads(raw)
            parse_schema(stored, f"(metadata of {self.path})")
            return {
                name: tuple(ColumnChunk(str(c), int(a), int(b)) for c, a, b in chunks)
                for name, chunks in stored["layout"].items()
            }
        except (ValueError, KeyError, TypeError) as error:
            raise DataFileError(
                f"{self.path}: malformed '{METADATA_KEY.decode()}' metadata: {error}"
            ) from None

    def _plan_feature(
        self, read: FeatureRead, layout: Layout, arrow: pa.Schema
    ) -> list[_ChunkRead]:
        spec = read.spec
        if not spec.is_fixed_numeric:
            raise ValueError(f"feature '{spec.name}' has no dense array form")
        chunks = layout.get(spec.name)
        if not chunks:
            raise DataFileError(f"{self.path}: no column for feature '{spec.name}'")
        covered = [(chunk.start, chunk.stop) for chunk in chunks]
        expected_stop = spec.length
        if (
            covered[0][0] != 0
            or covered[-1][1] != expected_stop
            or any(a[1] != b[0] for a, b in itertools.pairwise(covered))
        ):
            stored = covered[-1][1]
            raise DataFileError(
                f"{self.path}: column '{chunks[0].column}': feature '{spec.name}' has length "
                f"{stored} in this file, the schema says {spec.length}"
            )
        indices = read.indices
        plan: list[_ChunkRead] = []
        written = 0
        for chunk in chunks:
            if indices is None:
                local: slice | np.ndarray = slice(None)
                count = chunk.stop - chunk.start
            else:
                lo, hi = np.searchsorted(indices, [chunk.start, chunk.stop])
                if lo == hi:
                    continue
                selected = indices[lo:hi] - chunk.start
                count = len(selected)
                contiguous = selected[-1] - selected[0] + 1 == count
                local = slice(int(selected[0]), int(selected[-1]) + 1) if contiguous else selected
            self._check_column(spec, chunk, arrow)
            plan.append(_ChunkRead(chunk, local, slice(written, written + count)))
            written += count
        return plan

    def _check_column(self, spec: FeatureSpec, chunk: ColumnChunk, arrow: pa.Schema) -> None:
        where = f"{self.path}: column '{chunk.column}'"
        index = arrow.get_field_index(chunk.column)
        if index < 0:
            raise DataFileError(f"{where} (feature '{spec.name}') is missing")
        column_type = arrow.field(index).type
        value_type = column_type
        size = 1
        if pa.types.is_fixed_size_list(column_type):
            value_type, size = column_type.value_type, column_type.list_size
        elif pa.types.is_list(column_type) or pa.types.is_large_list(column_type):
            value_type, size = column_type.value_type, None
        expected = chunk.stop - chunk.start
        if size is not None and size != expected:
            raise DataFileError(
                f"{where}: holds {size} values per row, expected {expected} for feature "
                f"'{spec.name}' (schema length {spec.length})"
            )
        if not _ACCEPTED_TYPES[spec.dtype](value_type):
            raise DataFileError(
                f"{where}: values of type {value_type} do not match schema dtype {spec.dtype}"
            )

    def allocate(self, rows: int) -> Arrays:
        """Uninitialised output arrays for ``rows`` rows of every feature read."""
        return {
            read.spec.name: np.empty((rows, read.width), dtype=read.spec.numpy_dtype)
            for read in self._reads
        }

    def read(self, row_group: int) -> Arrays:
        """Decodes one row group: feature name -> ``[rows, width]`` array of the schema dtype.

        Raises:
            DataFileError: naming the file and column when the data is unreadable, holds nulls
                or rows of the wrong length.
        """
        rows = self.row_group_rows[row_group]
        out = self.allocate(rows)
        self.read_into(row_group, out, slice(0, rows))
        return out

    def read_into(self, row_group: int, out: Arrays, destination: slice | np.ndarray) -> None:
        """Decodes one row group into rows ``destination`` of ``out`` (from :meth:`allocate`).

        Writing straight into the caller's (e.g. shuffled) positions saves a copy of every value.

        Raises:
            DataFileError: as :meth:`read`.
        """
        try:
            if self._remote:
                table = self._read_remote(row_group)
            else:
                with _source(self.path) as source:
                    parquet = pq.ParquetFile(source, metadata=self._metadata, pre_buffer=False)
                    table = self._read_table(parquet, row_group)
        except StorageError:
            raise
        except (OSError, pa.ArrowException) as error:
            raise DataFileError(
                f"cannot read row group {row_group} of Parquet file {self.path}: {error}"
            ) from None
        rows = table.num_rows
        for read in self._reads:
            target = out[read.spec.name]
            for item in self._plans[read.spec.name]:
                values = self._column_values(table.column(item.chunk.column), item.chunk, rows)
                target[destination, item.target] = values[:, item.local]

    def _read_table(self, parquet: pq.ParquetFile, row_group: int) -> pa.Table:
        # One thread per row group: the loader runs several readers, and a fixed thread count
        # keeps its CPU use predictable next to the trainer.
        return parquet.read_row_group(row_group, columns=self._columns, use_threads=False)

    def _read_remote(self, row_group: int) -> pa.Table:
        assert self._size is not None
        metadata = self._metadata.row_group(row_group)
        ranges = [_chunk_range(metadata.column(leaf)) for leaf in self._leaves]
        with fetch_ranges(self.path, ranges, size=self._size) as fetched:
            # The footer is already parsed and the chunks are in memory: pyarrow reads each
            # chunk once, without a pre_buffer of its own (which would coalesce over gaps
            # that were not fetched).
            parquet = pq.ParquetFile(
                pa.PythonFile(fetched, mode="r"), metadata=self._metadata, pre_buffer=False
            )
            return self._read_table(parquet, row_group)

    def _column_values(self, column: pa.ChunkedArray, chunk: ColumnChunk, rows: int) -> np.ndarray:
        where = f"{self.path}: column '{chunk.column}'"
        array = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
        if array.null_count:
            raise DataFileError(f"{where}: {array.null_count} null rows")
        width = chunk.stop - chunk.start
        if pa.types.is_list(array.type) or pa.types.is_large_list(array.type):
            offsets = array.offsets.to_numpy()
            lengths = np.diff(offsets)
            bad = np.flatnonzero(lengths != width)
            if len(bad):
                raise DataFileError(
                    f"{where}: row {int(bad[0])} of a row group holds {int(lengths[bad[0]])} "
                    f"values, expected {width}"
                )
            array = array.flatten()
        elif pa.types.is_fixed_size_list(array.type):
            array = array.flatten()
        if array.null_count:
            raise DataFileError(f"{where}: {array.null_count} null values")
        values = array.to_numpy(zero_copy_only=False)
        return values.reshape(rows, width)


def _leaf_columns(metadata: pq.FileMetaData, columns: Sequence[str]) -> list[int]:
    """Indices of the Parquet leaf columns that store the top-level ``columns``.

    A leaf's path is its column's name, or that name, ``.`` and the nested part
    (``name.list.element``). A name holding dots could also match another column's leaves;
    that only fetches more bytes than needed, never fewer.
    """
    wanted = set(columns)
    leaves = []
    for index in range(metadata.num_columns):
        path = metadata.schema.column(index).path
        parts = path.split(".")
        if any(".".join(parts[:cut]) in wanted for cut in range(1, len(parts) + 1)):
            leaves.append(index)
    return leaves


def _chunk_range(column: pq.ColumnChunkMetaData) -> tuple[int, int]:
    """Where a column chunk's bytes lie in its file: ``[start, stop)``."""
    start = column.data_page_offset
    dictionary = column.dictionary_page_offset if column.has_dictionary_page else None
    # Some writers record 0 for a missing dictionary page.
    if dictionary is not None and 0 < dictionary < start:
        start = dictionary
    return start, start + column.total_compressed_size


class ParquetFormat:
    """Parquet as the loader's file format
    (:class:`projects.home.recap.data.reader.FileFormat`)."""

    def open(
        self, path: str, schema: SegDenseSchema, reads: Sequence[FeatureRead]
    ) -> ParquetDataFile:
        """Opens ``path`` (its footer only) for ``reads``.

        Raises:
            DataFileError: as :class:`ParquetDataFile`.
        """
        return ParquetDataFile(path, schema, reads)
