"""Checkpoints on torch.distributed.checkpoint: save, load, prune, resume, warm start.

Layout under a job's save_dir::

    checkpoints/
      step_1000/              one folder per optimizer step (the step, not step * world size)
        .metadata, __0_0.distcp, ...   torch.distributed.checkpoint files (sharded tables too)
        rank_0.json, rank_1.json       per-rank state that differs across ranks (data position)
        COMPLETE                       written last; a folder without it never counts

Saving is asynchronous: the state is staged to host memory, training continues, and a background
thread writes the files. Only when every rank's write has finished does rank 0 write
``COMPLETE``, so a job killed mid-write leaves a folder that resume ignores (and the next save
removes).
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Mapping
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint._nested_dict import flatten_state_dict
from torch.distributed.checkpoint.default_planner import (
    DefaultLoadPlanner,
    create_default_local_load_plan,
)
from torch.distributed.checkpoint.planner import LoadPlan

from tml.checkpoint.staging import SnapshotStager
from tml.core.errors import UserInputError

logger = logging.getLogger(__name__)

COMPLETE_MARKER = "COMPLETE"


class CheckpointMismatchError(UserInputError):
    """A checkpoint does not hold what the job needs to load from it."""


class CheckpointNotFoundError(UserInputError, FileNotFoundError):
    """No complete checkpoint where one was asked for."""


_STEP_FOLDER = re.compile(r"^step_(\d+)$")


def checkpoint_folder(directory: str | os.PathLike, step: int) -> Path:
    """The folder of the checkpoint written at ``step`` under ``directory``."""
    return Path(directory) / f"step_{step}"


def is_complete(folder: str | os.PathLike) -> bool:
    """Whether a checkpoint folder was fully written by every rank."""
    return (Path(folder) / COMPLETE_MARKER).is_file()


def complete_steps(directory: str | os.PathLike) -> list[int]:
    """Steps of the fully written checkpoints under ``directory``, oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    steps = []
    for child in directory.iterdir():
        match = _STEP_FOLDER.match(child.name)
        if match and is_complete(child):
            steps.append(int(match.group(1)))
    return sorted(steps)


def latest_complete_folder(directory: str | os.PathLike) -> Path | None:
    """The newest fully written checkpoint folder under ``directory``, or None."""
    steps = complete_steps(directory)
    return checkpoint_folder(directory, steps[-1]) if steps else None


class CheckpointManager:
    """Writes and reads the job's checkpoints; every method is called on every rank.

    Args:
        directory: Where the step folders go (``<save_dir>/checkpoints``).
        max_to_keep: Keep only the newest N complete checkpoints (None: all).
        rank: This process's rank; rank 0 writes markers and prunes.
        async_save: Write in a background thread while training goes on.
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        max_to_keep: int | None = None,
        rank: int = 0,
        async_save: bool = True,
    ) -> None:
        self.directory = Path(directory)
        self._max_to_keep = max_to_keep
        self._rank = rank
        self._async_save = async_save
        self._pending: tuple[int, Future] | None = None
        self._stager = SnapshotStager()
        # Background writes run collectives; a group of their own keeps them from interleaving
        # with the training loop's collectives on the default group.
        self._group = dist.new_group(backend="gloo", timeout=datetime.timedelta(hours=1))
        if rank == 0:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._remove_incomplete()
        dist.barrier()

    def latest_step(self) -> int | None:
        """The newest complete checkpoint's step, or None."""
        steps = complete_steps(self.directory)
        return steps[-1] if steps else None

    def save(
        self, step: int, state: Mapping[str, Any], rank_state: Mapping[str, Any] | None = None
    ) -> None:
        """Starts writing ``state`` (shared across ranks) and ``rank_state`` (this rank's).

        Returns once the state is staged; call :meth:`poll` or :meth:`wait` to finish.

        Args:
            step: The optimizer step the state belongs to.
            state: Model, optimizer, scheduler, progress: anything torch.distributed.checkpoint
                accepts (tensors, sharded tensors, plain values).
            rank_state: JSON-serialisable state that differs per rank (e.g. data position).
        """
        self.wait()
        folder = checkpoint_folder(self.directory, step)
        if self._rank == 0 and folder.exists():
            shutil.rmtree(folder)
        dist.barrier()
        folder.mkdir(parents=True, exist_ok=True)
        if rank_state is not None:
            _write_json(folder / f"rank_{self._rank}.json", dict(rank_state))
        if self._async_save:
            future = dcp.async_save(
                _without_empty_containers(state),
                checkpoint_id=folder,
                process_group=self._group,
                async_stager=self._stager,
            )
            # Newer torch returns a response holding separate staging and upload futures.
            future = getattr(future, "upload_completion", future)
            self._pending = (step, future)
        else:
            dcp.save(
                _without_empty_containers(state), checkpoint_id=folder, process_group=self._group
            )
            self._finish(step)

    def poll(self) -> None:
        """Completes a background write that has finished; cheap to call every step."""
        if self._pending is not None and self._pending[1].done():
            self.wait()

    def wait(self) -> None:
        """Blocks until a background write has finished and is marked complete."""
        if self._pending is None:
            return
        step, future = self._pending
        self._pending = None
        future.result()
        self._finish(step)

    def load(self, state: dict[str, Any], step: int | None = None) -> dict[str, Any] | None:
        """Loads a checkpoint into ``state`` in place and returns this rank's ``rank_state``.

        Args:
            state: Same structure as saved, holding the tensors to fill (a subset of the saved
                keys is fine, e.g. only the model for a warm start).
            step: Which checkpoint; default the newest complete one.

        Returns:
            The rank state saved by this rank, or None when there is none.
        """
        step = self.latest_step() if step is None else step
        if step is None:
            raise CheckpointNotFoundError(f"no complete checkpoint in {self.directory}")
        return load_checkpoint(checkpoint_folder(self.directory, step), state, self._rank)

    def close(self) -> None:
        """Finishes any background write."""
        self.wait()

    def _finish(self, step: int) -> None:
        # Rank 0's write finishing means the coordinator gathered every rank's results and wrote
        # the metadata, i.e. every rank's files are on disk.
        if self._rank != 0:
            return
        folder = checkpoint_folder(self.directory, step)
        _write_json(folder / COMPLETE_MARKER, {"step": step, "time": time.time()})
        logger.info("checkpoint written: %s", folder)
        self._prune()

    def _prune(self) -> None:
        if self._max_to_keep is None:
            return
        for step in complete_steps(self.directory)[: -self._max_to_keep]:
            shutil.rmtree(checkpoint_folder(self.directory, step), ignore_errors=True)
            logger.info("removed old checkpoint step_%d", step)

    def _remove_incomplete(self) -> None:
        for child in self.directory.iterdir():
            if _STEP_FOLDER.match(child.name) and not is_complete(child):
                logger.warning("removing incompletely written checkpoint %s", child)
                shutil.rmtree(child, ignore_errors=True)


