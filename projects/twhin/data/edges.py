"""TwHIN's edges: Parquet files with integer columns ``lhs``, ``rel`` and ``rhs``.

``rel`` is a position in the config's ``model.relations``; ``lhs`` and ``rhs`` are rows of the
tables that relation names (an entity's index in its type's vocabulary). A split is a window of
rows (``offset``, ``limit``) of the files in sorted order; it is read once, checked (every id in
range, naming the file and row otherwise), and kept in memory as three int64 columns (24 bytes
per edge).

Batches are global: epoch ``e`` shuffles the split with a generator seeded by (seed, e) and cuts
it into global batches of ``per_replica_batch_size * world_size`` edges, the last one smaller;
each rank takes its contiguous share. Global negatives are drawn per global batch, before the
split into ranks, so a job sees the same edges and negatives per step on any number of ranks.
The position (epoch, next global batch) is the loader's resumable state.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from projects.twhin.batch import EdgeBatch
from projects.twhin.data.config import TwhinDataConfig
from projects.twhin.model.config import TwhinModelConfig
from tml.core.errors import UserInputError
from tml.storage import list_files, open_input_file, storage_errors

logger = logging.getLogger(__name__)

COLUMNS = ("lhs", "rel", "rhs")


class EdgeFileError(UserInputError):
    """An edge file cannot be read or holds an edge the model has no row for."""

    # Every rank reads the whole split and checks it alike: rank 0's copy of the line suffices.
    same_on_every_rank = True


@dataclass(frozen=True)
class Graph:
    """What the data stage needs of the model: table rows and each relation's two tables."""

    table_names: tuple[str, ...]
    table_rows: tuple[int, ...]
    relation_names: tuple[str, ...]
    relation_tables: tuple[tuple[int, int], ...]  # (lhs table, rhs table) positions

    @classmethod
    def of(cls, model: TwhinModelConfig) -> Graph:
        names = tuple(table.name for table in model.embeddings.tables)
        return cls(
            table_names=names,
            table_rows=tuple(table.num_embeddings for table in model.embeddings.tables),
            relation_names=tuple(relation.name for relation in model.relations),
            relation_tables=tuple(
                (names.index(relation.lhs), names.index(relation.rhs))
                for relation in model.relations
            ),
        )


@dataclass(frozen=True)
class Edges:
    """A split's edges as int64 columns."""

    lhs: np.ndarray
    rel: np.ndarray
    rhs: np.ndarray

    def __len__(self) -> int:
        return len(self.rel)


def read_edges(config: TwhinDataConfig, graph: Graph, *, where: str) -> Edges:
    """Reads and checks the split ``config`` selects.

    Args:
        config: The split.
        graph: Tables and relations the ids must fit.
        where: The config path of the split, for messages.

    Raises:
        EdgeFileError: no file matches, a file lacks a column or is not Parquet, or an edge's
            relation or node id is out of range (naming the file and the row).
    """
    files = list_files(config.data_root)
    if not files:
        raise EdgeFileError(f"{where}.data_root: no file matches '{config.data_root}'")
    start, stop = config.first_row, config.first_row + config.limit
    parts: list[dict[str, np.ndarray]] = []
    file_start = 0
    for path in files:
        with storage_errors(path):
            try:
                parquet = pq.ParquetFile(open_input_file(path))
            except (pa.ArrowInvalid, OSError) as error:
                raise EdgeFileError(f"{path}: not a readable Parquet file ({error})") from None
            rows = parquet.metadata.num_rows
            first, last = max(start, file_start), min(stop, file_start + rows)
            if first < last:
                parts.append(_read_window(parquet, path, first - file_start, last - file_start))
                _check_ids(parts[-1], graph, path, first - file_start)
        file_start += rows
        if file_start >= stop:
            break
    if not parts:
        raise EdgeFileError(
            f"{where}: the files of '{config.data_root}' hold {file_start} edges, none at or "
            f"after offset {start}"
        )
    return Edges(**{name: np.concatenate([part[name] for part in parts]) for name in COLUMNS})


