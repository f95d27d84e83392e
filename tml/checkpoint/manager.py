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

The directory may be an object-store URL (:mod:`tml.storage`): the files then go through
torch.distributed.checkpoint's fsspec writer and reader. Object stores have no atomic rename, so
the COMPLETE marker alone says a checkpoint is whole: it is written last, and pruning deletes it
first, so a folder half removed never counts either.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import re
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import Future
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp

# torch 2.13 keeps its fsspec storage in a private module (not re-exported by the package).
from torch.distributed.checkpoint._fsspec_filesystem import FsspecReader, FsspecWriter
from torch.distributed.checkpoint._nested_dict import flatten_state_dict
from torch.distributed.checkpoint.default_planner import (
    DefaultLoadPlanner,
    create_default_local_load_plan,
)
from torch.distributed.checkpoint.metadata import TensorStorageMetadata
from torch.distributed.checkpoint.planner import LoadPlan

from tml.checkpoint.staging import SnapshotStager
from tml.core.errors import UserInputError
from tml.storage import AnyPath, RemotePath, as_path, remove_tree, storage_options, write_atomically

logger = logging.getLogger(__name__)

COMPLETE_MARKER = "COMPLETE"


class CheckpointMismatchError(UserInputError):
    """A checkpoint does not hold what the job needs to load from it."""


class CheckpointNotFoundError(UserInputError, FileNotFoundError):
    """No complete checkpoint where one was asked for."""


class CheckpointWriteError(UserInputError):
    """A checkpoint could not be written (disk full, no permission, a file in the way); the
    message names the folder and the reason. The checkpoints written before are untouched."""


_STEP_FOLDER = re.compile(r"^step_(\d+)$")


PathLike = str | os.PathLike | RemotePath


def checkpoint_folder(directory: PathLike, step: int) -> AnyPath:
    """The folder of the checkpoint written at ``step`` under ``directory``."""
    return as_path(directory) / f"step_{step}"


def is_complete(folder: PathLike) -> bool:
    """Whether a checkpoint folder was fully written by every rank."""
    return (as_path(folder) / COMPLETE_MARKER).is_file()


def storage_writer(folder: AnyPath) -> dcp.StorageWriter:
    """torch.distributed.checkpoint's writer for a local folder or an object-store URL."""
    if isinstance(folder, RemotePath):
        return FsspecWriter(str(folder), **storage_options(str(folder)))
    return dcp.FileSystemWriter(folder)


def storage_reader(folder: PathLike) -> dcp.StorageReader:
    """torch.distributed.checkpoint's reader for a local folder or an object-store URL."""
    folder = as_path(folder)
    if isinstance(folder, RemotePath):
        return FsspecReader(str(folder), **storage_options(str(folder)))
    return dcp.FileSystemReader(folder)


def complete_steps(directory: PathLike) -> list[int]:
    """Steps of the fully written checkpoints under ``directory``, oldest first."""
    directory = as_path(directory)
    if not directory.is_dir():
        return []
    steps = []
    for child in directory.iterdir():
        match = _STEP_FOLDER.match(child.name)
        if match and is_complete(child):
            steps.append(int(match.group(1)))
    return sorted(steps)


def latest_complete_folder(directory: PathLike) -> AnyPath | None:
    """The newest fully written checkpoint folder under ``directory``, or None."""
    steps = complete_steps(directory)
    return checkpoint_folder(directory, steps[-1]) if steps else None


