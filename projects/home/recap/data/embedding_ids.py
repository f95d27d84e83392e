"""Rows of the large embedding tables: raw 64-bit ids mapped through a vocab or hashed.

* Without a vocab, an id goes to row ``splitmix64(id) % num_embeddings``. The mix matters: ids
  are often sequential or share low bits (snowflake ids), which plain modulo would pile into
  few rows.
* With a vocab (a directory of Parquet files with int64 columns ``id`` and ``row``), a listed id
  goes to its row. An id the vocab does not list is hashed into the rows kept for unknown ids:
  the table's last ``unknown_id_rows`` rows, or every row after the vocab's largest when that
  is not set. Unknown ids thus spread over many rows instead of hammering one, and each keeps
  its row from batch to batch (with ``unknown_id_rows``, also when the vocab grows). A vocab
  that leaves no row for unknown ids, or maps into the kept rows, is an error: sending them to a
  row a listed id trains would mix the two.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from projects.home.recap.embedding.config import EmbeddingBagConfig
from tml.core.errors import UserInputError
from tml.storage import as_path, list_files

logger = logging.getLogger(__name__)

_GOLDEN_GAMMA = np.uint64(0x9E3779B97F4A7C15)
_MIX_1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX_2 = np.uint64(0x94D049BB133111EB)


class VocabError(UserInputError):
    """A vocab cannot be read or is inconsistent; the message names the file or directory."""


def hash_ids(ids: np.ndarray, buckets: int) -> np.ndarray:
    """``splitmix64(id) % buckets`` as int64 (deterministic across runs and machines)."""
    z = ids.astype(np.int64, copy=False).view(np.uint64) + _GOLDEN_GAMMA
    z = (z ^ (z >> np.uint64(30))) * _MIX_1
    z = (z ^ (z >> np.uint64(27))) * _MIX_2
    z = z ^ (z >> np.uint64(31))
    return (z % np.uint64(buckets)).astype(np.int64)


class HashedIds:
    """Maps ids to rows by hashing."""

    def __init__(self, num_embeddings: int):
        self.num_embeddings = num_embeddings

    def __call__(self, ids: np.ndarray) -> np.ndarray:
        return hash_ids(ids, self.num_embeddings)


class VocabIds:
    """Maps ids to rows through a vocab; unknown ids as the module docstring says.

    Args:
        directory: The vocab's Parquet files.
        num_embeddings: The table's rows.
        where: Names the table in errors.
        unknown_id_rows: Rows at the end of the table kept for unknown ids; None: every row
            after the vocab's largest.
    """

    def __init__(
        self,
        directory: str,
        num_embeddings: int,
        where: str,
        unknown_id_rows: int | None = None,
    ):
        self.num_embeddings = num_embeddings
        ids, rows = _read_vocab(directory, where)
        if len(rows) and (rows.min() < 0 or rows.max() >= num_embeddings):
            raise VocabError(
                f"{where}: vocab {directory} maps to rows {rows.min()}..{rows.max()}, outside "
                f"the table's {num_embeddings} rows"
            )
        order = np.argsort(ids, kind="stable")
        self._ids, self._rows = ids[order], rows[order]
        repeated = np.flatnonzero(self._ids[1:] == self._ids[:-1])
        if len(repeated):
            raise VocabError(f"{where}: vocab {directory} lists id {self._ids[repeated[0]]} twice")
        used = int(rows.max()) + 1 if len(rows) else 0
        if unknown_id_rows is None:
            self._unknown_start = used
            if used == num_embeddings:
                raise VocabError(
                    f"{where}: vocab {directory} uses all {num_embeddings} rows, leaving none for "
                    "ids it does not list; add rows (num_embeddings) and set unknown_id_rows"
                )
        else:
            self._unknown_start = num_embeddings - unknown_id_rows
            if used > self._unknown_start:
                raise VocabError(
                    f"{where}: vocab {directory} maps to rows up to {used - 1}, into the last "
                    f"{unknown_id_rows} rows kept for unknown ids (from row "
                    f"{self._unknown_start}); raise num_embeddings or lower unknown_id_rows"
                )
        logger.info(
            "%s: vocab of %d ids; rows %d..%d for unknown ids",
            where,
            len(ids),
            self._unknown_start,
            num_embeddings - 1,
        )

    def __call__(self, ids: np.ndarray) -> np.ndarray:
        position = np.searchsorted(self._ids, ids)
        position = np.minimum(position, len(self._ids) - 1)
        known = self._ids[position] == ids if len(self._ids) else np.zeros(ids.shape, bool)
        rows = self._rows[position] if len(self._ids) else np.zeros(ids.shape, np.int64)
        unknown = hash_ids(ids, self.num_embeddings - self._unknown_start) + self._unknown_start
        return np.where(known, rows, unknown).astype(np.int64)


def _read_vocab(directory: str, where: str) -> tuple[np.ndarray, np.ndarray]:
    if not as_path(directory).is_dir():
        raise VocabError(f"{where}: vocab directory {directory} does not exist")
    paths = list_files(f"{directory.rstrip('/')}/*.parquet")
    if not paths:
        raise VocabError(f"{where}: vocab directory {directory} holds no .parquet file")
    ids, rows = [], []
    for path in paths:
        try:
            # A vocab is read whole anyway: one request per file, local or remote.
            table = pq.read_table(pa.BufferReader(as_path(path).read_bytes()))
        except (OSError, pa.ArrowException) as error:
            raise VocabError(f"{where}: cannot read vocab file {path}: {error}") from None
        for column in ("id", "row"):
            if column not in table.column_names:
                raise VocabError(f"{where}: vocab file {path} has no column '{column}'")
            if not pa.types.is_integer(table.schema.field(column).type):
                raise VocabError(f"{where}: vocab file {path}: column '{column}' must be integers")
            if table.column(column).null_count:
                raise VocabError(f"{where}: vocab file {path}: column '{column}' has nulls")
        ids.append(table.column("id").to_numpy().astype(np.int64))
        rows.append(table.column("row").to_numpy().astype(np.int64))
    return np.concatenate(ids), np.concatenate(rows)


def build_id_mapper(table: EmbeddingBagConfig) -> HashedIds | VocabIds:
    """The id -> row mapping of one large table: its vocab when given, else hashing."""
    if table.vocab is not None:
        return VocabIds(
            table.vocab,
            table.num_embeddings,
            f"large_embeddings table {table.name}",
            unknown_id_rows=table.unknown_id_rows,
        )
    return HashedIds(table.num_embeddings)


class SparseFeatures:
    """Turns the raw id features of the large tables into one KeyedJaggedTensor."""

    def __init__(self, tables: Sequence[EmbeddingBagConfig]):
        self.keys = [table.name for table in tables]
        self._mappers = [build_id_mapper(table) for table in tables]

    def __call__(self, features: Mapping[str, torch.Tensor]) -> KeyedJaggedTensor:
        """Keys are table names in config order; each example has ``length`` ids per table."""
        values, lengths = [], []
        for key, mapper in zip(self.keys, self._mappers, strict=True):
            ids = features[key]
            rows = mapper(ids.numpy().reshape(-1))
            values.append(torch.from_numpy(rows))
            lengths.append(torch.full((ids.shape[0],), ids.shape[1], dtype=torch.int32))
        return KeyedJaggedTensor.from_lengths_sync(
            keys=self.keys, values=torch.cat(values), lengths=torch.cat(lengths)
        )
