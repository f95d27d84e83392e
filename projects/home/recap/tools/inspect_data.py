"""Shows what a data folder holds: schema, rows, row groups, per-feature statistics, first rows.

    tml-recap-inspect PATH... [--rows N] [--max_rows M]

PATH is a Parquet file, folder or glob of our format (or any Parquet with one column per
feature), or a TFRecord file of tf.Example (gzip or plain). Statistics are per feature over
every value of it (all 6000 of a continuous vector): min, max, mean of the finite values, null
and NaN counts, and for 0/1 features of one value (labels) the positive rate. Files are read
one row group (or 2048 records) at a time, so any size fits in memory; ``--max_rows`` stops
early on big data.
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import os
import sys
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from projects.home.recap.data.parquet_format import METADATA_KEY
from projects.home.recap.data.tf_example import parse_example
from projects.home.recap.data.tfrecord import TFRecordError, iter_records
from tml.core.errors import UserInputError

_PARQUET_MAGIC = b"PAR1"
_RECORDS_PER_BLOCK = 2048


class InspectError(UserInputError):
    """The path cannot be inspected; the message names it."""


@dataclasses.dataclass
class FeatureStats:
    """Running statistics of one feature."""

    kind: str = ""
    values: int = 0
    nulls: int = 0
    nans: int = 0
    minimum: float = np.inf
    maximum: float = -np.inf
    total: float = 0.0
    finite: int = 0
    rows: int = 0
    missing_rows: int = 0
    lengths: set[int] = dataclasses.field(default_factory=set)
    zero_one: bool = True
    positives: int = 0

    def add(self, values: np.ndarray, rows: int) -> None:
        """Adds ``rows`` rows' worth of values (flattened numbers)."""
        self.rows += rows
        self.values += values.size
        if values.dtype.kind == "f":
            nan = np.isnan(values)
            self.nans += int(nan.sum())
            finite = values[np.isfinite(values)]
        else:
            finite = values
        if finite.size:
            self.minimum = min(self.minimum, float(finite.min()))
            self.maximum = max(self.maximum, float(finite.max()))
            self.total += float(finite.sum(dtype=np.float64))
            self.finite += finite.size
        if self.zero_one and values.size:
            self.zero_one = bool(np.isin(values, (0, 1)).all())
            self.positives += int((values == 1).sum())

    def row(self, name: str) -> list[str]:
        mean = f"{self.total / self.finite:.6g}" if self.finite else "-"
        rate = "-"
        if self.zero_one and self.values and self.values == self.rows:
            rate = f"{self.positives / self.values:.4%}"
        return [
            name,
            self.kind,
            _span(self.lengths),
            f"{self.minimum:.6g}" if self.finite else "-",
            f"{self.maximum:.6g}" if self.finite else "-",
            mean,
            str(self.nulls + self.missing_rows),
            str(self.nans),
            rate,
        ]


def _span(lengths: set[int]) -> str:
    if not lengths:
        return "-"
    low, high = min(lengths), max(lengths)
    return str(low) if low == high else f"{low}..{high}"


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    return [
        "  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        for row in rows
    ]


def _short(values: Any, shown: int = 6) -> str:
    if isinstance(values, (bytes, str, int, float, np.generic)):
        return repr(values.item() if isinstance(values, np.generic) else values)
    values = list(values)
    text = ", ".join(_short(value) for value in values[:shown])
    return (
        f"[{text}{', ...' if len(values) > shown else ''}] ({len(values)})"
        if len(values) > 1
        else f"[{text}]"
    )


_HEADER = [
    "feature",
    "kind",
    "length",
    "min",
    "max",
    "mean",
    "missing/null",
    "NaN",
    "positive rate",
]


# --- Parquet ---------------------------------------------------------------------------------


def _parquet_files(path: str) -> list[str]:
    if os.path.isdir(path):
        files = sorted(glob.glob(os.path.join(path, "**", "*.parquet"), recursive=True))
    elif glob.has_magic(path):
        files = sorted(p for p in glob.glob(path, recursive=True) if os.path.isfile(p))
    else:
        files = [path]
    if not files:
        raise InspectError(f"{path}: no Parquet file")
    return files


