"""The per-rank loader: data files in, preprocessed ``RecapBatch`` out, resumable.

How an epoch is read, all of it a deterministic function of (seed, epoch, rank, world size):

1. Sharing (:mod:`sharing <projects.home.recap.data.sharing>`). Each rank owns a disjoint
   share: whole files balanced by rows, or every ``world_size``-th row group when there are
   fewer files than ranks.
2. Ordering (:mod:`epoch_order <projects.home.recap.data.epoch_order>`). Files are shuffled
   and interleaved, row groups gathered into windows whose rows are permuted.
3. Reading (:mod:`reading <projects.home.recap.data.reading>`). Windows are decoded through
   the file format's :mod:`reader <projects.home.recap.data.reader>` interface into one stream
   of rows; training streams epoch after epoch, evaluation and inference read one pass.
4. Batching (:mod:`batching <projects.home.recap.data.batching>`). Every batch takes the next
   ``batch_size * batch_multiplier`` rows and is preprocessed into a ``RecapBatch``.

Because the order is a function of the position, the loader's state is just (epoch, rows
consumed in that epoch): resuming skips whole windows without reading them, re-reads the
window holding the position and continues with the next unseen row. A train pipeline that reads
ahead saves the position of the last batch it consumed, not the loader's current one
(``tml/training/data_position.py``).
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import os
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from projects.home.recap.data.batching import BatchAssembler, RawBatch, cut_batches
from projects.home.recap.data.config import RecapDataConfig
from projects.home.recap.data.embedding_ids import SparseFeatures
from projects.home.recap.data.epoch_order import EpochOrder, Window
from projects.home.recap.data.features import FeaturePlan, plan_features
from projects.home.recap.data.files import inputs_root, select_files
from projects.home.recap.data.parquet_format import ParquetFormat
from projects.home.recap.data.pipeline import ordered_map
from projects.home.recap.data.preprocess import Preprocessor, build_preprocessor
from projects.home.recap.data.reader import DataFile, FileFormat
from projects.home.recap.data.reading import Segment, WindowReader, open_files, read_segments
from projects.home.recap.data.sharing import (
    DatasetError,
    RowGroup,
    Share,
    per_rank_batch_size,
    share_row_groups,
)
from projects.home.recap.data.value_checks import ValueChecks
from projects.home.recap.embedding.config import LargeEmbeddingsConfig
from projects.home.recap.inputs import InputSpec, RecapBatch
from tml.storage import is_url

logger = logging.getLogger(__name__)

STATE_VERSION = 1

__all__ = [
    "STATE_VERSION",
    "DatasetError",
    "ReadOptions",
    "RecapDataset",
    "ReshardReport",
    "build_dataset",
]


@dataclasses.dataclass(frozen=True)
class Remainder:
    """The rest of an epoch that a resume on another number of ranks dealt to this rank.

    Attributes:
        epoch: The epoch it finishes; the next one is read from the rank's own share again.
        row_groups: Its row groups; ``RowGroup.file`` indexes every file the loader opened
            (not only its share: the rest of an epoch lies in any file).
    """

    epoch: int
    row_groups: tuple[RowGroup, ...]

    @property
    def rows(self) -> int:
        return sum(unit.rows for unit in self.row_groups)


@dataclasses.dataclass(frozen=True)
class ReshardReport:
    """What a resume on another number of ranks made of the old ranks' positions (for the
    log line).

    Attributes:
        old_world_size: Ranks that wrote the positions.
        epoch: The epoch that continues (the slowest old rank's).
        rows_in_epoch: Rows the old ranks had in that epoch (all of it, unless they were
            themselves finishing a resharded epoch).
        rows_skipped: Rows of the windows they had finished: not read again.
        rows_read_again: Rows they had read of windows they had not finished (read twice).
        rows_remaining: Rows dealt over the new ranks.
        rows_for_this_rank: This rank's part of them.
    """

    old_world_size: int
    epoch: int
    rows_in_epoch: int
    rows_skipped: int
    rows_read_again: int
    rows_remaining: int
    rows_for_this_rank: int


def default_reader_threads(*, remote: bool) -> int:
    """Reader threads when the config leaves ``interleave_num_parallel_calls`` unset: the
    number of CPUs, at most 4, and twice that for files in an object store.

    A local read is decoding (CPU) once the page cache holds the file. A remote one first waits
    for the store to send the column chunks, a wait that uses no CPU here, so twice the readers
    keep the CPUs decoding while others wait (measured: benchmarks/remote_loader.py). Memory
    stays bounded by the threads: each holds one window's fetched chunks and decoded rows.
    """
    local = min(4, os.cpu_count() or 1)
    return 2 * local if remote else local


@dataclasses.dataclass(frozen=True)
class ReadOptions:
    """How a job reads its data; the loader knows these choices, not which job runs it.

    Attributes:
        shuffle: Shuffle files, row groups and examples (seeded); False reads in file order.
        repeat: Stream epoch after epoch (training, bounded by its step count); False reads
            one pass and yields the last, partial batch.
        with_labels: Read the labels and the inputs of the label steps; False (inference)
            gives labels and weights zero columns.
        weigh_by_sampling_rates: Weigh examples by the inverse sampling rates of the data's
            tasks, i.e. back to un-sampled traffic (evaluation). Training leaves them at 1:
            it optimises in the sampled space, which the model's calibration maps back, and
            weighting as well would undo the sampling twice.
        keep_every_row: Leave out ``downsample_negatives`` (which drops rows), so that every
            row of the pass comes out exactly once (inference).
        row_ids: Give every batch the row's place in its file (``ROW_FILE``, an index into
            :attr:`RecapDataset.file_paths`, and ``ROW_IN_FILE``) in ``extra_features``.
        pin_memory: Put every batch in page-locked host memory, in the loader's threads (jobs
            on a GPU): a copy to the GPU from pageable memory blocks the host, so the train
            pipeline's ``non_blocking`` copy would not overlap the step. Needs CUDA.
    """

    shuffle: bool
    repeat: bool
    with_labels: bool
    weigh_by_sampling_rates: bool
    keep_every_row: bool = False
    row_ids: bool = False
    pin_memory: bool = False

    def __post_init__(self) -> None:
        if self.weigh_by_sampling_rates and not self.with_labels:
            raise ValueError("weigh_by_sampling_rates needs with_labels: weights follow labels")

    @classmethod
    def training(cls) -> ReadOptions:
        """Shuffled, repeated, labelled, weights of 1 (times downsample_negatives' scaling)."""
        return cls(shuffle=True, repeat=True, with_labels=True, weigh_by_sampling_rates=False)

    @classmethod
    def evaluation(cls) -> ReadOptions:
        """One shuffled pass, labelled, weighed back to un-sampled traffic."""
        return cls(shuffle=True, repeat=False, with_labels=True, weigh_by_sampling_rates=True)

    @classmethod
    def inference(cls) -> ReadOptions:
        """One pass in file order, every row once with its place in its file, labelled and
        weighed as evaluation does (so predictions can be scored like it)."""
        return cls(
            shuffle=False,
            repeat=False,
            with_labels=True,
            weigh_by_sampling_rates=True,
            keep_every_row=True,
            row_ids=True,
        )


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
        options: ReadOptions,
        tasks: Sequence[str],
        large_embeddings: LargeEmbeddingsConfig | None = None,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        file_format: FileFormat | None = None,
    ):
        """Resolves features and files and opens the files (metadata only).

        The arguments are those of :func:`build_dataset`, plus ``file_format``: how files are
        opened (default: Parquet), the one place another format plugs in.

        Raises:
            UserInputError: (a subclass naming the file, field or column) for a bad config, no
                matching files, an unreadable or non-conforming file.
        """
        super().__init__()
        if world_size < 1 or not 0 <= rank < world_size:
            raise DatasetError(f"rank {rank} is not in a world of {world_size} ranks")
        self.config = config
        self.options = options
        self.tasks = list(tasks)
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.batch_size = per_rank_batch_size(config.global_batch_size, world_size)
        self.plan: FeaturePlan = plan_features(
            config,
            tasks=self.tasks,
            with_labels=options.with_labels,
            large_embeddings=large_embeddings,
        )
        self.preprocessor: Preprocessor = build_preprocessor(
            config.preprocess,
            tasks=self.tasks,
            rates=config.tasks if options.weigh_by_sampling_rates else {},
            lengths=self.plan.lengths,
            mask_mantissa=config.seg_dense_schema.mask_mantissa_features,
            with_labels=options.with_labels,
            keep_every_row=options.keep_every_row,
        )
        paths = select_files(config)
        files, self.skipped_files = open_files(
            file_format or ParquetFormat(),
            paths,
            self.plan.schema,
            self.plan.reads,
            ignore_errors=config.ignore_data_errors,
        )
        files, empty = _without_empty_files(files, rank)
        # Kept to recompute the shares of another number of ranks (a resharded resume).
        self._all_files = tuple(files)
        self._candidates = len(paths) - len(empty)
        self._root = inputs_root(config)
        share = self._share(rank, world_size)
        self._files = share.files
        self.rows_per_epoch = share.rows
        self._fingerprint = share.fingerprint(self._root)
        self._order = EpochOrder(
            share.row_groups,
            shuffle=options.shuffle,
            seed=seed,
            rank=rank,
            world_size=world_size,
            file_batch_size=config.file_batch_size,
            shuffle_buffer=config.examples_shuffle_buffer_size,
        )
        self._checks = ValueChecks(self.plan)
        self._reader = WindowReader(
            share.files,
            ignore_errors=config.ignore_data_errors,
            cache=config.cache,
            row_ids=options.row_ids,
            checks=self._checks,
        )
        self._assembler = BatchAssembler(
            self.plan,
            self.preprocessor,
            tasks=self.tasks,
            with_labels=options.with_labels,
            sparse=SparseFeatures(large_embeddings.tables)
            if large_embeddings is not None and large_embeddings.tables
            else None,
        )
        self._readers = config.interleave_num_parallel_calls or default_reader_threads(
            remote=any(is_url(path) for path in paths)
        )
        self._mappers = config.map_num_parallel_calls or 1
        self._epoch = 0
        self._offset = 0
        self._remainder: Remainder | None = None
        logger.info(
            "rank %d/%d (%s): %d files, %d row groups, %d rows per epoch, batch %d, "
            "%d reader threads",
            rank,
            world_size,
            options,
            len(share.files),
            len(share.row_groups),
            self.rows_per_epoch,
            self.batch_size,
            self._readers,
        )

    @property
    def reader_threads(self) -> int:
        """Threads reading and decoding windows (``interleave_num_parallel_calls`` or
        :func:`default_reader_threads`); at most that many + 1 windows are held ahead."""
        return self._readers

    @property
    def input_spec(self) -> InputSpec:
        """What the model reading these batches is built for (from the plan already made)."""
        return self.plan.spec

    @property
    def file_paths(self) -> list[str]:
        """This rank's files; ``extra_features[ROW_FILE]`` indexes this list. After a resume
        on another number of ranks the other files follow (the rest of that epoch may lie in
        any of them)."""
        files = self._reading_files() if self._remainder is not None else self._files
        return [data_file.path for data_file in files]

    def _reading_files(self) -> tuple[DataFile, ...]:
        """The share's files, then every other one: the share's indices stay valid."""
        share = {id(data_file) for data_file in self._files}
        return self._files + tuple(f for f in self._all_files if id(f) not in share)

    @property
    def skipped_row_groups(self) -> int:
        """Row groups skipped so far because they failed to decode (``ignore_data_errors``)."""
        return self._reader.skipped_row_groups

    @property
    def non_finite_rows(self) -> int:
        """Rows read so far with NaN or inf in ``continuous`` (the model replaces them by 0)."""
        return self._checks.non_finite_rows

    @property
    def batches_per_pass(self) -> int:
        """Batches a whole pass yields when not repeating, the partial last one included
        (fewer when ignore_data_errors skips row groups).

        Ranks' shares can differ, and so can their counts: before an evaluation that runs
        collectives per batch, agree on a count (e.g. the all-reduced minimum).
        """
        rows = self.batch_size * self.preprocessor.batch_multiplier
        return -(-self.rows_per_epoch // rows)

    @property
    def columns_read(self) -> list[str]:
        """The stored columns this loader decodes (of every file, first seen first)."""
        return list(dict.fromkeys(c for data_file in self._files for c in data_file.columns))

    def state_dict(self) -> dict[str, Any]:
        """The position to resume from: right after the last batch handed out."""
        state: dict[str, Any] = {
            "version": STATE_VERSION,
            "epoch": self._epoch,
            "offset": self._offset,
            "seed": self.seed,
            "rank": self.rank,
            "world_size": self.world_size,
            "fingerprint": self._fingerprint,
        }
        if self._remainder is not None:
            # Kept after its epoch too: a later resharded resume must know what this rank was
            # dealt of that epoch (its own share was not it).
            state["remainder"] = {
                "epoch": self._remainder.epoch,
                "row_groups": [
                    [self._relative_name(unit.file), unit.row_group]
                    for unit in self._remainder.row_groups
                ],
            }
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continues from a saved position: the next batch starts at the first unseen row.

        Raises:
            DatasetError: when the state was saved for another share of the data (other files,
                rank, world size or seed), where an exact resume is impossible.
        """
        if state.get("version") != STATE_VERSION:
            raise DatasetError(f"data loader state version {state.get('version')} is not supported")
        ours = self.state_dict()
        for key in ("seed", "rank", "world_size", "fingerprint"):
            if state.get(key) != ours[key]:
                raise DatasetError(
                    f"data loader state was saved with {key}={state.get(key)!r}, this loader has "
                    f"{ours[key]!r}: the files or their sharing among ranks changed, so the "
                    "position cannot be restored"
                )
        self._epoch, self._offset = int(state["epoch"]), int(state["offset"])
        self._remainder = self._remainder_of(state)

    def load_resharded_state_dicts(self, states: Sequence[dict[str, Any]]) -> ReshardReport:
        """Continues the epoch that another number of ranks was reading: what they read is
        skipped, the rest of the epoch is dealt over this job's ranks, then epochs go on as
        usual.

        The granularity is one window (``examples_shuffle_buffer_size`` rows rounded up to
        whole row groups; one row group without example shuffling): a window an old rank had
        partly read is read again whole, so its rows read before the resume are seen twice
        and no row of the epoch is skipped. Old ranks already in a later epoch than the
        slowest one count as having finished that epoch (their rows of the later epoch are
        read again).

        Args:
            states: Every old rank's ``state_dict()``, in rank order.

        Raises:
            DatasetError: the states do not come from one job over these same files and seed.
        """
        old_world_size = len(states)
        for old_rank, state in enumerate(states):
            if state.get("version") != STATE_VERSION:
                raise DatasetError(
                    f"data loader state version {state.get('version')} is not supported"
                )
            if (state.get("rank"), state.get("world_size")) != (old_rank, old_world_size):
                raise DatasetError(
                    f"the data position of rank {old_rank} of {old_world_size} says rank "
                    f"{state.get('rank')} of {state.get('world_size')}"
                )
            if state.get("seed") != self.seed:
                raise DatasetError(
                    f"data loader state was saved with seed={state.get('seed')!r}, this loader "
                    f"has {self.seed!r}: the position cannot be restored"
                )
            if self._share(old_rank, old_world_size).fingerprint(self._root) != state.get(
                "fingerprint"
            ):
                raise DatasetError(
                    "the files changed since the checkpoint: the data position of its "
                    f"{old_world_size} ranks cannot be restored"
                )
        epoch = min(int(state["epoch"]) for state in states)
        remaining: list[RowGroup] = []
        rows_in_epoch = rows_skipped = rows_read_again = 0
        for old_rank, state in enumerate(states):
            for window in self._old_windows(state, epoch, old_rank, old_world_size):
                rows_in_epoch += window.rows
                offset = int(state["offset"]) if int(state["epoch"]) == epoch else window.stop
                if window.stop <= offset:
                    rows_skipped += window.rows
                    continue
                if window.start < offset:
                    rows_read_again += offset - window.start
                remaining.extend(window.row_groups)
        # Canonical order, then dealt round-robin: every new rank computes the same deal.
        remaining.sort(key=lambda unit: (unit.file, unit.row_group))
        self._remainder = Remainder(epoch, tuple(remaining[self.rank :: self.world_size]))
        self._epoch, self._offset = epoch, 0
        if not self._remainder.row_groups:  # nothing left for this rank: on to the next epoch
            self._epoch += 1
        return ReshardReport(
            old_world_size=old_world_size,
            epoch=epoch,
            rows_in_epoch=rows_in_epoch,
            rows_skipped=rows_skipped,
            rows_read_again=rows_read_again,
            rows_remaining=sum(unit.rows for unit in remaining),
            rows_for_this_rank=self._remainder.rows,
        )

    def _share(self, rank: int, world_size: int) -> Share:
        return share_row_groups(
            self._all_files,
            candidates=self._candidates,
            skipped=len(self.skipped_files),
            rank=rank,
            world_size=world_size,
        )

    def _relative_name(self, file: int) -> str:
        """A file's name relative to the inputs' folder (as the fingerprint names it)."""
        prefix = self._root.rstrip("/") + "/"
        path = self._all_files[file].path
        return path[len(prefix) :] if path.startswith(prefix) else path

    def _remainder_of(self, state: dict[str, Any]) -> Remainder | None:
        saved = state.get("remainder")
        if saved is None:
            return None
        index = {self._relative_name(file): file for file in range(len(self._all_files))}
        by_key = {
            (unit.file, unit.row_group): unit
            for file, data_file in enumerate(self._all_files)
            for unit in (RowGroup(file, g, n) for g, n in enumerate(data_file.row_group_rows))
        }
        try:
            units = tuple(by_key[(index[name], int(group))] for name, group in saved["row_groups"])
        except KeyError as missing:
            raise DatasetError(
                f"the data position names {missing} that the inputs no longer hold: the files "
                "changed, so the position cannot be restored"
            ) from None
        return Remainder(int(saved["epoch"]), units)

    def _order_of(self, units: Sequence[RowGroup], rank: int, world_size: int) -> EpochOrder:
        return EpochOrder(
            tuple(units),
            shuffle=self.options.shuffle,
            seed=self.seed,
            rank=rank,
            world_size=world_size,
            file_batch_size=self.config.file_batch_size,
            shuffle_buffer=self.config.examples_shuffle_buffer_size,
        )

    def _old_windows(
        self, state: dict[str, Any], epoch: int, rank: int, world_size: int
    ) -> list[Window]:
        """The windows an old rank read ``epoch`` in, their row groups indexing every file."""
        remainder = self._remainder_of(state)
        if remainder is not None and remainder.epoch == epoch:
            return self._order_of(remainder.row_groups, rank, world_size).windows(epoch)
        share = self._share(rank, world_size)
        # The order is computed on the share's own file indices, exactly as that rank did.
        windows = self._order_of(share.row_groups, rank, world_size).windows(epoch)
        global_index = {id(data_file): i for i, data_file in enumerate(self._all_files)}
        to_global = [global_index[id(data_file)] for data_file in share.files]
        return [
            dataclasses.replace(
                window,
                row_groups=tuple(
                    dataclasses.replace(unit, file=to_global[unit.file])
                    for unit in window.row_groups
                ),
            )
            for window in windows
        ]

    def _rows_in(self, epoch: int) -> int:
        """Rows this rank reads in ``epoch``."""
        if self._remainder is not None and self._remainder.epoch == epoch:
            return self._remainder.rows
        return self.rows_per_epoch

    def _segments(self) -> Iterator[Segment]:
        """The rows from the current position: the rest of a resharded epoch first, if any."""
        remainder = self._remainder
        if remainder is None or self._epoch != remainder.epoch:
            return read_segments(
                self._order,
                self._reader,
                epoch=self._epoch,
                offset=self._offset,
                repeat=self.options.repeat,
                threads=self._readers,
            )
        files = self._reading_files()
        # Read with indices into ``file_paths`` (so that ROW_FILE indexes it); the order is the
        # same whatever the files' indices, only their order counts.
        position = {id(data_file): index for index, data_file in enumerate(files)}
        units = [
            dataclasses.replace(unit, file=position[id(self._all_files[unit.file])])
            for unit in remainder.row_groups
        ]
        reader = WindowReader(
            files,
            ignore_errors=self.config.ignore_data_errors,
            cache=False,
            row_ids=self.options.row_ids,
            checks=self._checks,
        )
        rest = read_segments(
            self._order_of(units, self.rank, self.world_size),
            reader,
            epoch=remainder.epoch,
            offset=self._offset,
            repeat=False,
            threads=self._readers,
        )
        if not self.options.repeat:
            return rest
        following = read_segments(
            self._order,
            self._reader,
            epoch=remainder.epoch + 1,
            offset=0,
            repeat=True,
            threads=self._readers,
        )
        return itertools.chain(rest, following)

    def __iter__(self) -> Iterator[RecapBatch]:
        """Batches from the current position; the position advances as each is handed out.

        Use one iterator at a time: each starts at the shared position and advances it.
        """
        segments = self._segments()
        raw_batches = cut_batches(segments, self.batch_size * self.preprocessor.batch_multiplier)

        # The GPU of the iterating thread (the rank's): a new thread's current device is GPU 0,
        # and pinning there would give every rank of a machine a CUDA context on GPU 0.
        pin_device = torch.cuda.current_device() if self.options.pin_memory else None

        def make(raw: RawBatch) -> tuple[RecapBatch, tuple[int, int]]:
            batch = self._assembler(raw)
            if pin_device is not None:
                with torch.cuda.device(pin_device):
                    batch = batch.pin_memory()
            return batch, (raw.epoch, raw.offset)

        for batch, (epoch, offset) in ordered_map(
            make,
            raw_batches,
            threads=self._mappers,
            lookahead=self._mappers + 1,
            name="recap-batch",
        ):
            if offset >= self._rows_in(epoch):
                epoch, offset = epoch + 1, 0
            self._epoch, self._offset = epoch, offset
            yield batch
        if not self.options.repeat and self._offset != 0:
            # The pass is over (its last row groups unreadable): the next iteration starts the
            # next pass.
            self._epoch, self._offset = self._epoch + 1, 0


def _without_empty_files(files: list[DataFile], rank: int) -> tuple[list[DataFile], list[str]]:
    """The files that hold rows, and the paths of those that hold none.

    A file with no rows (an hour with no traffic, a writer that stopped before its first row)
    adds nothing to an epoch: it is left out of the sharing on every rank alike, with a
    warning naming it. Only a dataset whose every file is empty is an error.

    Raises:
        DatasetError: naming the files, when every one is empty.
    """
    empty = [data_file.path for data_file in files if data_file.num_rows == 0]
    if not empty:
        return files, []
    shown = ", ".join(empty[:5]) + (f" and {len(empty) - 5} more" if len(empty) > 5 else "")
    kept = [data_file for data_file in files if data_file.num_rows > 0]
    if not kept:
        error = DatasetError(f"every file read has 0 rows: {shown}")
        error.same_on_every_rank = True
        raise error
    if rank == 0:  # every rank opens every file: one warning is enough
        logger.warning("skipping %d files with 0 rows: %s", len(empty), shown)
    return kept, empty


def build_dataset(
    data_config: RecapDataConfig,
    *,
    options: ReadOptions,
    tasks: Sequence[str],
    large_embeddings: LargeEmbeddingsConfig | None = None,
    rank: int = 0,
    world_size: int = 1,
    seed: int = 0,
) -> RecapDataset:
    """The loader of one rank: iterate it for ``RecapBatch``es.

    Args:
        data_config: The dataset (train_data or one validation partition).
        options: How the job reads: ``ReadOptions.training()`` repeats forever with weights of
            1 (the model learns the sampled rates and its calibration maps them back);
            ``.evaluation()`` reads one pass, weighing examples by the inverse sampling rates
            of the partition's tasks; ``.inference()`` reads one pass in file order, weighed as
            evaluation, every row once with its place in its file. A single pass keeps its
            last, partial batch.
        tasks: The model's task names in model order; label and weight columns follow it.
        large_embeddings: The model's large tables: each reads the renamed feature of its name
            into ``RecapBatch.sparse_features``.
        rank: This process's rank.
        world_size: Number of ranks; each reads a disjoint share.
        seed: Seeds file and example shuffling (the same on every rank).
    """
    return RecapDataset(
        data_config,
        options=options,
        tasks=tasks,
        large_embeddings=large_embeddings,
        rank=rank,
        world_size=world_size,
        seed=seed,
    )