def load_checkpoint(
    folder: str | os.PathLike, state: dict[str, Any], rank: int = 0
) -> dict[str, Any] | None:
    """Loads a complete checkpoint folder into ``state`` in place; returns the rank's state."""
    folder = Path(folder)
    if not is_complete(folder):
        raise CheckpointNotFoundError(f"{folder} is not a complete checkpoint")
    loadable = _without_empty_containers(state)
    _check_keys(folder, loadable)
    dcp.load(loadable, checkpoint_id=folder, planner=_LoadPlanner())
    _copy_leaves(loadable, state)
    rank_file = folder / f"rank_{rank}.json"
    return json.loads(rank_file.read_text()) if rank_file.is_file() else None


def load_weights(model: torch.nn.Module, folder: str | os.PathLike, rank: int = 0) -> None:
    """Loads only the model's weights (the checkpoint's ``model`` entry) into ``model``.

    Works for a sharded model (every rank calls it; each reads the shards it holds) and for an
    unsharded one (sharded tables are gathered whole).

    Raises:
        CheckpointNotFoundError: ``folder`` is not a complete checkpoint.
        CheckpointMismatchError: the checkpoint lacks some of the model's weights.
    """
    state = {"model": model.state_dict()}
    load_checkpoint(folder, state, rank)
    model.load_state_dict(state["model"])


class _LoadPlanner(DefaultLoadPlanner):
    """The default planner without its guess at pre-2.4 checkpoint keys.

    It guesses an old format whenever this rank asks for fewer keys than the checkpoint holds,
    which is always the case for a table-wise sharded table placed on another rank (this rank
    holds none of it), and then fails on keys that were fine. Only current checkpoints are read.
    """

    def create_local_plan(self) -> LoadPlan:
        return create_default_local_load_plan(
            self.state_dict, self.metadata, not self.allow_partial_load
        )


def _check_keys(folder: Path, state: Mapping[str, Any]) -> None:
    """Fails with the missing names when the checkpoint lacks something ``state`` asks for.

    (torch.distributed.checkpoint would otherwise guess an old format and report a confusing
    key.)
    """
    saved = set(dcp.FileSystemReader(folder).read_metadata().state_dict_metadata)
    wanted = set(flatten_state_dict(dict(state))[0])
    missing = sorted(wanted - saved)
    if missing:
        shown = ", ".join(missing[:5]) + (
            f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        )
        raise CheckpointMismatchError(
            f"checkpoint {folder} has no {shown}: it was written for a different model or "
            "optimizer configuration"
        )


def _without_empty_containers(state: Mapping[str, Any]) -> dict[str, Any]:
    """A view of ``state`` without empty dicts, sharing its leaves.

    torch.distributed.checkpoint drops empty containers on save but expects them on load, and
    torchrec's fused optimizers report an empty state per table (plain SGD keeps none).
    """
    view: dict[str, Any] = {}
    for key, value in state.items():
        if isinstance(value, Mapping):
            value = _without_empty_containers(value)
            if not value:
                continue
        view[key] = value
    return view


def _copy_leaves(source: Mapping[str, Any], target: dict[str, Any]) -> None:
    # Tensors were filled in place; plain values were replaced in the view and are copied back.
    for key, value in source.items():
        if isinstance(value, Mapping):
            _copy_leaves(value, target[key])
        else:
            target[key] = value


def _write_json(path: Path, value: dict[str, Any]) -> None:
    # Write-then-rename so a reader never sees half a file.
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(value))
    temporary.replace(path)
