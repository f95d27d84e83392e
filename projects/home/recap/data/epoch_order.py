"""The order of one rank's rows in an epoch, as a deterministic function of the position.

1. File shuffling. The share's files are shuffled; groups of ``file_batch_size`` files are
   read together, their row groups shuffled among each other (interleaved).
2. Example shuffling. Consecutive row groups are gathered into windows of at least
   ``examples_shuffle_buffer_size`` rows, and each window's rows are permuted.

Everything is seeded by (seed, epoch, rank, world size) and, for a window's permutation, its
index, so the order never has to be stored: a resumed loader recomputes the windows and skips
those before its position without reading them. Without shuffling (inference) row groups and
rows stay in file order.
"""

from __future__ import annotations

import collections
import dataclasses

import numpy as np

from projects.home.recap.data.sharing import RowGroup


@dataclasses.dataclass(frozen=True)
class Window:
    """Row groups whose rows are shuffled together; ``start`` is its first row in the epoch."""

    epoch: int
    index: int
    start: int
    row_groups: tuple[RowGroup, ...]

    @property
    def rows(self) -> int:
        return sum(row_group.rows for row_group in self.row_groups)

    @property
    def stop(self) -> int:
        return self.start + self.rows


@dataclasses.dataclass(frozen=True)
class EpochOrder:
    """Orders a rank's row groups, and the rows inside each window, epoch by epoch.

    Attributes:
        row_groups: The rank's share, in canonical order.
        shuffle: False keeps files, row groups and rows in order.
        seed: Seeds all shuffling (the same on every rank).
        rank: This rank (each rank shuffles its share differently).
        world_size: Number of ranks.
        file_batch_size: Files whose row groups are interleaved.
        shuffle_buffer: Least rows of a window (0: no example shuffling).
    """

    row_groups: tuple[RowGroup, ...]
    shuffle: bool
    seed: int
    rank: int
    world_size: int
    file_batch_size: int
    shuffle_buffer: int

    def windows(self, epoch: int) -> list[Window]:
        """The epoch's windows, in reading order."""
        units = list(self.row_groups)
        if self.shuffle:
            rng = np.random.default_rng([self.seed, epoch, self.rank, self.world_size])
            by_file: dict[int, list[RowGroup]] = collections.defaultdict(list)
            for unit in units:
                by_file[unit.file].append(unit)
            files = list(by_file)
            rng.shuffle(files)
            units = []
            group_size = self.file_batch_size
            for start in range(0, len(files), group_size):
                group = [
                    unit for file in files[start : start + group_size] for unit in by_file[file]
                ]
                rng.shuffle(group)
                units.extend(group)
        buffer = self.shuffle_buffer if self.shuffle else 0
        windows: list[Window] = []
        current: list[RowGroup] = []
        start = 0
        for unit in units:
            current.append(unit)
            if sum(item.rows for item in current) >= buffer:
                windows.append(Window(epoch, len(windows), start, tuple(current)))
                start = windows[-1].stop
                current = []
        if current:
            windows.append(Window(epoch, len(windows), start, tuple(current)))
        return windows

    def permutation(self, window: Window) -> np.ndarray | None:
        """Where each of the window's rows lands (``destination[i]`` for its i-th row, counting
        its row groups in order); None when rows keep their order."""
        if not (self.shuffle and self.shuffle_buffer > 0):
            return None
        rng = np.random.default_rng(
            [self.seed, window.epoch, self.rank, self.world_size, window.index]
        )
        return rng.permutation(window.rows)