def _layout(schema: pa.Schema) -> tuple[dict[str, list[str]], dict[str, Any] | None]:
    raw = (schema.metadata or {}).get(METADATA_KEY)
    if raw is None:
        return {name: [name] for name in schema.names}, None
    stored = json.loads(raw)
    return {
        name: [chunk[0] for chunk in chunks] for name, chunks in stored["layout"].items()
    }, stored


def _flat(column: pa.ChunkedArray) -> tuple[np.ndarray | None, int, list[int]]:
    """Values (numbers only), nulls, and the row lengths seen."""
    array = column.combine_chunks()
    nulls = array.null_count
    lengths: list[int] = []
    while (
        pa.types.is_list(array.type)
        or pa.types.is_fixed_size_list(array.type)
        or pa.types.is_large_list(array.type)
    ):
        if pa.types.is_fixed_size_list(array.type):
            lengths = [array.type.list_size]
        else:
            offsets = np.diff(array.offsets.to_numpy())
            lengths = [int(offsets.min()), int(offsets.max())] if len(offsets) else []
        array = array.flatten()
    if not lengths:
        lengths = [1]
    kind = array.type
    if pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind):
        values = array.drop_null().to_numpy(zero_copy_only=False)
        return values.astype(np.int64) if values.dtype == bool else values, nulls, lengths
    return None, nulls, lengths


def inspect_parquet(path: str, rows_shown: int, max_rows: int | None) -> list[str]:
    files = _parquet_files(path)
    lines = []
    total_rows, groups, group_rows = 0, 0, []
    for file in files:
        try:
            metadata = pq.read_metadata(file)
        except (OSError, pa.ArrowException) as error:
            raise InspectError(f"cannot read Parquet file {file}: {error}") from None
        total_rows += metadata.num_rows
        groups += metadata.num_row_groups
        group_rows += [metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)]
    lines.append(
        f"{path}: Parquet, {len(files)} files, {total_rows:,} rows, {groups} row groups"
        + (f" ({min(group_rows):,}..{max(group_rows):,} rows each)" if group_rows else "")
    )
    first_schema = pq.read_schema(files[0])
    layout, stored = _layout(first_schema)
    if stored is not None:
        lines.append(f"schema (tml.segdense version {stored.get('version')}, from the file):")
        schema_rows = [["feature", "dtype", "length", "columns"]] + [
            [e["feature_name"], e["dtype"], str(e["length"]), str(len(layout[e["feature_name"]]))]
            for e in stored["schema"]
        ]
    else:
        lines.append("schema (no tml.segdense metadata: one column per feature):")
        schema_rows = [["feature", "type", "", ""]] + [
            [field.name, str(field.type), "", ""] for field in first_schema
        ]
    lines += _table(schema_rows)
    dtypes = {e["feature_name"]: e["dtype"] for e in stored["schema"]} if stored else {}
    stats = {name: FeatureStats(kind=dtypes.get(name, "")) for name in layout}
    first_rows: list[dict[str, Any]] = []
    seen = 0
    for file in files:
        parquet = pq.ParquetFile(file)
        file_layout, _ = _layout(parquet.schema_arrow)
        if set(file_layout) != set(layout):
            raise InspectError(f"{file}: holds other features than {files[0]}")
        for group in range(parquet.num_row_groups):
            if max_rows is not None and seen >= max_rows:
                break
            table = parquet.read_row_group(group)
            for name, columns in file_layout.items():
                feature = stats[name]
                length = 0
                for column in columns:
                    values, nulls, lengths = _flat(table.column(column))
                    feature.nulls += nulls
                    length += max(lengths)
                    feature.kind = (
                        feature.kind or str(table.schema.field(column).type).split("<")[0]
                    )
                    if values is not None:
                        feature.add(values, 0)
                feature.rows += table.num_rows
                feature.lengths.add(length)
            while len(first_rows) < rows_shown and len(first_rows) < seen + table.num_rows:
                index = len(first_rows) - seen
                first_rows.append(
                    {
                        name: [v for c in columns for v in _as_list(table.column(c)[index].as_py())]
                        for name, columns in file_layout.items()
                    }
                )
            seen += table.num_rows
    return lines + _stats_lines(stats, seen, total_rows) + _first_rows(first_rows)


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


