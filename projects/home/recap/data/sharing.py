"""Sharing a dataset among ranks: which files and row groups each rank reads.

Every rank opens the same candidate files and computes the same assignment from their sizes, so
the ranks agree on disjoint shares without talking to each other. With at least as many files
as ranks, whole files are shared out, balanced by rows (a rank with a smaller share would repeat
its examples more often in training); with fewer, row groups are dealt round-robin.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence

from projects.home.recap.data.reader import DataFile
from tml.core.errors import UserInputError


class DatasetError(UserInputError):
    """The data cannot be shared or resumed as asked; the message says why."""


@dataclasses.dataclass(frozen=True)
class RowGroup:
    """One row group of one of a share's files: the unit of sharing, ordering and reading.

    Attributes:
        file: Index of the file in :attr:`Share.files`.
        row_group: Index of the row group in that file.
        rows: Its rows.
    """

    file: int
    row_group: int
    rows: int


@dataclasses.dataclass(frozen=True)
class Share:
    """One rank's files and row groups, in canonical (sorted) order."""

    files: tuple[DataFile, ...]
    row_groups: tuple[RowGroup, ...]

    @property
    def rows(self) -> int:
        """Rows in one pass over the share."""
        return sum(row_group.rows for row_group in self.row_groups)

    def fingerprint(self, root: str) -> str:
        """Names exactly these row groups: a saved position resumes only the share it was saved
        in (other files, or another split among ranks, would make it point elsewhere).

        Files are named relative to ``root`` (the folder of the inputs), so the same files
        moved to another folder or bucket prefix still resume exactly.
        """
        prefix = root.rstrip("/") + "/"
        digest = hashlib.sha256()
        for unit in self.row_groups:
            path = self.files[unit.file].path
            name = path[len(prefix) :] if path.startswith(prefix) else path
            digest.update(f"{name}:{unit.row_group}:{unit.rows};".encode())
        return digest.hexdigest()[:16]


def per_rank_batch_size(global_batch_size: int, world_size: int) -> int:
    """Examples each rank reads per step: the global batch shared evenly among the ranks.

    Raises:
        DatasetError: the global batch does not divide by the number of ranks.
    """
    if global_batch_size % world_size:
        raise DatasetError(
            f"global_batch_size: {global_batch_size} does not divide by the {world_size} ranks"
        )
    return global_batch_size // world_size


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


def share_row_groups(
    files: Sequence[DataFile],
    *,
    candidates: int,
    skipped: int,
    rank: int,
    world_size: int,
) -> Share:
    """This rank's share of the opened files.

    Args:
        files: The files that opened, sorted by path, the same list on every rank.
        candidates: How many files were selected, unreadable ones included: whether whole files
            are shared out depends on it, so that a file skipped on one rank cannot change the
            way the others share.
        skipped: How many of them could not be opened (for the error message).
        rank: This rank.
        world_size: Number of ranks.

    Raises:
        DatasetError: when the row groups cannot be spread over the ranks, or this rank would
            get no readable row.
    """
    by_file = candidates >= world_size
    if by_file:
        owners = balanced_owners([data_file.num_rows for data_file in files], world_size)
        files = [data_file for data_file, owner in zip(files, owners, strict=True) if owner == rank]
    row_groups = [
        RowGroup(index, row_group, rows)
        for index, data_file in enumerate(files)
        for row_group, rows in enumerate(data_file.row_group_rows)
        if rows > 0
    ]
    if not by_file:
        if len(row_groups) < world_size:
            raise DatasetError(
                f"{candidates} files with {len(row_groups)} row groups in all cannot be shared "
                f"among {world_size} ranks; write smaller row groups or more files"
            )
        row_groups = row_groups[rank::world_size]
    if not row_groups:
        raise DatasetError(
            f"rank {rank}: none of the {candidates} files gives it a readable row "
            f"({skipped} skipped); write more files than ranks"
        )
    return Share(tuple(files), tuple(row_groups))
