"""The contract between TwHIN's data stage and its model: one rank's batch of edges.

Every node an edge touches is looked up in one KeyedJaggedTensor over the entity tables, one
lookup per bag. Each edge owns ``2 + 2k`` consecutive bags (k global negatives per side)::

    [lhs, rhs, rhs negative 1..k, lhs negative 1..k]

and a bag is non-empty only under the key of its entity type, so summing the pooled output over
tables gives each bag's vector. The model reshapes the bags to ``[edges, 2 + 2k, dim]``, so it
needs neither k nor the tables' order.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor
from torchrec.streamable import Pipelineable


@dataclasses.dataclass
class EdgeBatch(Pipelineable):
    """One rank's share of a global batch of positive edges, with their negatives.

    Attributes:
        nodes: The lookups, keyed by table name; ``2 + 2k`` bags per edge (module docstring).
        relations: ``[edges]`` int64, the relation of each edge (an index into the config's).
        in_batch_index: ``[edges, n]`` int64: for each edge, n other edges of the same relation
            in this batch; edge i is scored against (lhs_i, rhs_j) and (lhs_j, rhs_i).
        in_batch_weight: ``[edges, n]`` float32, 0 where an edge had no other edge to borrow.
        edges_per_rank: ``[]`` float32, the global batch's edges divided by the world size: the
            loss is a sum over this rank's edges divided by it, so the ranks' averaged gradient
            is the global batch's mean whatever its split.
    """

    nodes: KeyedJaggedTensor
    relations: torch.Tensor
    in_batch_index: torch.Tensor
    in_batch_weight: torch.Tensor
    edges_per_rank: torch.Tensor

    @property
    def num_edges(self) -> int:
        return int(self.relations.shape[0])

    def map(self, function: Callable[[Any], Any]) -> EdgeBatch:
        """A new batch with ``function`` applied to every tensor and to the KeyedJaggedTensor."""
        return EdgeBatch(
            **{
                field.name: function(getattr(self, field.name))
                for field in dataclasses.fields(self)
            }
        )

    def to(self, device: torch.device, non_blocking: bool = False) -> EdgeBatch:
        return self.map(lambda value: value.to(device=device, non_blocking=non_blocking))

    def record_stream(self, stream: torch.Stream) -> None:
        for field in dataclasses.fields(self):
            getattr(self, field.name).record_stream(stream)

    def pin_memory(self) -> EdgeBatch:
        return self.map(lambda value: value.pin_memory())