def find_complete_checkpoint(where: PathLike, checkpoints_folder: str) -> AnyPath:
    """A complete checkpoint folder: ``where`` itself, the newest under ``where`` (a folder of
    checkpoints), or the newest under ``where/checkpoints_folder`` (a job's save_dir).

    Raises:
        CheckpointNotFoundError: naming the path that holds no complete checkpoint.
    """
    where = as_path(where)
    if is_complete(where):
        return where
    for candidate in (where, where / checkpoints_folder):
        folder = latest_complete_folder(candidate)
        if folder is not None:
            return folder
    raise CheckpointNotFoundError(f"no complete checkpoint in {where}")


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
        directory: PathLike,
        *,
        max_to_keep: int | None = None,
        rank: int = 0,
        async_save: bool = True,
    ) -> None:
        self.directory = as_path(directory)
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
        with self._write_errors(step):
            if self._rank == 0 and folder.exists():
                _remove_checkpoint(folder)
            dist.barrier()
            folder.mkdir(parents=True, exist_ok=True)
            if rank_state is not None:
                _write_json(folder / f"rank_{self._rank}.json", dict(rank_state))
            if self._async_save:
                future = dcp.async_save(
                    _without_empty_containers(state),
                    storage_writer=storage_writer(folder),
                    process_group=self._group,
                    async_stager=self._stager,
                )
                # Newer torch returns a response holding separate staging and upload futures.
                future = getattr(future, "upload_completion", future)
                self._pending = (step, future)
                return
            dcp.save(
                _without_empty_containers(state),
                storage_writer=storage_writer(folder),
                process_group=self._group,
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
        with self._write_errors(step):
            future.result()
        self._finish(step)

    @contextlib.contextmanager
    def _write_errors(self, step: int) -> Iterator[None]:
        """Turns a failed write (the disk full, no permission, ...) into one line naming the
        folder and the reason."""
        try:
            yield
        # torch.distributed.checkpoint's own exception is no Exception (a BaseException).
        except (Exception, dcp.CheckpointException) as error:
            if isinstance(error, UserInputError):
                raise
            folder = checkpoint_folder(self.directory, step)
            cause = _os_error(error)
            # torch.save reports a file it could not finish as a position mismatch, the disk's
            # error lost on the way: writing a little more shows whether the folder takes any.
            reason = cause.strerror or str(cause) if cause is not None else _write_probe(folder)
            if reason is None:
                raise
            newest = self.latest_step()
            kept = "none is complete" if newest is None else f"step_{newest} is complete"
            raise CheckpointWriteError(
                f"cannot write checkpoint {folder}: {reason}; the checkpoints written before "
                f"are untouched ({kept}, and a relaunch resumes from it once the problem is "
                "fixed)"
            ) from None

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

    def rank_states(self, step: int) -> list[dict[str, Any]]:
        """Every rank's ``rank_state`` saved in a checkpoint, in rank order.

        A job resumed on another number of ranks needs them all: e.g. the data positions of
        the old ranks, to skip what they read together and share out the rest.
        """
        return load_rank_states(checkpoint_folder(self.directory, step))

    def close(self) -> None:
        """Finishes any background write."""
        self.wait()

    def _finish(self, step: int) -> None:
        # Rank 0's write finishing means the coordinator gathered every rank's results and wrote
        # the metadata, i.e. every rank's files are on disk.
        if self._rank != 0:
            return
        folder = checkpoint_folder(self.directory, step)
        with self._write_errors(step):
            _write_json(folder / COMPLETE_MARKER, {"step": step, "time": time.time()})
        logger.info("checkpoint written: %s", folder)
        self._prune()

    def _prune(self) -> None:
        if self._max_to_keep is None:
            return
        for step in complete_steps(self.directory)[: -self._max_to_keep]:
            _remove_checkpoint(checkpoint_folder(self.directory, step))
            logger.info("removed old checkpoint step_%d", step)

    def _remove_incomplete(self) -> None:
        if not self.directory.is_dir():  # a new job's folder in an object store: no keys yet
            return
        for child in self.directory.iterdir():
            if _STEP_FOLDER.match(child.name) and not is_complete(child):
                logger.warning("removing incompletely written checkpoint %s", child)
                remove_tree(child)


def _os_error(error: BaseException) -> OSError | None:
    """The operating system's (or store's) error behind a failed write, if that is what it was:
    torch.distributed.checkpoint wraps each rank's failure in a ``CheckpointException``."""
    seen: set[int] = set()
    pending: list[BaseException] = [error]
    while pending:
        current = pending.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, OSError):
            return current
        for failure in getattr(current, "failures", {}).values():
            # Each failure is the exception, or (exception, its formatted traceback).
            failure = failure[0] if isinstance(failure, tuple) else failure
            if isinstance(failure, BaseException):
                pending.append(failure)
        pending.extend(e for e in (current.__cause__, current.__context__) if e is not None)
    return None


