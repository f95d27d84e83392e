"""Checkpoints on torch.distributed.checkpoint."""

from tml.checkpoint.manager import (
    CheckpointManager,
    checkpoint_folder,
    complete_steps,
    is_complete,
    load_checkpoint,
    resolve_checkpoint,
)

__all__ = [
    "CheckpointManager",
    "checkpoint_folder",
    "complete_steps",
    "is_complete",
    "load_checkpoint",
    "resolve_checkpoint",
]
