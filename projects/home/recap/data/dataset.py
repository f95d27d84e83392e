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
import logging
import os
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from projects.home.recap.data.batching import BatchAssembler, RawBatch, cut_batches
from projects.home.recap.data.config import RecapDataConfig
from projects.home.recap.data.embedding_ids import SparseFeatures
from projects.home.recap.data.epoch_order import EpochOrder
from projects.home.recap.data.features import FeaturePlan, plan_features
from projects.home.recap.data.files import inputs_root, select_files
from projects.home.recap.data.parquet_format import ParquetFormat
from projects.home.recap.data.pipeline import ordered_map
from projects.home.recap.data.preprocess import Preprocessor, build_preprocessor
from projects.home.recap.data.reader import DataFile, FileFormat
from projects.home.recap.data.reading import WindowReader, open_files, read_segments
from projects.home.recap.data.sharing import DatasetError, per_rank_batch_size, share_row_groups
from projects.home.recap.data.value_checks import ValueChecks
from projects.home.recap.embedding.config import LargeEmbeddingsConfig
from projects.home.recap.inputs import InputSpec, RecapBatch

logger = logging.getLogger(__name__)

STATE_VERSION = 1

__all__ = ["STATE_VERSION", "DatasetError", "ReadOptions", "RecapDataset", "build_dataset"]


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
        share = share_row_groups(
            files,
            candidates=len(paths) - len(empty),
            skipped=len(self.skipped_files),
            rank=rank,
            world_size=world_size,
        )
        self._files = share.files
        self.rows_per_epoch = share.rows
        self._fingerprint = share.fingerprint(inputs_root(config))
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
        self._readers = config.interleave_num_parallel_calls or min(4, os.cpu_count() or 1)
        self._mappers = config.map_num_parallel_calls or 1
        self._epoch = 0
        self._offset = 0
        logger.info(
            "rank %d/%d (%s): %d files, %d row groups, %d rows per epoch, batch %d",
            rank,
            world_size,
            options,
            len(share.files),
            len(share.row_groups),
            self.rows_per_epoch,
            self.batch_size,
        )

    @property
    def input_spec(self) -> InputSpec:
        """What the model reading these batches is built for (from the plan already made)."""
        return self.plan.spec

    @property
    def file_paths(self) -> list[str]:
        """This rank's files; ``extra_features[ROW_FILE]`` indexes this list."""
        return [data_file.path for data_file in self._files]

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
        return {
            "version": STATE_VERSION,
            "epoch": self._epoch,
            "offset": self._offset,
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
        ours = self.state_dict()
        for key in ("seed", "rank", "world_size", "fingerprint"):
            if state.get(key) != ours[key]:
                raise DatasetError(
                    f"data loader state was saved with {key}={state.get(key)!r}, this loader has "
                    f"{ours[key]!r}: the files or their sharing among ranks changed, so the "
                    "position cannot be restored"
                )
        self._epoch, self._offset = int(state["epoch"]), int(state["offset"])

    def __iter__(self) -> Iterator[RecapBatch]:
        """Batches from the current position; the position advances as each is handed out.

        Use one iterator at a time: each starts at the shared position and advances it.
        """
        segments = read_segments(
            self._order,
            self._reader,
            epoch=self._epoch,
            offset=self._offset,
            repeat=self.options.repeat,
            threads=self._readers,
        )
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
            if offset >= self.rows_per_epoch:
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
