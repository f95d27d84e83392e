"""A host-memory snapshot of a state dict, so training can go on while it is written.

torch.distributed.checkpoint's default stager cannot copy the ``ShardedTensor``s that torchrec
uses for sharded tables, so this one copies them shard by shard and keeps their global metadata.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch.distributed._shard.sharded_tensor import Shard, ShardedTensor


def snapshot(value: Any) -> Any:
    """A copy of ``value`` on the CPU that later in-place updates of the original do not reach."""
    if isinstance(value, ShardedTensor):
        shards = [
            Shard(tensor=_copy(shard.tensor), metadata=shard.metadata)
            for shard in value.local_shards()
        ]
        return ShardedTensor._init_from_local_shards_and_global_metadata(
            shards, value.metadata(), process_group=value._process_group
        )
    if isinstance(value, torch.Tensor):
        return _copy(value)
    if isinstance(value, Mapping):
        return {key: snapshot(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(snapshot(item) for item in value)
    return value


class SnapshotStager:
    """An ``AsyncStager`` for ``dcp.async_save`` that stages with :func:`snapshot`."""

    _synchronize_after_execute = False

    @property
    def should_synchronize_after_execute(self) -> bool:
        return False

    def stage(self, state_dict: dict[str, Any]) -> dict[str, Any]:
        return snapshot(state_dict)

    def synchronize_staging(self) -> None:
        """Staging is synchronous: the snapshot is complete when ``stage`` returns."""

    def close(self) -> None:
        """Nothing to release: snapshots are ordinary tensors, freed with the write."""


def _copy(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().to("cpu", copy=True)
