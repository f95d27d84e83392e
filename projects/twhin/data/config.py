"""Where a TwHIN split's edges come from and how they are batched, in the original's format."""

from __future__ import annotations

import pydantic

from tml.core.config import BaseConfig, Field


class TwhinDataConfig(BaseConfig):
    """One split of the edges: a window of rows of the sorted files, and its batches."""

    data_root: str = Field(
        description="Glob of the Parquet edge files (columns lhs, rel, rhs); a local path or an "
        "object-store URL."
    )
    per_replica_batch_size: pydantic.PositiveInt = Field(
        description="Positive edges per rank per step (the last batch of an epoch may be smaller)."
    )
    global_negatives: pydantic.NonNegativeInt = Field(
        description="Negatives per edge and side drawn uniformly from the whole table of that "
        "side (the edge with its rhs, then its lhs, replaced by a random entity)."
    )
    in_batch_negatives: pydantic.NonNegativeInt = Field(
        description="Negatives per edge and side taken from other edges of the same relation in "
        "the rank's batch."
    )
    limit: pydantic.PositiveInt = Field(
        description="Edges in this split: rows offset .. offset + limit of the files taken in "
        "sorted order (fewer when the files end first)."
    )
    offset: pydantic.NonNegativeInt | None = Field(
        None, description="First row of the split in the sorted files (null: 0)."
    )
    seed: int = Field(
        0, description="Seed of the split's shuffling and negative sampling (with the epoch)."
    )

    @property
    def first_row(self) -> int:
        """The row the split starts at."""
        return self.offset or 0
