"""Remembers the data position after each batch, so a checkpoint resumes at the next unseen one.

Train pipelines read ahead: when step ``k`` finishes, batches ``k+1`` and ``k+2`` may already be
in flight. Saving the loader's *current* position would skip them on resume, so the position is
recorded as each batch leaves the loader and looked up by the number of batches consumed.
"""

from __future__ import annotations

import collections
from collections.abc import Iterator
from typing import Any, Generic, Protocol, TypeVar

Batch = TypeVar("Batch")


class StatefulBatches(Protocol[Batch]):
    """An iterable of batches whose ``state_dict()`` resumes right after the last one yielded."""

    def __iter__(self) -> Iterator[Batch]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class PositionTrackingIterator(Generic[Batch]):
    """Iterates a stateful dataset and keeps the position after each of the recent batches.

    Args:
        batches: The dataset.
        read_ahead: How many batches past the consumed one a pipeline may hold.
    """

    def __init__(self, batches: StatefulBatches[Batch], read_ahead: int = 4) -> None:
        self._batches = batches
        self._initial = batches.state_dict()
        self._iterator = iter(batches)
        self._positions: collections.deque[tuple[int, dict[str, Any]]] = collections.deque(
            maxlen=read_ahead + 2
        )
        self.yielded = 0

    def __iter__(self) -> PositionTrackingIterator[Batch]:
        return self

    def __next__(self) -> Batch:
        batch = next(self._iterator)
        self.yielded += 1
        self._positions.append((self.yielded, self._batches.state_dict()))
        return batch

    def position_after(self, consumed: int) -> dict[str, Any]:
        """The dataset state that resumes after ``consumed`` batches of this iterator."""
        if consumed == 0:
            return self._initial
        for count, state in self._positions:
            if count == consumed:
                return state
        raise LookupError(
            f"no position recorded after batch {consumed}; {self.yielded} yielded, positions "
            f"kept for {[count for count, _ in self._positions]}"
        )