def _read_window(
    parquet: pq.ParquetFile, path: str, first: int, last: int
) -> dict[str, np.ndarray]:
    names = parquet.schema_arrow.names
    missing = [name for name in COLUMNS if name not in names]
    if missing:
        raise EdgeFileError(f"{path}: no column {missing} (edge files have columns {COLUMNS})")
    for name in COLUMNS:
        kind = parquet.schema_arrow.field(name).type
        if not pa.types.is_integer(kind):
            raise EdgeFileError(f"{path}: column '{name}' is {kind}, not integers")
    table = parquet.read(columns=list(COLUMNS)).slice(first, last - first)
    columns = {}
    for name in COLUMNS:
        column = table.column(name)
        if column.null_count:
            row = first + int(np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))[0])
            raise EdgeFileError(f"{path}: row {row}: '{name}' is null")
        columns[name] = column.to_numpy().astype(np.int64, copy=False)
    return columns


def _check_ids(columns: dict[str, np.ndarray], graph: Graph, path: str, first: int) -> None:
    rel = columns["rel"]
    bad = np.flatnonzero((rel < 0) | (rel >= len(graph.relation_names)))
    if bad.size:
        row = int(bad[0])
        raise EdgeFileError(
            f"{path}: row {first + row}: rel {int(rel[row])} is not a relation (the config "
            f"has {len(graph.relation_names)}: 0..{len(graph.relation_names) - 1} = "
            f"{list(graph.relation_names)})"
        )
    tables = np.asarray(graph.relation_tables, dtype=np.int64).reshape(-1, 2)
    rows = np.asarray(graph.table_rows, dtype=np.int64)
    for side, position in (("lhs", 0), ("rhs", 1)):
        ids = columns[side]
        limit = rows[tables[rel, position]]
        bad = np.flatnonzero((ids < 0) | (ids >= limit))
        if bad.size:
            row = int(bad[0])
            table = graph.table_names[tables[rel[row], position]]
            raise EdgeFileError(
                f"{path}: row {first + row}: {side} {int(ids[row])} is not a row of table "
                f"'{table}' ({int(limit[row])} rows), the {side} of relation "
                f"'{graph.relation_names[rel[row]]}'"
            )


