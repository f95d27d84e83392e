"""What a network is fed: its input width and where the embedding vectors lie in it."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class InputLayout:
    """The columns of a network's input.

    Most architectures only need ``width``; DLRM also needs to know which column ranges are
    learned embedding vectors (to interact them) and which are dense features (for its bottom MLP).

    Attributes:
        width: Number of input columns.
        embedding_segments: ``(start, width)`` of each embedding vector, in input order.
    """

    width: int
    embedding_segments: tuple[tuple[int, int], ...] = ()

    def dense_segments(self) -> tuple[tuple[int, int], ...]:
        """``(start, width)`` of each run of columns that is not an embedding vector."""
        segments = []
        start = 0
        for begin, width in sorted(self.embedding_segments):
            if begin > start:
                segments.append((start, begin - start))
            start = begin + width
        if start < self.width:
            segments.append((start, self.width - start))
        return tuple(segments)

    def widened(self, extra: int) -> InputLayout:
        """This layout with ``extra`` dense columns appended (share_partial's backbone output)."""
        return InputLayout(self.width + extra, self.embedding_segments)
