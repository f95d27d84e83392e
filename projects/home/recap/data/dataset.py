"""The per-rank loader: Parquet row groups in, preprocessed ``RecapBatch`` out, resumable.

How an epoch is read, all of it a deterministic function of (seed, epoch, rank, world size):

1. Sharding. Each rank owns a disjoint share: every ``world_size``-th file, or every
   ``world_size``-th row group when there are fewer files than ranks.
2. File shuffling. The rank's files are shuffled; groups of ``file_batch_size`` files are read
   together, their row groups shuffled among each other (interleaved).
3. Example shuffling. Consecutive row groups are gathered into windows of at least
   ``examples_shuffle_buffer_size`` rows, and each window's rows are permuted.
4. Batching. The windows form one stream of rows; every batch takes the next
   ``batch_size * batch_multiplier`` rows. Training streams epoch after epoch (no example is
   ever dropped); evaluation and inference read one pass and yield the last, partial batch.

Because the order is a function of the position, the loader's state is just (epoch, rows
consumed in that epoch): resuming skips whole windows without reading them, re-reads the
window holding the position and continues with the next unseen row. Inference reads files and
rows in order (no shuffling).

Row groups are read and decoded by a pool of ``interleave_num_parallel_calls`` threads, batches
are preprocessed by ``map_num_parallel_calls`` threads; both stay a bounded number of items
ahead of the consumer, so memory does not grow with the dataset (unless ``cache`` is on).
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import logging
import os
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from projects.home.recap.config import JobMode
from projects.home.recap.data.batch import TWHIN_EMBEDDINGS, RecapBatch
from projects.home.recap.data.config import RecapDataConfig
from projects.home.recap.data.embedding_ids import SparseFeatures
from projects.home.recap.data.features import FeaturePlan, plan_features
from projects.home.recap.data.files import select_files
from projects.home.recap.data.parquet_format import DataFile, DataFileError
from projects.home.recap.data.pipeline import ordered_map
from projects.home.recap.data.preprocess import Preprocessor, Rows, build_preprocessor
from projects.home.recap.embedding.config import LargeEmbeddingsConfig
from tml.core.errors import UserInputError

logger = logging.getLogger(__name__)

STATE_VERSION = 1
# Positions remembered for state_dict(pending=k): a pipeline holds at most a few batches.
_HISTORY = 16

Arrays = dict[str, np.ndarray]


class DatasetError(UserInputError):
    """The data cannot be shared or resumed as asked; the message says why."""


@dataclasses.dataclass(frozen=True)
class _Unit:
    """One row group of one file."""

    file: int
    row_group: int
    rows: int


@dataclasses.dataclass(frozen=True)
class _Window:
    """Row groups whose rows are shuffled together; ``start`` is its first row in the epoch."""

    epoch: int
    index: int
    start: int
    units: tuple[_Unit, ...]

    @property
    def rows(self) -> int:
        return sum(unit.rows for unit in self.units)

    @property
    def stop(self) -> int:
        return self.start + self.rows


@dataclasses.dataclass
class _Segment:
    """Consecutive rows of the stream: ``arrays`` holds positions ``start`` onwards of
    ``epoch``; once all of it is consumed the position is ``stop``."""

    arrays: Arrays
    epoch: int
    start: int
    stop: int

    @property
    def rows(self) -> int:
        return len(next(iter(self.arrays.values()))) if self.arrays else 0


@dataclasses.dataclass(frozen=True)
class _RawBatch:
    arrays: Arrays
    rows: int
    # Position after this batch.
    epoch: int
    offset: int


class RecapDataset(torch.utils.data.IterableDataset):
    """Batches of one rank's share of a dataset; see the module docstring for the order.

    Iterate it directly (it parallelises internally); wrapping it in a ``DataLoader`` with
    worker processes would give every worker the same share. The position advances as batches
    are handed out; ``state_dict`` / ``load_state_dict`` save and restore it.
    """

    def __init__(
        self,
        config: RecapDataConfig,
        *,
        mode: JobMode,
        tasks: Sequence[str],
        large_embeddings: LargeEmbeddingsConfig | None = None,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
    ):
        """Resolves features and files and opens this rank's files (footers only).

        Raises:
            UserInputError: (a subclass naming the file, field or column) for a bad config, no
                matching files, an unreadable or non-conforming file.
        """
        super().__init__()
        if world_size < 1 or not 0 <= rank < world_size:
            raise DatasetError(f"rank {rank} is not in a world of {world_size} ranks")
        if config.global_batch_size % world_size:
            raise DatasetError(
                f"global_batch_size: {config.global_batch_size} does not divide by the "
                f"{world_size} ranks"
            )
        self.config = config
        self.mode = JobMode(mode)
        self.tasks = list(tasks)
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.batch_size = config.global_batch_size // world_size
        self._with_labels = self.mode != JobMode.INFERENCE
        self._shuffle = self.mode != JobMode.INFERENCE
        self.plan: FeaturePlan = plan_features(
            config,
            tasks=self.tasks,
            with_labels=self._with_labels,
            large_embeddings=large_embeddings,
        )
        self.preprocessor: Preprocessor = build_preprocessor(
            config.preprocess,
            tasks=self.tasks,
            # Training optimises in the sampled space, which the model's calibration maps back
            # to un-sampled rates; weighting the loss by the sampling rates as well would undo
            # the sampling twice. Evaluation weighs examples back to un-sampled traffic.
            rates=config.tasks if self.mode == JobMode.EVALUATE else {},
            lengths=self.plan.lengths,
            mask_mantissa=config.seg_dense_schema.mask_mantissa_features,
            with_labels=self._with_labels,
        )
        self._sparse = (
            SparseFeatures(large_embeddings.tables)
            if large_embeddings is not None and large_embeddings.tables
            else None
        )
        self.skipped_files: list[str] = []
        self.skipped_row_groups = 0
        self._skip_lock = threading.Lock()
        self._files, self._units = self._open_share(select_files(config))
        self.rows_per_epoch = sum(unit.rows for unit in self._units)
        self._fingerprint = self._compute_fingerprint()
        self._readers = config.interleave_num_parallel_calls or min(4, os.cpu_count() or 1)
        self._mappers = config.map_num_parallel_calls or 1
        self._cache: dict[tuple[int, int], Arrays] = {}
        self._epoch = 0
        self._offset = 0
        self._history: collections.deque[tuple[int, int]] = collections.deque(
            [(0, 0)], maxlen=_HISTORY + 1
        )
        logger.info(
            "rank %d/%d (%s): %d files, %d row groups, %d rows per epoch, batch %d",
            rank,
            world_size,
            self.mode,
            len(self._files),
            len(self._units),
            self.rows_per_epoch,
            self.batch_size,
        )

    # ----------------------------------------------------------------------------- set-up
    def _open(self, path: str) -> DataFile | None:
        try:
            return DataFile(path, self.plan.schema, self.plan.reads)
        except DataFileError as error:
            if not self.config.ignore_data_errors:
                raise
            self.skipped_files.append(path)
            logger.warning(
                "ignore_data_errors: skipping %s (%d skipped)", error, len(self.skipped_files)
            )
            return None

    def _open_share(self, paths: list[str]) -> tuple[list[DataFile], list[_Unit]]:
        """This rank's files and row groups, in canonical (sorted) order.

        With at least as many files as ranks, whole files are shared out, balanced by rows (a
        rank with a smaller share would repeat its examples more often in training); with
        fewer, row groups are dealt round-robin.
        """
        by_file = len(paths) >= self.world_size
        candidates = paths
        opened = [data_file for path in paths if (data_file := self._open(path)) is not None]
        if by_file:
            owners = balanced_owners([data_file.num_rows for data_file in opened], self.world_size)
            files = [f for f, owner in zip(opened, owners, strict=True) if owner == self.rank]
        else:
            files = opened
        units = [
            _Unit(index, row_group, rows)
            for index, data_file in enumerate(files)
            for row_group, rows in enumerate(data_file.row_group_rows)
            if rows > 0
        ]
        if not by_file:
            if len(units) < self.world_size:
                raise DatasetError(
                    f"{len(paths)} files with {len(units)} row groups in all cannot be shared "
                    f"among {self.world_size} ranks; write smaller row groups or more files"
                )
            units = units[self.rank :: self.world_size]
        if not units:
            raise DatasetError(
                f"rank {self.rank}: none of the {len(candidates)} files gives it a readable row "
                f"({len(self.skipped_files)} skipped); write more files than ranks"
            )
        return files, units

    def _compute_fingerprint(self) -> str:
        digest = hashlib.sha256()
        for unit in self._units:
            digest.update(f"{self._files[unit.file].path}:{unit.row_group}:{unit.rows};".encode())
        return digest.hexdigest()[:16]

    @property
    def batches_per_pass(self) -> int:
        """Batches a whole pass yields in EVALUATE or INFERENCE mode, the partial last one
        included (fewer when ignore_data_errors skips row groups).

        Ranks' shares can differ, and so can their counts: before an evaluation that runs
        collectives per batch, agree on a count (e.g. the all-reduced minimum).
        """
        rows = self.batch_size * self.preprocessor.batch_multiplier
        return -(-self.rows_per_epoch // rows)

    @property
    def columns_read(self) -> list[str]:
        """The Parquet columns this loader decodes (of every file, first seen first)."""
        return list(dict.fromkeys(c for data_file in self._files for c in data_file.columns))

    # ----------------------------------------------------------------------------- state
    def state_dict(self, pending: int = 0) -> dict[str, Any]:
        """The position to resume from.

        Args:
            pending: Batches already handed out but not yet trained on (a pipeline that
                prefetches); the state then points before them so they are read again.
        """
        if not 0 <= pending < len(self._history):
            raise DatasetError(f"pending must be in 0..{len(self._history) - 1}, got {pending}")
        epoch, offset = self._history[-1 - pending]
        return {
            "version": STATE_VERSION,
            "epoch": epoch,
            "offset": offset,
            "seed": self.seed,
            "rank": self.rank,
            "world_size": self.world_size,
            "fingerprint": self._fingerprint,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continues from a saved position: the next batch starts at the first unseen row.

        Raises:
            DatasetError: when the state was saved for another share of the data (other files,
                rank, world size or seed), where an exact resume is impossible.
        """
        if state.get("version") != STATE_VERSION:
            raise DatasetError(f"data loader state version {state.get('version')} is not supported")
        for key in ("seed", "rank", "world_size", "fingerprint"):
            if state.get(key) != getattr(self, f"_{key}" if key == "fingerprint" else key):
                raise DatasetError(
                    f"data loader state was saved with {key}={state.get(key)!r}, this loader has "
                    f"{getattr(self, f'_{key}' if key == 'fingerprint' else key)!r}: the files or "
                    "their sharing among ranks changed, so the position cannot be restored"
                )
        self._epoch, self._offset = int(state["epoch"]), int(state["offset"])
        self._history = collections.deque([(self._epoch, self._offset)], maxlen=_HISTORY + 1)

    # ----------------------------------------------------------------------------- order
    def _windows(self, epoch: int) -> list[_Window]:
        """The epoch's windows, in reading order."""
        units = list(self._units)
        if self._shuffle:
            rng = np.random.default_rng([self.seed, epoch, self.rank, self.world_size])
            by_file: dict[int, list[_Unit]] = collections.defaultdict(list)
            for unit in units:
                by_file[unit.file].append(unit)
            files = list(by_file)
            rng.shuffle(files)
            units = []
            group_size = self.config.file_batch_size
            for start in range(0, len(files), group_size):
                group = [
                    unit for file in files[start : start + group_size] for unit in by_file[file]
                ]
                rng.shuffle(group)
                units.extend(group)
        buffer = self.config.examples_shuffle_buffer_size if self._shuffle else 0
        windows: list[_Window] = []
        current: list[_Unit] = []
        start = 0
        for unit in units:
            current.append(unit)
            if sum(item.rows for item in current) >= buffer:
                windows.append(_Window(epoch, len(windows), start, tuple(current)))
                start = windows[-1].stop
                current = []
        if current:
            windows.append(_Window(epoch, len(windows), start, tuple(current)))
        return windows

    def _read_unit_into(self, unit: _Unit, out: Arrays, destination: slice | np.ndarray) -> bool:
        """Decodes a row group into ``out[destination]``; False when it was skipped."""
        data_file = self._files[unit.file]
        key = (unit.file, unit.row_group)
        try:
            if not self.config.cache:
                data_file.read_into(unit.row_group, out, destination)
                return True
            if key not in self._cache:
                self._cache[key] = data_file.read(unit.row_group)
        except DataFileError as error:
            if not self.config.ignore_data_errors:
                raise
            with self._skip_lock:  # reader threads count concurrently
                self.skipped_row_groups += 1
            logger.warning(
                "ignore_data_errors: skipping %s (%d row groups skipped)",
                error,
                self.skipped_row_groups,
            )
            return False
        for name, values in self._cache[key].items():
            out[name][destination] = values
        return True

    def _read_window(self, window: _Window) -> Arrays:
        """The window's rows, permuted when shuffling; decoded straight into their places."""
        rows = window.rows
        out = self._files[window.units[0].file].allocate(rows)
        shuffle = self._shuffle and self.config.examples_shuffle_buffer_size > 0
        if shuffle:
            rng = np.random.default_rng(
                [self.seed, window.epoch, self.rank, self.world_size, window.index]
            )
            # destination[i] is where the window's i-th row lands.
            destination = rng.permutation(rows)
        missing = None
        start = 0
        for unit in window.units:
            stop = start + unit.rows
            where = destination[start:stop] if shuffle else slice(start, stop)
            if not self._read_unit_into(unit, out, where):
                missing = np.zeros(rows, dtype=bool) if missing is None else missing
                missing[where] = True
            start = stop
        if missing is not None:
            out = {name: values[~missing] for name, values in out.items()}
        return out

    def _segments(self, epoch: int, offset: int) -> Iterator[_Segment]:
        """The stream of rows from a position on; forever when training."""
        while True:
            windows = [window for window in self._windows(epoch) if window.stop > offset]

            def read(window: _Window) -> tuple[_Window, Arrays]:
                return window, self._read_window(window)

            delivered = 0
            for window, arrays in ordered_map(
                read,
                windows,
                threads=self._readers,
                lookahead=self._readers + 1,
                name="recap-read",
            ):
                skip = max(offset - window.start, 0)
                arrays = {name: value[skip:] for name, value in arrays.items()}
                segment = _Segment(arrays, epoch, window.start + skip, window.stop)
                delivered += segment.rows
                yield segment
            if self.mode != JobMode.TRAIN:
                return
            if delivered == 0 and offset == 0:
                raise DatasetError(
                    f"rank {self.rank}: a whole epoch produced no readable row "
                    f"({self.skipped_row_groups} row groups skipped)"
                )
            epoch, offset = epoch + 1, 0

    def _raw_batches(self, epoch: int, offset: int) -> Iterator[_RawBatch]:
        wanted = self.batch_size * self.preprocessor.batch_multiplier
        pieces: list[Arrays] = []
        have = 0
        position = (epoch, offset)
        for segment in self._segments(epoch, offset):
            taken = 0
            while taken < segment.rows:
                count = min(wanted - have, segment.rows - taken)
                pieces.append({k: v[taken : taken + count] for k, v in segment.arrays.items()})
                have += count
                taken += count
                done = taken == segment.rows
                position = (segment.epoch, segment.stop if done else segment.start + taken)
                if have == wanted:
                    yield self._join(pieces, have, position)
                    pieces, have = [], 0
            if segment.rows == 0:
                position = (segment.epoch, segment.stop)
        if have:
            yield self._join(pieces, have, position)

    def _join(self, pieces: list[Arrays], rows: int, position: tuple[int, int]) -> _RawBatch:
        if len(pieces) == 1:
            arrays = pieces[0]
        else:
            arrays = {name: np.concatenate([piece[name] for piece in pieces]) for name in pieces[0]}
        return _RawBatch(arrays, rows, *position)

    # ----------------------------------------------------------------------------- batches
    def _make_batch(self, raw: _RawBatch) -> RecapBatch:
        features: dict[str, torch.Tensor] = {}
        for schema_name, names in self.plan.names.items():
            tensor = torch.from_numpy(raw.arrays[schema_name])
            for name in names:
                features[name] = tensor
        labels = {
            label: torch.from_numpy(raw.arrays[label][:, 0]).to(torch.float32)
            for label in self.plan.labels
        }
        rows = self.preprocessor(Rows(features=features, labels=labels))
        return self._assemble(rows)

    def _assemble(self, rows: Rows) -> RecapBatch:
        count = rows.num_rows
        features = rows.features

        def dense(name: str, dtype: torch.dtype) -> torch.Tensor:
            return features[name] if name in features else torch.zeros(count, 0, dtype=dtype)

        if self._with_labels:
            labels = torch.stack([rows.labels[task] for task in self.tasks], dim=1)
            weights = rows.weights if rows.weights is not None else torch.ones(count, 0)
        else:
            labels = torch.zeros(count, 0)
            weights = torch.zeros(count, 0)
        return RecapBatch(
            continuous_features=dense("continuous", torch.float32),
            binary_features=dense("binary", torch.int64),
            discrete_features=dense("discrete", torch.int64),
            labels=labels.reshape(count, len(self.tasks) if self._with_labels else 0),
            weights=weights,
            **{name: features.get(name) for name in TWHIN_EMBEDDINGS},
            sparse_features=self._sparse(features) if self._sparse is not None else None,
            extra_features={name: features[name] for name in self.plan.extras},
        )

    def __iter__(self) -> Iterator[RecapBatch]:
        """Batches from the current position; the position advances as each is handed out.

        Use one iterator at a time: each starts at the shared position and advances it.
        """
        raw_batches = self._raw_batches(self._epoch, self._offset)

        def make(raw: _RawBatch) -> tuple[RecapBatch, tuple[int, int]]:
            return self._make_batch(raw), (raw.epoch, raw.offset)

        for batch, (epoch, offset) in ordered_map(
            make,
            raw_batches,
            threads=self._mappers,
            lookahead=self._mappers + 1,
            name="recap-batch",
        ):
            if offset >= self.rows_per_epoch:
                epoch, offset = epoch + 1, 0
            self._epoch, self._offset = epoch, offset
            self._history.append((epoch, offset))
            yield batch
        if self.mode != JobMode.TRAIN and self._offset != 0:
            # The pass is over (its last row groups unreadable): the next iteration starts the
            # next pass.
            self._epoch, self._offset = self._epoch + 1, 0
            self._history.append((self._epoch, self._offset))


