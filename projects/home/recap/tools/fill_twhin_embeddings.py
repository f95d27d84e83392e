"""Fills a TwHIN embedding feature of recap data from per-entity vectors, matched by id.

    tml-recap-fill-twhin --config_path CFG --inputs 'data/*.parquet' --output_dir filled \
        --vectors <twhin export>/vectors/user.parquet --ids meta__user_id --embedding user_embedding

``--ids`` and ``--embedding`` are renamed features of the config's ``train_data`` (e.g.
``meta__user_id`` -> ``meta.user_id``, ``user_embedding`` -> the 200-wide TwHIN column). The
vectors file has columns ``id`` (int64) and ``embedding`` (a list of floats as wide as the
feature), as ``tml-twhin-export`` writes them. Every input file is written again under
``--output_dir`` with the same name and every other feature unchanged; a row whose id has no
vector gets NaN, which the ranker reads as a missing embedding (zeros before its LayerNorm). The
inputs are never overwritten.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from projects.home.recap.config import RecapConfig
from projects.home.recap.data.config import RecapDataConfig
from projects.home.recap.data.parquet_format import WriteOptions
from projects.home.recap.data.schema import load_schema
from tml.core.cli import exit_status
from tml.core.config import load_config_from_yaml
from tml.core.errors import UserInputError
from tml.storage import as_path, list_files, open_input_file

logger = logging.getLogger(__name__)


class FillError(UserInputError):
    """The vectors, the features or the files do not fit together; the message names which."""


class EntityVectors:
    """Vectors by id, looked up for many ids at once (sorted ids, binary search).

    Args:
        path: Parquet file with columns ``id`` and ``embedding``.
        width: The width the vectors must have.
    """

    def __init__(self, path: str, width: int) -> None:
        try:
            table = pq.read_table(open_input_file(path))
        except (OSError, pa.ArrowException) as error:
            raise FillError(f"cannot read vectors file {path}: {error}") from None
        if "id" not in table.column_names or "embedding" not in table.column_names:
            raise FillError(f"vectors file {path} needs columns 'id' and 'embedding'")
        ids = table.column("id").to_numpy().astype(np.int64)
        vectors = table.column("embedding").combine_chunks()
        values = vectors.flatten().to_numpy(zero_copy_only=False).astype(np.float32)
        if len(ids) and values.size != len(ids) * width:
            found = values.size // max(len(ids), 1)
            raise FillError(
                f"vectors file {path} holds vectors of width {found}, the feature is {width} wide"
            )
        order = np.argsort(ids, kind="stable")
        self._ids = ids[order]
        self._vectors = values.reshape(len(ids), width)[order]
        self.width = width

    def __call__(self, ids: np.ndarray) -> tuple[np.ndarray, int]:
        """``[rows, width]`` vectors of ``ids`` (NaN where unknown), and the unknown count."""
        position = np.minimum(np.searchsorted(self._ids, ids), max(len(self._ids) - 1, 0))
        known = self._ids[position] == ids if len(self._ids) else np.zeros(len(ids), bool)
        out = np.full((len(ids), self.width), np.nan, dtype=np.float32)
        out[known] = self._vectors[position[known]]
        return out, int((~known).sum())


def fill_files(
    data_config: RecapDataConfig,
    inputs: str,
    output_dir: str,
    vectors_path: str,
    ids: str,
    embedding: str,
) -> list[str]:
    """Writes every file of ``inputs`` to ``output_dir`` with ``embedding`` filled by id.

    Args:
        data_config: Whose schema and renamed features name the id and embedding features.
        inputs: Glob of the files to fill.
        output_dir: Where the filled files go.
        vectors_path: The per-entity vectors (``id``, ``embedding``).
        ids: Renamed id feature.
        embedding: Renamed embedding feature.

    Returns:
        The paths written.

    Raises:
        FillError: naming the feature, the vectors file or the input file.
    """
    data = data_config.seg_dense_schema
    renamed = data.renamed_features
    for name in (ids, embedding):
        if name not in renamed:
            raise FillError(
                f"'{name}' is not a renamed feature of train_data.seg_dense_schema "
                f"(renamed: {sorted(renamed)})"
            )
    schema = load_schema(data.schema_path)
    where = "train_data.seg_dense_schema.renamed_features"
    id_spec = schema.get(renamed[ids], where=f"{where}.{ids}")
    embedding_spec = schema.get(renamed[embedding], where=f"{where}.{embedding}")
    if id_spec.length != 1:
        raise FillError(f"id feature '{id_spec.name}' has {id_spec.length} values per row, not 1")
    vectors = EntityVectors(vectors_path, embedding_spec.length)
    paths = list_files(inputs)
    if not paths:
        raise FillError(f"--inputs: no file matches '{inputs}'")
    folder = as_path(output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for path in paths:
        target = folder / os.path.basename(path)
        if os.path.abspath(str(target)) == os.path.abspath(path):
            raise FillError(f"--output_dir would overwrite the input {path}")
        try:
            table = pq.read_table(open_input_file(path))
        except (OSError, pa.ArrowException) as error:
            raise FillError(f"cannot read {path}: {error}") from None
        if id_spec.name not in table.column_names:
            raise FillError(f"{path}: no column '{id_spec.name}'")
        filled, unknown = vectors(
            table.column(id_spec.name).to_numpy(zero_copy_only=False).reshape(-1).astype(np.int64)
        )
        # Only the embedding's columns change; every other column (and the file's metadata,
        # which records the layout) is written back as it was read.
        chunks = _feature_columns(table, embedding_spec.name, path)
        for name, (start, stop) in chunks.items():
            part = np.ascontiguousarray(filled[:, start:stop]).reshape(-1)
            index = table.column_names.index(name)
            field = table.schema.field(index)
            # The column's own type: its values are non-nullable in files SegDenseWriter wrote.
            column = pa.FixedSizeListArray.from_arrays(pa.array(part), type=field.type)
            table = table.set_column(index, field, column)
        options = WriteOptions()
        with target.open("wb") as file:
            pq.write_table(
                table,
                file,
                row_group_size=options.row_group_size,
                compression=options.compression,
                compression_level=options.compression_level,
            )
        logger.info("%s: %d rows, %d without a vector", target, table.num_rows, unknown)
        written.append(str(target))
    return written


def _feature_columns(table: pa.Table, feature: str, path: str) -> dict[str, tuple[int, int]]:
    """The columns holding ``feature`` and the values each holds: one column named after it,
    or chunks named ``feature[start:stop]`` (the Parquet format's layout)."""
    found = {}
    for index, name in enumerate(table.column_names):
        kind = table.schema.field(index).type
        if name == feature and pa.types.is_fixed_size_list(kind):
            found[name] = (0, kind.list_size)
        elif name.startswith(f"{feature}[") and name.endswith("]"):
            start, stop = name[len(feature) + 1 : -1].split(":")
            found[name] = (int(start), int(stop))
    if not found:
        raise FillError(f"{path}: no fixed-width column holds feature '{feature}'")
    return found


def main(argv: list[str] | None = None) -> int:
    """Fills a TwHIN embedding feature of recap data files from exported vectors."""
    parser = argparse.ArgumentParser(
        prog="tml-recap-fill-twhin",
        description="Fill a TwHIN embedding feature of recap data from per-entity vectors.",
    )
    parser.add_argument("--config_path", required=True, help="Recap config (schema, renames).")
    parser.add_argument("--inputs", required=True, help="Glob of the recap Parquet files.")
    parser.add_argument("--output_dir", required=True, help="Where the filled files go.")
    parser.add_argument("--vectors", required=True, help="Parquet file of id, embedding.")
    parser.add_argument("--ids", required=True, help="Renamed id feature, e.g. meta__user_id.")
    parser.add_argument(
        "--embedding", required=True, help="Renamed embedding feature, e.g. user_embedding."
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    def fill() -> None:
        config = load_config_from_yaml(RecapConfig, args.config_path)
        written = fill_files(
            config.train_data,
            args.inputs,
            args.output_dir,
            args.vectors,
            args.ids,
            args.embedding,
        )
        print(f"wrote {len(written)} files to {args.output_dir}")

    return exit_status(fill)


if __name__ == "__main__":
    sys.exit(main())
