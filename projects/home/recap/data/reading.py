"""Reading a rank's rows: opening files, decoding windows, and the stream of rows from a position.

Files are opened through the :mod:`reader <projects.home.recap.data.reader>` interface, so
nothing here knows the file format. Windows are decoded by a pool of threads (decoding releases
the GIL) a bounded number ahead of the consumer, so memory does not grow with the dataset
(unless ``cache`` keeps every decoded row group). With ``ignore_data_errors`` an unreadable file
or row group is logged, counted and skipped instead of stopping the job.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Iterator, Sequence

import numpy as np

from projects.home.recap.data.epoch_order import EpochOrder, Window
from projects.home.recap.data.pipeline import ordered_map
from projects.home.recap.data.reader import Arrays, DataFile, DataFileError, FeatureRead, FileFormat
from projects.home.recap.data.schema import SegDenseSchema
from projects.home.recap.data.sharing import DatasetError, RowGroup
from projects.home.recap.data.value_checks import PlacedRowGroup, ValueChecks
from tml.storage import is_url

logger = logging.getLogger(__name__)

# Files opened at once when some are in an object store: opening one is a few small requests
# (its size, its footer) that spend their time waiting on the store, so a day of thousands of
# files opens in seconds instead of minutes. Local files open one after the other (the page
# cache answers at once).
REMOTE_OPEN_THREADS = 16

# Arrays a window carries besides the features when asked for row ids: the index of the row's
# file in the share, and the row's index within that file.
ROW_FILE = "row_id/file"
ROW_IN_FILE = "row_id/row"


def open_files(
    file_format: FileFormat,
    paths: Sequence[str],
    schema: SegDenseSchema,
    reads: Sequence[FeatureRead],
    *,
    ignore_errors: bool,
) -> tuple[list[DataFile], list[str]]:
    """Opens every path for ``reads`` (remote ones ``REMOTE_OPEN_THREADS`` at a time): the
    files that opened, in the order of ``paths``, and the paths skipped.

    Raises:
        DataFileError: for the first file that cannot be opened, unless ``ignore_errors``.
    """

    def attempt(path: str) -> DataFile | DataFileError:
        try:
            return file_format.open(path, schema, reads)
        except DataFileError as error:
            return error

    threads = REMOTE_OPEN_THREADS if any(is_url(path) for path in paths) else 0
    opened: list[DataFile] = []
    skipped: list[str] = []
    results = ordered_map(attempt, paths, threads=threads, lookahead=2 * threads, name="recap-open")
    for path, result in zip(paths, results, strict=True):
        if not isinstance(result, DataFileError):
            opened.append(result)
            continue
        if not ignore_errors:
            raise result
        skipped.append(path)
        logger.warning("ignore_data_errors: skipping %s (%d skipped)", result, len(skipped))
    return opened, skipped


class WindowReader:
    """Decodes windows of a share's row groups, each row straight into its shuffled place.

    Safe to call from several threads at once (the loader's reader pool does).
    """

    def __init__(
        self,
        files: Sequence[DataFile],
        *,
        ignore_errors: bool,
        cache: bool,
        row_ids: bool = False,
        checks: ValueChecks | None = None,
    ):
        """
        Args:
            files: The share's files (``RowGroup.file`` indexes them).
            ignore_errors: Skip (log and count) a row group that fails to decode or to pass
                the checks.
            cache: Keep every decoded row group in memory for later epochs.
            row_ids: Add ``ROW_FILE`` and ``ROW_IN_FILE`` (int64, one value per row).
            checks: What the values must satisfy (labels 0 or 1, ...), run on every window.
        """
        self._files = list(files)
        # First row of each row group within its file.
        self._first_rows: list[np.ndarray] | None = (
            [np.cumsum([0, *data_file.row_group_rows[:-1]]) for data_file in self._files]
            if row_ids
            else None
        )
        self._ignore_errors = ignore_errors
        self._checks = checks
        self._cache: dict[tuple[int, int], Arrays] | None = {} if cache else None
        self._skip_lock = threading.Lock()
        self.skipped_row_groups = 0

    @property
    def cached_row_groups(self) -> int:
        """Row groups held decoded in memory (0 without ``cache``)."""
        return len(self._cache) if self._cache is not None else 0

    def _read_into(self, unit: RowGroup, out: Arrays, destination: slice | np.ndarray) -> bool:
        """Decodes a row group into ``out[destination]``; False when it was skipped."""
        data_file = self._files[unit.file]
        key = (unit.file, unit.row_group)
        try:
            if self._cache is None:
                data_file.read_into(unit.row_group, out, destination)
                return True
            if key not in self._cache:
                self._cache[key] = data_file.read(unit.row_group)
        except DataFileError as error:
            self._skip(error)
            return False
        for name, values in self._cache[key].items():
            out[name][destination] = values
        return True

    def _skip(self, error: DataFileError) -> None:
        if not self._ignore_errors:
            raise error
        with self._skip_lock:  # reader threads count concurrently
            self.skipped_row_groups += 1
            skipped = self.skipped_row_groups
        logger.warning("ignore_data_errors: skipping %s (%d row groups skipped)", error, skipped)

    def read(self, window: Window, permutation: np.ndarray | None) -> Arrays:
        """The window's rows, row ``i`` at ``permutation[i]`` (in order when None); rows of a
        skipped row group are left out."""
        rows = window.rows
        out = self._files[window.row_groups[0].file].allocate(rows)
        if self._first_rows is not None:
            out[ROW_FILE] = np.empty(rows, dtype=np.int64)
            out[ROW_IN_FILE] = np.empty(rows, dtype=np.int64)
        missing = None
        placed: list[PlacedRowGroup] = []
        start = 0
        for unit in window.row_groups:
            stop = start + unit.rows
            where = permutation[start:stop] if permutation is not None else slice(start, stop)
            if not self._read_into(unit, out, where):
                missing = np.zeros(rows, dtype=bool) if missing is None else missing
                missing[where] = True
            else:
                placed.append(PlacedRowGroup(self._files[unit.file], unit.row_group, where))
                if self._first_rows is not None:
                    out[ROW_FILE][where] = unit.file
                    first = self._first_rows[unit.file][unit.row_group]
                    out[ROW_IN_FILE][where] = np.arange(first, first + unit.rows)
            start = stop
        if self._checks is not None and placed:
            problems = self._checks(out, placed, None if missing is None else ~missing)
            for index, message in problems.items():
                self._skip(DataFileError(message))
                missing = np.zeros(rows, dtype=bool) if missing is None else missing
                missing[placed[index].rows] = True
        if missing is not None:
            out = {name: values[~missing] for name, values in out.items()}
        return out


@dataclasses.dataclass
class Segment:
    """Consecutive rows of the stream: ``arrays`` holds positions ``start`` onwards of
    ``epoch``; once all of it is consumed the position is ``stop``."""

    arrays: Arrays
    epoch: int
    start: int
    stop: int

    @property
    def rows(self) -> int:
        return len(next(iter(self.arrays.values()))) if self.arrays else 0


def read_segments(
    order: EpochOrder,
    reader: WindowReader,
    *,
    epoch: int,
    offset: int,
    repeat: bool,
    threads: int,
) -> Iterator[Segment]:
    """The stream of rows from a position on: one pass, or epoch after epoch when ``repeat``.

    Windows wholly before ``offset`` are not read; the one holding it is read and cut.

    Raises:
        DatasetError: when repeating and a whole epoch yields no readable row (every row group
            skipped), which would otherwise loop forever.
    """
    while True:
        windows = [window for window in order.windows(epoch) if window.stop > offset]

        def read(window: Window) -> tuple[Window, Arrays]:
            return window, reader.read(window, order.permutation(window))

        delivered = 0
        for window, arrays in ordered_map(
            read, windows, threads=threads, lookahead=threads + 1, name="recap-read"
        ):
            skip = max(offset - window.start, 0)
            arrays = {name: value[skip:] for name, value in arrays.items()}
            segment = Segment(arrays, epoch, window.start + skip, window.stop)
            delivered += segment.rows
            yield segment
        if not repeat:
            return
        if delivered == 0 and offset == 0:
            raise DatasetError(
                f"rank {order.rank}: a whole epoch produced no readable row "
                f"({reader.skipped_row_groups} row groups skipped)"
            )
        epoch, offset = epoch + 1, 0