def balanced_owners(sizes: Sequence[int], ranks: int) -> list[int]:
    """The rank each item goes to: largest first, to the least loaded rank (ties: lowest), the
    same on every rank."""
    owners = [0] * len(sizes)
    loads = [0] * ranks
    for item in sorted(range(len(sizes)), key=lambda index: (-sizes[index], index)):
        owner = min(range(ranks), key=lambda rank: (loads[rank], rank))
        owners[item] = owner
        loads[owner] += sizes[item]
    return owners


def build_dataset(
    data_config: RecapDataConfig,
    *,
    mode: JobMode,
    tasks: Sequence[str],
    large_embeddings: LargeEmbeddingsConfig | None = None,
    rank: int = 0,
    world_size: int = 1,
    seed: int = 0,
) -> RecapDataset:
    """The loader of one rank: iterate it for ``RecapBatch``es.

    Args:
        data_config: The dataset (train_data or one validation partition).
        mode: TRAIN repeats forever, with weights of 1 (times downsample_negatives' scaling):
            the model learns the sampled rates and its calibration maps them back. EVALUATE
            reads one pass, weighing examples by the inverse sampling rates of the partition's
            tasks. INFERENCE reads one pass in file
            order without labels (labels and weights have zero columns); the last partial batch
            is kept in EVALUATE and INFERENCE.
        tasks: The model's task names in model order; label and weight columns follow it.
        large_embeddings: The model's large tables: each reads the renamed feature of its name
            into ``RecapBatch.sparse_features``.
        rank: This process's rank.
        world_size: Number of ranks; each reads a disjoint share.
        seed: Seeds file and example shuffling (the same on every rank).
    """
    return RecapDataset(
        data_config,
        mode=mode,
        tasks=tasks,
        large_embeddings=large_embeddings,
        rank=rank,
        world_size=world_size,
        seed=seed,
    )