def _write_probe(folder: AnyPath) -> str | None:
    """Why ``folder`` takes no more data (e.g. "No space left on device"), or None if it does."""
    probe = folder / ".write_probe"
    try:
        probe.write_bytes(bytes(1 << 20))
    except OSError as error:
        return error.strerror or str(error)
    finally:
        with contextlib.suppress(OSError):
            probe.unlink(missing_ok=True)
    return None


def _remove_checkpoint(folder: AnyPath) -> None:
    # The marker goes first: removing many objects is not atomic, and a folder that lost some
    # of its files must no longer count as complete if the removal stops half way.
    (folder / COMPLETE_MARKER).unlink(missing_ok=True)
    remove_tree(folder)


def load_checkpoint(
    folder: PathLike, state: dict[str, Any], rank: int = 0
) -> dict[str, Any] | None:
    """Loads a complete checkpoint folder into ``state`` in place; returns the rank's state."""
    folder = as_path(folder)
    if not is_complete(folder):
        raise CheckpointNotFoundError(f"{folder} is not a complete checkpoint")
    loadable = _without_empty_containers(state)
    _check_keys(folder, loadable)
    dcp.load(loadable, storage_reader=storage_reader(folder), planner=_LoadPlanner())
    _copy_leaves(loadable, state)
    rank_file = folder / f"rank_{rank}.json"
    return json.loads(rank_file.read_text()) if rank_file.is_file() else None


def load_rank_states(folder: PathLike) -> list[dict[str, Any]]:
    """The ``rank_<r>.json`` states of a checkpoint folder for r = 0, 1, ... (up to the first
    rank without one: ranks write them all before the folder is marked complete)."""
    folder = as_path(folder)
    states: list[dict[str, Any]] = []
    while (rank_file := folder / f"rank_{len(states)}.json").is_file():
        states.append(json.loads(rank_file.read_text()))
    return states


def load_weights(model: torch.nn.Module, folder: PathLike, rank: int = 0) -> None:
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


def _check_keys(folder: AnyPath, state: Mapping[str, Any]) -> None:
    """Fails with the names when the checkpoint lacks something ``state`` asks for, or holds a
    tensor of another shape (a config changed a layer's or a table's size since).

    (torch.distributed.checkpoint would otherwise guess an old format and report a confusing
    key, or fail with a traceback per rank.)
    """
    saved = storage_reader(folder).read_metadata().state_dict_metadata
    wanted = flatten_state_dict(dict(state))[0]
    missing = sorted(set(wanted) - set(saved))
    if missing:
        shown = ", ".join(missing[:5]) + (
            f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        )
        raise CheckpointMismatchError(
            f"checkpoint {folder} has no {shown}: it was written for a different model or "
            "optimizer configuration"
        )
    for name, value in wanted.items():
        stored = saved[name]
        if not isinstance(value, torch.Tensor) or not isinstance(stored, TensorStorageMetadata):
            continue
        # A sharded tensor's size() is the whole tensor's, as the metadata records it.
        shape, stored_shape = tuple(value.size()), tuple(stored.size)
        if shape != stored_shape:
            raise CheckpointMismatchError(
                f"checkpoint {folder}: tensor '{name}' has shape {list(stored_shape)} there, "
                f"{list(shape)} in this job: the config changed its size since the checkpoint "
                "was written (restore the size, or start from another save_dir)"
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


def _write_json(path: AnyPath, value: dict[str, Any]) -> None:
    # A reader never sees half a file (tml.storage.write_atomically).
    write_atomically(path, json.dumps(value))
