"""Checkpoints on torch.distributed.checkpoint."""

from tml.checkpoint.manager import (
    CheckpointManager,
    CheckpointMismatchError,
    CheckpointNotFoundError,
    CheckpointWriteError,
    checkpoint_folder,
    complete_steps,
    find_complete_checkpoint,
    is_complete,
    latest_complete_folder,
    load_checkpoint,
    load_weights,
    storage_reader,
    storage_writer,
)

__all__ = [
    "CheckpointManager",
    "CheckpointMismatchError",
    "CheckpointNotFoundError",
    "CheckpointWriteError",
    "checkpoint_folder",
    "complete_steps",
    "find_complete_checkpoint",
    "is_complete",
    "latest_complete_folder",
    "load_checkpoint",
    "load_weights",
    "storage_reader",
    "storage_writer",
]
