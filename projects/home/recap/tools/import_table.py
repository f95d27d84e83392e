"""Brings a table of your own (CSV or Parquet) into tml: data, schema and a starter config.

    tml-recap-import-table --mapping mapping.yaml

The mapping (:class:`TableMapping`, a YAML file validated like every config) names which
columns become the entries of the continuous, binary and discrete vectors, which are labels,
ids (fed to hashed large embedding tables) and TwHIN-style embedding vectors::

    source: ratings.csv            # a file or glob; relative paths start at the mapping's folder
    output_dir: ratings_tml
    labels: [clicked]
    continuous: [age, price, item_popularity]
    binary: [is_weekend]
    discrete: [genre]
    ids: {meta__user_id: user, meta__author_id: item}
    embeddings: {user_embedding: [u0, u1, u2, u3]}

The command writes ``output_dir/{train,validation}/part-NNNNN.parquet`` (every
``validation_every``-th row goes to validation), ``output_dir/segdense.json`` and
``output_dir/starter.yaml``, a config that trains on them: ``tml-recap --config_path
output_dir/starter.yaml``.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import logging
import os
import sys
from collections.abc import Iterator
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import yaml

from projects.home.recap.data.parquet_format import SegDenseWriter, WriteOptions
from projects.home.recap.data.schema import parse_schema
from tml.core.config import BaseConfig, Field, load_config_from_yaml
from tml.core.errors import UserInputError

logger = logging.getLogger(__name__)

ID_ROLES = ("meta__user_id", "meta__author_id", "meta__tweet_id")
EMBEDDING_ROLES = ("user_embedding", "user_eng_embedding", "author_embedding")
# Rows read from the source at a time: memory stays bounded whatever the table size.
_BATCH_ROWS = 65_536


class TableImportError(UserInputError):
    """The table or the mapping cannot be imported; the message names the column or field."""


class TableMapping(BaseConfig):
    """Which columns of a table become which inputs of the ranker."""

    source: str = Field(
        description="CSV or Parquet file, or a glob of them; relative to the mapping's folder."
    )
    format: Literal["auto", "csv", "parquet"] = Field(
        "auto", description="Source format; auto goes by the file extension (.csv or .parquet)."
    )
    output_dir: str = Field(
        description="Folder for the data, schema and starter config; relative to the mapping."
    )
    labels: list[str] = Field(
        min_length=1, description="Columns of 0/1 (or true/false) engagement labels: one task each."
    )
    continuous: list[str] = Field(
        min_length=1,
        description="Numeric columns that become the continuous vector, in this order.",
    )
    binary: list[str] = Field(
        default_factory=list, description="0/1 (or true/false) columns: the binary vector."
    )
    discrete: list[str] = Field(
        default_factory=list,
        description="Integer columns (categories, buckets): the discrete vector.",
    )
    ids: dict[Literal["meta__user_id", "meta__author_id", "meta__tweet_id"], str] = Field(
        default_factory=dict,
        description="Id role -> column. Integer ids are kept; other ids are hashed to int64. "
        "user and author ids feed hashed large embedding tables in the starter config.",
    )
    embeddings: dict[
        Literal["user_embedding", "user_eng_embedding", "author_embedding"], list[str] | str
    ] = Field(
        default_factory=dict,
        description="Embedding role -> its columns (one value each) or one list column.",
    )
    validation_every: int = Field(
        10, ge=2, description="Every N-th row goes to the validation set instead of training."
    )
    rows_per_file: int = Field(500_000, ge=1, description="Rows per Parquet file.")
    id_buckets: int = Field(
        100_000, ge=1, description="Rows of each hashed id embedding table in the starter config."
    )
    name: str = Field("table", description="Prefix of the feature names in the written schema.")


def _resolve(mapping_path: str, path: str) -> str:
    return path if os.path.isabs(path) else os.path.join(os.path.dirname(mapping_path), path)


def _sources(mapping: TableMapping, mapping_path: str) -> list[str]:
    pattern = _resolve(mapping_path, mapping.source)
    paths = sorted(glob.glob(pattern, recursive=True)) if glob.has_magic(pattern) else [pattern]
    paths = [path for path in paths if os.path.isfile(path)]
    if not paths:
        raise TableImportError(f"source: no file matches '{pattern}'")
    return paths


def _format(mapping: TableMapping, path: str) -> str:
    if mapping.format != "auto":
        return mapping.format
    lowered = path.lower()
    if lowered.endswith((".csv", ".csv.gz")):
        return "csv"
    if lowered.endswith((".parquet", ".pq")):
        return "parquet"
    raise TableImportError(f"source {path}: cannot tell CSV from Parquet by its name; set 'format'")


def _feature_names(mapping: TableMapping) -> dict[str, str]:
    """Renamed role -> schema feature name."""
    names = {"continuous": f"{mapping.name}.continuous"}
    if mapping.binary:
        names["binary"] = f"{mapping.name}.binary"
    if mapping.discrete:
        names["discrete"] = f"{mapping.name}.discrete"
    for role in EMBEDDING_ROLES:
        if role in mapping.embeddings:
            names[role] = f"{mapping.name}.{role}"
    for role in ID_ROLES:
        if role in mapping.ids:
            names[role] = role.replace("__", ".")
    return names


def _all_columns(mapping: TableMapping) -> list[str]:
    columns = [*mapping.labels, *mapping.continuous, *mapping.binary, *mapping.discrete]
    columns.extend(mapping.ids.values())
    for value in mapping.embeddings.values():
        columns.extend([value] if isinstance(value, str) else value)
    return list(dict.fromkeys(columns))


def _batches(mapping: TableMapping, paths: list[str]) -> Iterator[tuple[str, int, pa.RecordBatch]]:
    """(file, first row number, batch) over every source file, streaming."""
    wanted = _all_columns(mapping)
    for path in paths:
        first = 0
        try:
            if _format(mapping, path) == "csv":
                # Numeric roles read as float64: a CSV's type inference, done per block, could
                # otherwise call one block's column int and the next one's float.
                numeric = [*mapping.labels, *mapping.continuous, *mapping.binary]
                reader = pa_csv.open_csv(
                    path,
                    read_options=pa_csv.ReadOptions(block_size=16 << 20),
                    convert_options=pa_csv.ConvertOptions(
                        column_types=dict.fromkeys(numeric, pa.float64())
                    ),
                )
                names = reader.schema.names
                batches: Any = (batch.select(wanted) for batch in reader)
            else:
                parquet = pq.ParquetFile(path)
                names = parquet.schema_arrow.names
                batches = parquet.iter_batches(batch_size=_BATCH_ROWS, columns=wanted)
            missing = [name for name in wanted if name not in names]
            if missing:
                raise TableImportError(
                    f"{path}: no column {missing[0]!r}; it has {', '.join(names)}"
                )
            for batch in batches:
                yield path, first, batch
                first += batch.num_rows
        except (pa.ArrowInvalid, pa.ArrowTypeError, KeyError) as error:
            raise TableImportError(f"{path}: {str(error).splitlines()[0]}") from None


def _column(batch: pa.RecordBatch, name: str, where: str, first: int) -> pa.Array:
    index = batch.schema.get_field_index(name)
    if index < 0:
        raise TableImportError(
            f"{where}: no column {name!r}; it has {', '.join(batch.schema.names)}"
        )
    column = batch.column(index)
    if column.null_count:
        row = int(np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))[0])
        raise TableImportError(f"{where}: column {name!r} is empty in row {first + row}")
    return column


def _numeric(column: pa.Array, name: str, where: str) -> np.ndarray:
    kind = column.type
    if not (pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind)):
        raise TableImportError(f"{where}: column {name!r} holds {column.type}, not numbers")
    return column.to_numpy(zero_copy_only=False)


def _zero_one(column: pa.Array, name: str, where: str, first: int) -> np.ndarray:
    values = _numeric(column, name, where).astype(np.float64)
    bad = np.flatnonzero((values != 0) & (values != 1))
    if len(bad):
        raise TableImportError(
            f"{where}: column {name!r} must hold 0 or 1, row {first + int(bad[0])} holds "
            f"{values[bad[0]]}"
        )
    return values.astype(np.int64)


def _integers(column: pa.Array, name: str, where: str, first: int) -> np.ndarray:
    values = _numeric(column, name, where)
    if values.dtype.kind == "f":
        bad = np.flatnonzero(values != np.round(values))
        if len(bad):
            raise TableImportError(
                f"{where}: column {name!r} must hold integers, row {first + int(bad[0])} "
                f"holds {values[bad[0]]}"
            )
    return values.astype(np.int64)


def _ids(column: pa.Array) -> np.ndarray:
    if pa.types.is_integer(column.type):
        return column.to_numpy(zero_copy_only=False).astype(np.int64)
    text = pc.cast(column, pa.string())
    try:
        return pc.cast(text, pa.int64()).to_numpy(zero_copy_only=False)
    except pa.ArrowInvalid:
        # Stable across runs and machines, unlike Python's hash().
        return np.array(
            [
                int.from_bytes(hashlib.blake2b(value.encode(), digest_size=8).digest(), "little")
                for value in text.to_pylist()
            ],
            dtype=np.uint64,
        ).view(np.int64)


def _rows(mapping: TableMapping, batch: pa.RecordBatch, where: str, first: int) -> dict[str, Any]:
    names = _feature_names(mapping)
    rows: dict[str, Any] = {}

    def matrix(columns: list[str], convert: Any) -> np.ndarray:
        return np.stack(
            [convert(_column(batch, name, where, first), name, where, first) for name in columns],
            axis=1,
        )

    rows[names["continuous"]] = matrix(
        mapping.continuous, lambda c, n, w, f: _numeric(c, n, w).astype(np.float32)
    )
    if mapping.binary:
        rows[names["binary"]] = matrix(mapping.binary, _zero_one)
    if mapping.discrete:
        rows[names["discrete"]] = matrix(mapping.discrete, _integers)
    for label in mapping.labels:
        rows[label] = _zero_one(_column(batch, label, where, first), label, where, first)[:, None]
    for role, name in mapping.ids.items():
        rows[names[role]] = _ids(_column(batch, name, where, first))[:, None]
    for role, columns in mapping.embeddings.items():
        if isinstance(columns, str):
            column = _column(batch, columns, where, first)
            values = np.asarray(column.to_pylist(), dtype=np.float32)
            if values.ndim != 2:
                raise TableImportError(
                    f"{where}: list column {columns!r} has rows of unequal length"
                )
            rows[names[role]] = values
        else:
            rows[names[role]] = matrix(
                columns, lambda c, n, w, f: _numeric(c, n, w).astype(np.float32)
            )
    return rows


def _schema(mapping: TableMapping, widths: dict[str, int]) -> dict[str, Any]:
    names = _feature_names(mapping)
    entries = []
    for role, name in names.items():
        dtype = "float_list" if role == "continuous" or role in EMBEDDING_ROLES else "int64_list"
        entries.append({"feature_name": name, "dtype": dtype, "length": widths[role]})
    for label in mapping.labels:
        entries.append({"feature_name": label, "dtype": "int64_list", "length": 1})
    return {"schema": entries}


def _widths(mapping: TableMapping, first_batch: pa.RecordBatch) -> dict[str, int]:
    widths = {
        "continuous": len(mapping.continuous),
        "binary": len(mapping.binary),
        "discrete": len(mapping.discrete),
    }
    widths.update(dict.fromkeys(mapping.ids, 1))
    for role, columns in mapping.embeddings.items():
        if isinstance(columns, str):
            first = first_batch.column(first_batch.schema.get_field_index(columns))
            widths[role] = len(first[0].as_py()) if len(first) else 0
        else:
            widths[role] = len(columns)
    return widths


def starter_config(mapping: TableMapping, output_dir: str, command: str) -> str:
    """A config that trains on the imported data: a small MaskNet, one MLP tower per label,
    hashed embedding tables for the user and author ids."""
    names = _feature_names(mapping)
    tasks = {label: {"mlp_config": {"layer_sizes": [16, 1]}} for label in mapping.labels}
    tables = [
        {"name": role, "num_embeddings": mapping.id_buckets, "embedding_dim": 16}
        for role in ("meta__user_id", "meta__author_id")
        if role in mapping.ids
    ]
    data = {
        "global_batch_size": 128,
        "seg_dense_schema": {
            "schema_path": os.path.join(output_dir, "segdense.json"),
            "renamed_features": names,
        },
        "tasks": {label: {} for label in mapping.labels},
    }
    config = {
        "training": {
            "save_dir": os.path.join(output_dir, "model"),
            "num_train_steps": 1000,
            "checkpoint_every_n": 500,
            "train_log_every_n": 50,
            "eval_log_every_n": 500,
            "num_eval_steps": -1,
        },
        "model": {
            "multi_task_type": "share_all",
            "featurization_config": {
                "double_norm_log_config": {
                    "clip_magnitude": 5.0,
                    "layer_norm_config": {"epsilon": 0.001},
                }
            },
            "backbone": {
                "mask_net_config": {
                    "use_parallel": True,
                    "mask_blocks": [{"output_size": 64, "aggregation_size": 64}],
                }
            },
            "large_embeddings": (
                {
                    "tables": tables,
                    "optimizer": {"init_learning_rate": 0.05, "rowwise_adagrad": {}},
                }
                if tables
                else None
            ),
            "tasks": tasks,
        },
        "train_data": {**data, "inputs": os.path.join(output_dir, "train", "*.parquet")},
        "validation_data": {
            "validation": {**data, "inputs": os.path.join(output_dir, "validation", "*.parquet")}
        },
        "optimizer": {
            "multi_task_learning_rates": {
                "backbone_learning_rate": {"constant": 0.001},
                "tower_learning_rates": {label: {"constant": 0.001} for label in mapping.labels},
            }
        },
    }
    header = (
        f"# Starter config for {mapping.source}, written by:  {command}\n"
        f"# Train it:  tml-recap --config_path {os.path.join(output_dir, 'starter.yaml')}\n"
        "#   (or torchrun --standalone --nproc_per_node N -m projects.home.recap.main ...)\n"
    )
    return header + yaml.safe_dump(config, sort_keys=False)


class _SplitWriter:
    """Rows into numbered Parquet files of one partition."""

    def __init__(self, folder: str, schema: Any, rows_per_file: int):
        self.folder = folder
        self.schema = schema
        self.rows_per_file = rows_per_file
        self.files = 0
        self.rows = 0
        self._writer: SegDenseWriter | None = None

    def write(self, rows: dict[str, Any]) -> None:
        count = len(next(iter(rows.values())))
        start = 0
        while start < count:
            if self._writer is None or self._writer.num_rows >= self.rows_per_file:
                self.close()
                os.makedirs(self.folder, exist_ok=True)
                path = os.path.join(self.folder, f"part-{self.files:05d}.parquet")
                self._writer = SegDenseWriter(path, self.schema, WriteOptions())
                self.files += 1
            take = min(count - start, self.rows_per_file - self._writer.num_rows)
            self._writer.write(
                {name: values[start : start + take] for name, values in rows.items()}
            )
            start += take
            self.rows += take

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def import_table(mapping: TableMapping, mapping_path: str, command: str = "") -> dict[str, int]:
    """Writes the data, the schema and the starter config; returns rows per partition.

    Raises:
        TableImportError: naming the file, column and row of the first bad value.
    """
    paths = _sources(mapping, mapping_path)
    output_dir = os.path.abspath(_resolve(mapping_path, mapping.output_dir))
    os.makedirs(output_dir, exist_ok=True)
    for partition in ("train", "validation"):
        for stale in glob.glob(os.path.join(output_dir, partition, "part-*.parquet")):
            os.remove(stale)  # a smaller re-import must not leave files of the last one
    batches = _batches(mapping, paths)
    first_batch = next(batches, None)
    if first_batch is None:
        raise TableImportError(f"source {paths[0]}: no rows")
    schema_json = _schema(mapping, _widths(mapping, first_batch[2]))
    schema_path = os.path.join(output_dir, "segdense.json")
    with open(schema_path, "w") as file:
        json.dump(schema_json, file, indent=2)
    schema = parse_schema(schema_json, schema_path)
    train = _SplitWriter(os.path.join(output_dir, "train"), schema, mapping.rows_per_file)
    validation = _SplitWriter(os.path.join(output_dir, "validation"), schema, mapping.rows_per_file)
    try:
        for path, first, batch in _chain(first_batch, batches):
            rows = _rows(mapping, batch, path, first)
            to_validation = (first + np.arange(batch.num_rows)) % mapping.validation_every == 0
            train.write({name: values[~to_validation] for name, values in rows.items()})
            validation.write({name: values[to_validation] for name, values in rows.items()})
    finally:
        train.close()
        validation.close()
    if not train.rows or not validation.rows:
        raise TableImportError(
            f"source: {train.rows + validation.rows} rows are too few for a training and a "
            f"validation set (every {mapping.validation_every}th row validates)"
        )
    with open(os.path.join(output_dir, "starter.yaml"), "w") as file:
        file.write(starter_config(mapping, output_dir, command))
    return {"train": train.rows, "validation": validation.rows}


def _chain(first: Any, rest: Iterator[Any]) -> Iterator[Any]:
    yield first
    yield from rest


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="tml-recap-import-table",
        description="Turn a CSV or Parquet table into tml data, a schema and a starter config.",
    )
    parser.add_argument("--mapping", required=True, help="YAML mapping of columns to inputs.")
    parser.add_argument("overrides", nargs="*", help="dotted.path=value mapping overrides.")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    try:
        mapping = load_config_from_yaml(TableMapping, args.mapping, args.overrides)
        counts = import_table(
            mapping, args.mapping, "tml-recap-import-table --mapping " + args.mapping
        )
    except (UserInputError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    output_dir = os.path.abspath(_resolve(args.mapping, mapping.output_dir))
    print(
        f"wrote {counts['train']:,} training and {counts['validation']:,} validation rows to "
        f"{output_dir}; train with: tml-recap --config_path {output_dir}/starter.yaml"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
