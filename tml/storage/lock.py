"""A lock file that keeps a second live job out of a folder, on a local disk or a bucket.

The lock is a small JSON file naming its holder (the launch, the host, the process) and a
heartbeat time that the holder rewrites every few seconds. A job finding the lock taken decides
whether its holder is alive:

* its heartbeat is older than ``stale_after_s``: dead (killed, or its machine is gone);
* it ran on this host: alive exactly when its process is, the same process (its start time
  tells a reused process id apart, e.g. in a restarted container); a job killed with SIGKILL is
  taken over at once by its relaunch;
* it ran on another host under the same launch (torchrun's run id, kept across its restarts):
  an earlier round of this very job, whose rank 0 lived on another node;
* otherwise alive: the folder is in use, and the new job stops with one line saying by whom.

Creating the file is exclusive (``O_EXCL`` locally, a conditional PUT on S3), so two jobs
starting together cannot both take it. Object stores without conditional writes make that
best-effort: the file is read back after writing.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import socket
import threading
import time
from pathlib import Path

from tml.core.errors import UserInputError
from tml.storage.filesystems import filesystem, storage_errors
from tml.storage.paths import AnyPath, RemotePath, write_atomically

logger = logging.getLogger(__name__)


class FolderInUseError(UserInputError):
    """Another live job holds the folder's lock; the message names it and what to do."""


@dataclasses.dataclass(frozen=True)
class LockHolder:
    """Who holds a lock: a process of a launch on a host, alive as of ``heartbeat``.

    ``started`` is the process's start time (clock ticks after boot; None where ``/proc`` is
    not there), which tells it apart from a later process given the same id.
    """

    run: str
    host: str
    pid: int
    heartbeat: float
    started: int | None = None

    @classmethod
    def this_process(cls) -> LockHolder:
        host = socket.gethostname()
        pid = os.getpid()
        # torchrun gives every round of workers of one launch the same run id; without it the
        # process is its own launch.
        run = os.environ.get("TORCHELASTIC_RUN_ID") or f"{host}:{pid}"
        return cls(run=run, host=host, pid=pid, heartbeat=time.time(), started=_start_time(pid))

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> LockHolder | None:
        """The holder a lock file names, or None when the file is not one (half written by a
        store without atomic writes, or something else)."""
        try:
            fields = json.loads(text)
            started = fields.get("started")
            return cls(
                run=str(fields["run"]),
                host=str(fields["host"]),
                pid=int(fields["pid"]),
                heartbeat=float(fields["heartbeat"]),
                started=None if started is None else int(started),
            )
        except (ValueError, KeyError, TypeError):
            return None

    def same_process(self, other: LockHolder) -> bool:
        return (self.run, self.host, self.pid) == (other.run, other.host, other.pid)