class EdgeDataset:
    """This rank's batches of a split: endless and shuffled for training, one pass in order
    for evaluation.

    Args:
        config: The split.
        graph: Tables and relations.
        rank: This process's rank.
        world_size: Ranks in the job.
        training: Shuffle and repeat (else one pass in file order).
        where: The config path of the split, for messages.
    """

    def __init__(
        self,
        config: TwhinDataConfig,
        graph: Graph,
        *,
        rank: int,
        world_size: int,
        training: bool,
        where: str,
    ) -> None:
        self.config = config
        self.graph = graph
        self.rank = rank
        self.world_size = world_size
        self.training = training
        self.edges = read_edges(config, graph, where=where)
        self.global_batch_size = config.per_replica_batch_size * world_size
        self._epoch = 0
        self._next_batch = 0
        if self.batches_per_epoch == 0:
            raise EdgeFileError(
                f"{where}: {len(self.edges)} edges cannot give each of the {world_size} ranks one"
            )
        self._relation_tables = torch.tensor(graph.relation_tables, dtype=torch.int64)
        self._table_rows = torch.tensor(graph.table_rows, dtype=torch.int64)
        logger.info(
            "%s: %d edges, %d batches per epoch", where, len(self.edges), self.batches_per_epoch
        )

    @property
    def batches_per_epoch(self) -> int:
        """Global batches per pass; a last one with fewer edges than ranks is left out."""
        full, rest = divmod(len(self.edges), self.global_batch_size)
        return full + (1 if rest >= self.world_size else 0)

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self._epoch, "next_batch": self._next_batch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._epoch = int(state["epoch"])
        self._next_batch = int(state["next_batch"])

    def __iter__(self) -> Iterator[EdgeBatch]:
        if not self.training:
            order = np.arange(len(self.edges))
            for index in range(self.batches_per_epoch):
                yield self._batch(order, 0, index)
            return
        while True:
            order = np.random.default_rng([self.config.seed, self._epoch]).permutation(
                len(self.edges)
            )
            while self._next_batch < self.batches_per_epoch:
                index = self._next_batch
                self._next_batch += 1
                yield self._batch(order, self._epoch, index)
            self._epoch += 1
            self._next_batch = 0

    def _batch(self, order: np.ndarray, epoch: int, index: int) -> EdgeBatch:
        size = self.global_batch_size
        chosen = torch.from_numpy(order[index * size : (index + 1) * size])
        shares = torch.tensor_split(torch.arange(len(chosen)), self.world_size)
        mine = chosen[shares[self.rank]]
        lhs = torch.from_numpy(self.edges.lhs)[mine]
        rel = torch.from_numpy(self.edges.rel)[mine]
        rhs = torch.from_numpy(self.edges.rhs)[mine]
        negative_rhs, negative_lhs = self._global_negatives(
            torch.from_numpy(self.edges.rel)[chosen], epoch, index, shares[self.rank]
        )
        in_batch_index, in_batch_weight = self._in_batch_negatives(rel, epoch, index)
        sides = self._relation_tables[rel]  # [edges, 2]
        k = self.config.global_negatives
        # Per edge: lhs, rhs, k rhs negatives (rhs table), k lhs negatives (lhs table).
        rows = torch.cat([lhs[:, None], rhs[:, None], negative_rhs, negative_lhs], dim=1)
        tables = torch.cat(
            [
                sides[:, :1],
                sides[:, 1:],
                sides[:, 1:].expand(-1, k),
                sides[:, :1].expand(-1, k),
            ],
            dim=1,
        )
        return EdgeBatch(
            nodes=_lookups(rows.reshape(-1), tables.reshape(-1), self.graph.table_names),
            relations=rel,
            in_batch_index=in_batch_index,
            in_batch_weight=in_batch_weight,
            edges_per_rank=torch.tensor(len(chosen) / self.world_size, dtype=torch.float32),
        )

    def _global_negatives(
        self, global_rel: torch.Tensor, epoch: int, index: int, mine: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Uniform rows of each side's table, drawn for the whole global batch, then sliced."""
        k = self.config.global_negatives
        generator = torch.Generator().manual_seed(_seed(self.config.seed, epoch, index, 1))
        uniform = torch.rand(len(global_rel), 2, k, generator=generator, dtype=torch.float64)
        rows = self._table_rows[self._relation_tables[global_rel]]  # [global edges, 2]
        drawn = (uniform * rows[:, :, None]).long().minimum(rows[:, :, None] - 1)
        drawn = drawn[mine]
        return drawn[:, 1], drawn[:, 0]

    def _in_batch_negatives(
        self, rel: torch.Tensor, epoch: int, index: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """For each edge, n other edges of its relation in this rank's batch (uniformly, with
        replacement, never itself); weight 0 where it is its relation's only edge."""
        n = self.config.in_batch_negatives
        edges = len(rel)
        generator = torch.Generator().manual_seed(
            _seed(self.config.seed, epoch, index, 2 + self.rank)
        )
        chosen = torch.zeros(edges, n, dtype=torch.int64)
        weight = torch.zeros(edges, n, dtype=torch.float32)
        if n == 0:
            return chosen, weight
        for relation in torch.unique(rel).tolist():
            members = torch.nonzero(rel == relation).flatten()
            count = len(members)
            if count < 2:
                continue
            # An offset in 1..count-1 from each edge's own place never lands on itself.
            offsets = torch.randint(1, count, (count, n), generator=generator)
            places = (torch.arange(count)[:, None] + offsets) % count
            chosen[members] = members[places]
            weight[members] = 1.0
        return chosen, weight


def _lookups(rows: torch.Tensor, tables: torch.Tensor, names: tuple[str, ...]) -> KeyedJaggedTensor:
    """One bag per lookup, non-empty only under its table's key (see projects.twhin.batch)."""
    order = torch.sort(tables, stable=True).indices
    lengths = torch.arange(len(names))[:, None] == tables[None, :]
    return KeyedJaggedTensor(
        keys=list(names),
        values=rows[order],
        lengths=lengths.reshape(-1).to(torch.int32),
    )


def _seed(*parts: int) -> int:
    # A deterministic 63-bit seed from several integers (Python's hash of ints is not salted,
    # but numpy's SeedSequence mixes them properly).
    return int(np.random.SeedSequence(list(parts)).generate_state(1, dtype=np.uint64)[0] >> 1)


def steps_in_epochs(dataset: EdgeDataset, num_epochs: int) -> int:
    """Optimizer steps in ``num_epochs`` passes over ``dataset``."""
    return dataset.batches_per_epoch * num_epochs