# --- TFRecord --------------------------------------------------------------------------------


def _tfrecord_blocks(path: str, problems: list[str]) -> Iterator[list[dict[str, Any]]]:
    block: list[dict[str, Any]] = []
    for index, data in iter_records(path, on_corrupt=lambda error: problems.append(str(error))):
        try:
            block.append(parse_example(data))
        except UserInputError as error:
            problems.append(f"{path}: record {index}: {error}")
            continue
        if len(block) == _RECORDS_PER_BLOCK:
            yield block
            block = []
    if block:
        yield block


def inspect_tfrecord(path: str, rows_shown: int, max_rows: int | None) -> list[str]:
    problems: list[str] = []
    stats: dict[str, FeatureStats] = {}
    first_rows: list[dict[str, Any]] = []
    seen = 0
    for block in _tfrecord_blocks(path, problems):
        for record in block:
            if max_rows is not None and seen >= max_rows:
                break
            for name, (kind, values) in record.items():
                feature = stats.setdefault(name, FeatureStats(kind=str(kind)))
                feature.lengths.add(len(values))
                if isinstance(values, np.ndarray):
                    feature.add(values, 1)
                else:
                    feature.rows += 1
                    feature.zero_one = False
            if len(first_rows) < rows_shown:
                first_rows.append({name: values for name, (_, values) in record.items()})
            seen += 1
    for feature in stats.values():
        feature.missing_rows = seen - feature.rows
    stats = dict(sorted(stats.items()))
    lines = [f"{path}: TFRecord of tf.Example, {seen:,} records read, {len(stats)} features"]
    lines += [f"  problem: {problem}" for problem in problems]
    return lines + _stats_lines(stats, seen, seen) + _first_rows(first_rows)


# --- output ----------------------------------------------------------------------------------


def _stats_lines(stats: dict[str, FeatureStats], seen: int, total: int) -> list[str]:
    scope = "all rows" if seen >= total else f"the first {seen:,} of {total:,} rows"
    lines = [f"statistics over {scope} (mean of finite values; positive rate of 0/1 scalars):"]
    return lines + _table([_HEADER] + [feature.row(name) for name, feature in stats.items()])


def _first_rows(rows: list[dict[str, Any]]) -> list[str]:
    lines = [f"first {len(rows)} rows:"] if rows else []
    for number, row in enumerate(rows):
        lines.append(f"  row {number}:")
        lines += [f"    {name} = {_short(values)}" for name, values in row.items()]
    return lines


def _is_parquet(path: str) -> bool:
    if not os.path.isfile(path):
        return True  # folders and globs are of our format
    with open(path, "rb") as file:
        return file.read(4) == _PARQUET_MAGIC


def inspect(path: str, rows_shown: int = 3, max_rows: int | None = None) -> list[str]:
    """The report on one path, as lines.

    Raises:
        InspectError, TFRecordError: naming the file that cannot be read.
    """
    if not glob.has_magic(path) and not os.path.exists(path):
        raise InspectError(f"{path}: no such file or folder")
    if _is_parquet(path):
        return inspect_parquet(path, rows_shown, max_rows)
    return inspect_tfrecord(path, rows_shown, max_rows)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="tml-recap-inspect",
        description="Show the schema, size, statistics and first rows of Parquet or TFRecord data.",
    )
    parser.add_argument("paths", nargs="+", help="Parquet file, folder or glob; or TFRecord file.")
    parser.add_argument("--rows", type=int, default=3, help="First rows to print.")
    parser.add_argument("--max_rows", type=int, help="Stop statistics after this many rows.")
    args = parser.parse_args(argv)
    try:
        for path in args.paths:
            print("\n".join(inspect(path, args.rows, args.max_rows)))
    except (UserInputError, TFRecordError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