def _process_stat(pid: int) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` after the command name (state first), or None."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _start_time(pid: int) -> int | None:
    stat = _process_stat(pid)
    return int(stat[19]) if stat is not None and len(stat) > 19 else None


def _process_alive(pid: int, started: int | None) -> bool:
    """Whether the process ``pid`` that started at ``started`` still runs on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # someone else's process
    stat = _process_stat(pid)
    if stat is None:
        return True  # no /proc: the id is all there is to go by
    if stat[0] == "Z":  # a zombie has ended; only its exit status waits to be collected
        return False
    # Another process that was given the same id later (a restarted container counts from 1).
    return started is None or _start_time(pid) == started


def _create_exclusively(path: AnyPath, text: str) -> bool:
    """Writes ``text`` to a new file; False when the file already exists."""
    if isinstance(path, RemotePath):
        fs, inner = filesystem(str(path))
        try:
            with storage_errors(str(path)):
                fs.pipe_file(inner, text.encode(), mode="create")
        except FileExistsError:
            return False
        return True
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(descriptor, "w") as file:
        file.write(text)
    return True


class FolderLock:
    """Holds ``path`` (a lock file) while the job runs; a context manager.

    Args:
        path: The lock file, e.g. ``<save_dir>/job.lock``.
        owner: What the error message calls the folder (e.g. ``training.save_dir``).
        heartbeat_s: How often the holder rewrites its heartbeat (a background thread).
        stale_after_s: A lock whose heartbeat is older than this is a dead job's.
    """

    def __init__(
        self,
        path: AnyPath,
        *,
        owner: str,
        heartbeat_s: float = 10.0,
        stale_after_s: float = 120.0,
    ) -> None:
        if stale_after_s <= 2 * heartbeat_s:
            raise ValueError("stale_after_s must allow for a few missed heartbeats")
        self.path = path
        self._owner = owner
        self._heartbeat_s = heartbeat_s
        self._stale_after_s = stale_after_s
        self._me = LockHolder.this_process()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self) -> None:
        """Takes the lock, or raises when another live job holds it.

        Raises:
            FolderInUseError: naming the holder, when it is alive.
            UserInputError: the folder cannot be written (naming it and the reason).
        """
        folder = self.path.parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
            for _ in range(3):  # a holder found dead is removed, then the file created again
                me = dataclasses.replace(self._me, heartbeat=time.time())
                # Read back: on a store that ignores the condition the last writer won.
                if _create_exclusively(self.path, me.to_json()) and self._read() == me:
                    break
                holder = self._read()
                if holder is not None and not self._dead(holder):
                    raise self._in_use(holder)
                logger.warning(
                    "taking over %s from a job that is no longer running (%s)",
                    self.path,
                    holder.to_json() if holder is not None else "unreadable",
                )
                self.path.unlink(missing_ok=True)
            else:
                raise FolderInUseError(f"{self._owner}: could not take the lock {self.path}")
        except OSError as error:
            if isinstance(error, UserInputError):
                raise
            reason = error.strerror or str(error)
            raise UserInputError(f"{self._owner}: cannot write to {folder}: {reason}") from None
        self._me = me
        self._thread = threading.Thread(target=self._beat, name="folder-lock", daemon=True)
        self._thread.start()

    def release(self) -> None:
        """Stops the heartbeat and removes the lock if it is still this process's."""
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        self._thread = None
        holder = self._read()
        if holder is not None and holder.same_process(self._me):
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> FolderLock:
        self.acquire()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    def _read(self) -> LockHolder | None:
        try:
            return LockHolder.from_json(self.path.read_text())
        except FileNotFoundError:
            return None

    def _dead(self, holder: LockHolder) -> bool:
        if time.time() - holder.heartbeat > self._stale_after_s:
            return True
        if holder.host == self._me.host:
            return not _process_alive(holder.pid, holder.started)
        return holder.run == self._me.run

    def _in_use(self, holder: LockHolder) -> FolderInUseError:
        age = max(time.time() - holder.heartbeat, 0.0)
        return FolderInUseError(
            f"{self._owner}: {self.path.parent} is in use by another job (process {holder.pid} "
            f"on {holder.host}, alive {age:.0f} s ago); give this job another folder, or stop "
            f"that one (a dead job's lock {self.path} is taken over once its heartbeat is "
            f"{self._stale_after_s:.0f} s old)"
        )

    def _beat(self) -> None:
        while not self._stop.wait(self._heartbeat_s):
            try:
                holder = self._read()
                if holder is None or not holder.same_process(self._me):
                    logger.error(
                        "%s was taken over by another job (%s): two jobs may now write to %s",
                        self.path,
                        holder.to_json() if holder is not None else "removed",
                        self.path.parent,
                    )
                    return
                write_atomically(
                    self.path, dataclasses.replace(self._me, heartbeat=time.time()).to_json()
                )
            except OSError as error:  # a store briefly unreachable: the next beat tries again
                logger.warning("could not renew %s: %s", self.path, error)
