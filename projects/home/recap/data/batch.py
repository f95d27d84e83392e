"""The batch the loader yields and the model consumes."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor
from torchrec.streamable import Pipelineable

from projects.home.recap.data.config import TWHIN_EMBEDDINGS

__all__ = ["TWHIN_EMBEDDINGS", "FeatureWidths", "RecapBatch"]


@dataclasses.dataclass(frozen=True)
class FeatureWidths:
    """Widths of the model's inputs after preprocessing, which the model is built for.

    Attributes:
        continuous: Columns of ``continuous_features``.
        binary: Columns of ``binary_features``.
        discrete: Columns of ``discrete_features``.
        embeddings: Width of each TwHIN embedding present, by renamed name (user_embedding,
            user_eng_embedding, author_embedding).
    """

    continuous: int
    binary: int
    discrete: int
    embeddings: dict[str, int]


@dataclasses.dataclass
class RecapBatch(Pipelineable):
    """One batch of examples, per rank.

    Dense features are ``[batch, width]``. ``labels`` and ``weights`` are ``[batch, tasks]`` with
    the columns in the model's task order (labels are matched to towers by name); at inference
    they have zero columns. Optional features the config does not ask for are ``None``.

    Types as the loader yields them (``preprocess.downcast`` may narrow any feature):
    continuous and TwHIN embeddings float32, binary and discrete int64 (a dense feature the
    config does not rename has zero columns), labels and weights float32, extra features in
    their schema type as ``[batch, length]``, sparse ids int64 with int32 lengths.
    """

    continuous_features: torch.Tensor
    binary_features: torch.Tensor
    discrete_features: torch.Tensor
    labels: torch.Tensor
    weights: torch.Tensor
    user_embedding: torch.Tensor | None = None
    user_eng_embedding: torch.Tensor | None = None
    author_embedding: torch.Tensor | None = None
    # Ids for the large (torchrec) embedding tables, keyed by table name.
    sparse_features: KeyedJaggedTensor | None = None
    # Everything else the config reads, by name: meta ids (meta__user_id, ...), features listed in
    # seg_dense_schema.features, features made by extract_features.
    extra_features: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)

    @property
    def batch_size(self) -> int:
        return self.continuous_features.shape[0]

    def map(self, function: Callable[[Any], Any]) -> RecapBatch:
        """A new batch with ``function`` applied to every tensor and to the KeyedJaggedTensor."""
        changes: dict[str, Any] = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, dict):
                changes[field.name] = {key: function(item) for key, item in value.items()}
            elif value is not None:
                changes[field.name] = function(value)
        return dataclasses.replace(self, **changes)

    def to(self, device: torch.device, non_blocking: bool = False) -> RecapBatch:
        return self.map(lambda value: value.to(device=device, non_blocking=non_blocking))

    def record_stream(self, stream: torch.Stream) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            for item in value.values() if isinstance(value, dict) else [value]:
                if item is not None:
                    item.record_stream(stream)

    def pin_memory(self) -> RecapBatch:
        return self.map(lambda value: value.pin_memory())
