"""What a file format must provide to the loader.

The loader shares files and row groups among ranks, orders an epoch and batches rows; it never
looks inside a file. A format plugs in by opening a file for a list of :class:`FeatureRead`
(the schema features wanted, with the columns kept) and then decoding one row group at a time
into numpy arrays, one ``[rows, width]`` array per feature. Parquet
(:mod:`projects.home.recap.data.parquet_format`) is the one implementation today; another
format or a remote store implements these two protocols and is passed to the dataset.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Protocol

import numpy as np

from projects.home.recap.data.schema import FeatureSpec, SegDenseSchema
from tml.core.errors import UserInputError

# Feature name -> ``[rows, width]`` values, in the schema dtype of the feature.
Arrays = dict[str, np.ndarray]


class DataFileError(UserInputError):
    """A data file cannot be read or does not follow the schema; the message names it.

    Every format raises this type, so that ``ignore_data_errors`` can skip a bad file or row
    group whatever the format, while other errors (bugs) still stop the job.
    """


@dataclasses.dataclass(frozen=True)
class FeatureRead:
    """Which values of a feature to read: ``indices`` (sorted, unique) or all when None.

    Reading only the kept columns (truncate_and_slice pushed down into the reader) lets a
    format that stores a feature in column chunks skip the chunks nobody keeps.
    """

    spec: FeatureSpec
    indices: np.ndarray | None = None

    @property
    def width(self) -> int:
        return self.spec.length if self.indices is None else len(self.indices)


class DataFile(Protocol):
    """One opened data file, checked against the reads it was opened for.

    Implementations must be safe to use from several reader threads at once, and opening must
    be cheap (metadata only): every rank opens every candidate file to share them out.
    """

    @property
    def path(self) -> str:
        """Where the file is (error messages and the loader's fingerprint name it)."""
        ...

    @property
    def row_group_rows(self) -> Sequence[int]:
        """Rows of each row group, in file order: the unit of sharing and reading."""
        ...

    @property
    def num_rows(self) -> int:
        """Rows in the whole file (balances files among ranks)."""
        ...

    @property
    def columns(self) -> list[str]:
        """The stored columns a read touches (reported to show what pushdown saves)."""
        ...

    def allocate(self, rows: int) -> Arrays:
        """Uninitialised output arrays for ``rows`` rows of every feature read."""
        ...

    def read(self, row_group: int) -> Arrays:
        """Decodes one row group into new arrays.

        Raises:
            DataFileError: naming the file (and column) when the data is unreadable or does
                not follow the schema.
        """
        ...

    def read_into(self, row_group: int, out: Arrays, destination: slice | np.ndarray) -> None:
        """Decodes one row group into rows ``destination`` of ``out`` (from :meth:`allocate`).

        Writing straight into the caller's (e.g. shuffled) positions saves a copy of every
        value.

        Raises:
            DataFileError: as :meth:`read`.
        """
        ...


class FileFormat(Protocol):
    """Opens files of one format for the loader."""

    def open(self, path: str, schema: SegDenseSchema, reads: Sequence[FeatureRead]) -> DataFile:
        """Opens ``path`` and checks that it holds every feature in ``reads``.

        Raises:
            DataFileError: naming the file (and the column) when it is unreadable, lacks a
                column, or a column has the wrong type or length.
        """
        ...
