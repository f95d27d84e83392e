"""Batching: cutting the stream of rows into batches and turning each into a ``RecapBatch``.

Every batch takes the next ``batch_size * batch_multiplier`` rows of the stream, across window
and epoch boundaries, so no example is ever dropped; a one-pass stream ends with a partial
batch. Each batch remembers the position after it, which is what the loader's state is.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import torch

from projects.home.recap.data.embedding_ids import SparseFeatures
from projects.home.recap.data.features import DENSE_INPUTS, FeaturePlan
from projects.home.recap.data.preprocess import Preprocessor, Rows
from projects.home.recap.data.reader import Arrays
from projects.home.recap.data.reading import ROW_FILE, ROW_IN_FILE, Segment
from projects.home.recap.inputs import DenseInputs, RecapBatch


@dataclasses.dataclass(frozen=True)
class RawBatch:
    """The decoded rows of one batch, before preprocessing.

    Attributes:
        arrays: Schema feature -> ``[rows, width]`` values.
        rows: Rows in the batch.
        epoch: Epoch of the position after this batch.
        offset: Rows of that epoch consumed after this batch.
    """

    arrays: Arrays
    rows: int
    epoch: int
    offset: int


def cut_batches(segments: Iterable[Segment], rows_per_batch: int) -> Iterator[RawBatch]:
    """Batches of ``rows_per_batch`` consecutive rows (the last one partial when the stream
    ends), each with the position after it."""
    pieces: list[Arrays] = []
    have = 0
    position = (0, 0)
    for segment in segments:
        taken = 0
        while taken < segment.rows:
            count = min(rows_per_batch - have, segment.rows - taken)
            pieces.append({k: v[taken : taken + count] for k, v in segment.arrays.items()})
            have += count
            taken += count
            done = taken == segment.rows
            position = (segment.epoch, segment.stop if done else segment.start + taken)
            if have == rows_per_batch:
                yield _join(pieces, have, position)
                pieces, have = [], 0
        if segment.rows == 0:
            position = (segment.epoch, segment.stop)
    if have:
        yield _join(pieces, have, position)


def _join(pieces: list[Arrays], rows: int, position: tuple[int, int]) -> RawBatch:
    if len(pieces) == 1:
        arrays = pieces[0]
    else:
        arrays = {name: np.concatenate([piece[name] for piece in pieces]) for name in pieces[0]}
    return RawBatch(arrays, rows, *position)


class BatchAssembler:
    """Turns decoded rows into the batch the model consumes: names the features as the plan
    says, runs the preprocess steps, and places each result in ``RecapBatch``.

    Stateless once built, so several threads may assemble batches at once.
    """

    def __init__(
        self,
        plan: FeaturePlan,
        preprocessor: Preprocessor,
        *,
        tasks: Sequence[str],
        with_labels: bool,
        sparse: SparseFeatures | None,
    ):
        """
        Args:
            plan: What is read and under which names.
            preprocessor: The steps, in order.
            tasks: The model's tasks in order: the columns of labels and weights.
            with_labels: False at inference: labels and weights get zero columns.
            sparse: Turns the large tables' features into ids (None: no large tables).
        """
        self.plan = plan
        self.preprocessor = preprocessor
        self.tasks = list(tasks)
        self.with_labels = with_labels
        self.sparse = sparse

    def __call__(self, raw: RawBatch) -> RecapBatch:
        features: dict[str, torch.Tensor] = {}
        for schema_name, names in self.plan.names.items():
            tensor = torch.from_numpy(raw.arrays[schema_name])
            for name in names:
                features[name] = tensor
        # Row ids travel as features, so that a step that drops or reorders rows moves them too.
        for name in (ROW_FILE, ROW_IN_FILE):
            if name in raw.arrays:
                features[name] = torch.from_numpy(raw.arrays[name])
        labels = {
            label: torch.from_numpy(raw.arrays[label][:, 0]).to(torch.float32)
            for label in self.plan.labels
        }
        return self._assemble(self.preprocessor(Rows(features=features, labels=labels)))

    def _assemble(self, rows: Rows) -> RecapBatch:
        count = rows.num_rows
        features = rows.features
        inputs: dict[str, torch.Tensor | None] = {}
        for name, dense in DENSE_INPUTS.items():
            if name in features:
                inputs[dense.field] = features[name]
            else:
                # A required input the config does not rename still reaches the model, empty.
                inputs[dense.field] = (
                    None if dense.optional else torch.zeros(count, 0, dtype=dense.dtype)
                )
        if self.with_labels:
            labels = torch.stack([rows.labels[task] for task in self.tasks], dim=1)
            weights = rows.weights if rows.weights is not None else torch.ones(count, 0)
        else:
            labels = torch.zeros(count, 0)
            weights = torch.zeros(count, 0)
        return RecapBatch(
            inputs=DenseInputs(**inputs),
            labels=labels.reshape(count, len(self.tasks) if self.with_labels else 0),
            weights=weights,
            sparse_features=self.sparse(features) if self.sparse is not None else None,
            extra_features={
                name: features[name]
                for name in (*self.plan.extras, ROW_FILE, ROW_IN_FILE)
                if name in features
            },
        )
