"""The one lock of tml: a lock file that keeps a second live process off shared state, on a local
disk or a bucket. A training job holds ``<save_dir>/job.lock`` (so that two jobs never write one
folder) and the retraining registry holds its ``LOCK`` (so that two cycles or registry commands
never change the registry at once).

The lock is a small JSON file naming its holder (the launch, the host, the process and a token
of this very lock object) with a heartbeat time and an expiry that the holder renews in a
background thread. A process finding the lock taken decides whether its holder is dead:

* its lease expired (no heartbeat for ``stale_after_s``, as the holder declared it): killed, or
  its machine is gone;
* it ran on this host: dead exactly when its process is gone, or the process id now names a
  later process (its start time tells them apart, e.g. in a restarted container); so a holder
  killed with SIGKILL is taken over at once by its relaunch;
* with ``same_run_is_restart``: it ran on another host under the same launch (torchrun's run
  id, kept across its restarts): an earlier round of this very job, whose rank 0 lived on
  another node;
* otherwise it is alive, and :meth:`Lock.acquire` raises :class:`LockHeldError` naming it.

Creating the file is exclusive and replacing a dead holder's file is conditional on the version
that was read, so that of two processes starting together, or taking over the same dead holder,
one wins: locally a hard link of a fully written file (fails when the name exists), on S3 a PUT
with ``If-None-Match: *`` to create and ``If-Match: <etag>`` to replace or renew. Other object
stores have no conditional writes: there the lock is best effort (the file is read back after
writing), or refused where the user asks for ``conditional_writes_required``. A renewal that
finds the file changed means another process took the lock over after this one stalled;
:meth:`Lock.check` then raises :class:`LockLostError` so that the holder stops before writing
state it no longer owns.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import logging
import os
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Protocol

from tml.core.errors import UserInputError
from tml.storage.filesystems import StorageError, filesystem, storage_errors
from tml.storage.paths import AnyPath, RemotePath, as_path, write_atomically

logger = logging.getLogger(__name__)

# Object stores whose filesystems accept S3's conditional PUT arguments (s3fs).
_CONDITIONAL_PROTOCOLS = ("s3", "s3a")


class LockHeldError(UserInputError):
    """Another live process holds the lock; the message names it and what to do."""


class LockLostError(RuntimeError):
    """This process's lock was taken over by another after its heartbeat stopped too long."""


@dataclasses.dataclass(frozen=True)
class LockHolder:
    """Who holds a lock, as written into the lock file.

    Attributes:
        run: The launch (torchrun's run id, kept across restarts; else ``host:pid``).
        host: The host name of the holding process.
        pid: Its process id.
        heartbeat: When it last renewed the lock (seconds since the epoch).
        expires_at: When the lock counts as dead without a renewal (the holder's heartbeat
            plus its ``stale_after_s``: the holder, not the reader, says how long it may stall).
        token: The holding lock object's own id: tells two locks of one process apart.
        started: The process's start time (clock ticks after boot; None where ``/proc`` is not
            there), which tells it apart from a later process given the same id.
    """

    run: str
    host: str
    pid: int
    heartbeat: float
    expires_at: float
    token: str
    started: int | None = None

    @classmethod
    def this_process(cls, stale_after_s: float = 120.0) -> LockHolder:
        host = socket.gethostname()
        pid = os.getpid()
        now = time.time()
        # torchrun gives every round of workers of one launch the same run id; without it the
        # process is its own launch.
        run = os.environ.get("TORCHELASTIC_RUN_ID") or f"{host}:{pid}"
        return cls(
            run=run,
            host=host,
            pid=pid,
            heartbeat=now,
            expires_at=now + stale_after_s,
            token=uuid.uuid4().hex,
            started=_start_time(pid),
        )

    def renewed(self, stale_after_s: float) -> LockHolder:
        """This holder with its heartbeat now."""
        now = time.time()
        return dataclasses.replace(self, heartbeat=now, expires_at=now + stale_after_s)

    def describe(self) -> str:
        """E.g. ``process 12 on host-a, alive 3 s ago``."""
        age = max(time.time() - self.heartbeat, 0.0)
        return f"process {self.pid} on {self.host}, alive {age:.0f} s ago"

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> LockHolder | None:
        """The holder a lock file names, or None when the file is not one (half written by a
        store without atomic writes, or something else): such a file is taken over."""
        try:
            fields = json.loads(text)
            started = fields.get("started")
            return cls(
                run=str(fields["run"]),
                host=str(fields["host"]),
                pid=int(fields["pid"]),
                heartbeat=float(fields["heartbeat"]),
                expires_at=float(fields["expires_at"]),
                token=str(fields["token"]),
                started=None if started is None else int(started),
            )
        except (ValueError, KeyError, TypeError, AttributeError):
            return None


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


# The stores: one exclusive create and one conditional replace each -------------------------------


class _Store(Protocol):
    """A lock file's exclusive-create primitive on one kind of store.

    A version is what a conditional replace compares against: the ETag on S3, the text itself
    elsewhere.
    """

    def create(self, text: str) -> str | None:
        """Writes a new file; its version, or None when the file already exists."""

    def read(self) -> tuple[str | None, str | None]:
        """The file's text and version; (None, None) when there is none."""

    def replace(self, text: str, version: str) -> str | None:
        """Overwrites the file if it is still at ``version``; the new version, or None."""

    def remove(self) -> None:
        """Deletes the file (nothing when it is gone)."""


class _LocalFile:
    """A lock file on a local (or network) disk."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def create(self, text: str) -> str | None:
        # A hard link of a fully written file fails when the name exists, so the lock never
        # shows half written (an O_EXCL create would, between its create and its write).
        temporary = self.path.with_name(f"{self.path.name}.{uuid.uuid4().hex}.tmp")
        temporary.write_text(text)
        try:
            os.link(temporary, self.path)
        except FileExistsError:
            return None
        finally:
            temporary.unlink(missing_ok=True)
        return text

    def read(self) -> tuple[str | None, str | None]:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return None, None
        return text, text

    def replace(self, text: str, version: str) -> str | None:
        # No compare-and-swap on a file: compare, then rename a new file over it. Two takers of
        # one dead holder could both pass in between; each reads its own back after acquiring.
        if self.read()[1] != version:
            return None
        write_atomically(self.path, text)
        return text

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


class _Bucket:
    """A lock object; conditional on S3, best effort on stores without conditional writes."""

    def __init__(self, path: RemotePath) -> None:
        self.url = str(path)
        self.conditional = self.url.split("://", 1)[0] in _CONDITIONAL_PROTOCOLS

    def create(self, text: str) -> str | None:
        return self._put(text, mode="create")

    def read(self) -> tuple[str | None, str | None]:
        fs, inner = filesystem(self.url)
        try:
            with storage_errors(self.url):
                info = fs.info(inner)
                text = fs.cat_file(inner).decode()
        except FileNotFoundError:
            return None, None
        if not self.conditional:
            return text, text
        # The ETag of info belongs to the version read only if nothing changed in between; a
        # conditional write on a newer ETag fails safely, so at worst this costs one retry.
        return text, info.get("ETag")

    def replace(self, text: str, version: str) -> str | None:
        if self.conditional:
            return self._put(text, IfMatch=version)
        if self.read()[1] != version:  # best effort, as on a local disk
            return None
        return self._put(text)

    def remove(self) -> None:
        fs, inner = filesystem(self.url)
        with contextlib.suppress(FileNotFoundError), storage_errors(self.url):
            fs.rm_file(inner)

    def _put(self, text: str, **condition: Any) -> str | None:
        """A (conditional) PUT; the new version, or None when the condition did not hold."""
        fs, inner = filesystem(self.url)
        try:
            with storage_errors(self.url):
                answer = fs.pipe_file(inner, text.encode(), **condition)
        except OSError as error:
            if _precondition_failed(error):
                return None
            raise
        if not self.conditional:
            return text
        return (answer or {}).get("ETag") or fs.info(inner).get("ETag")


def _precondition_failed(error: OSError) -> bool:
    """Whether a store refused a conditional write (HTTP 412), however the library words it."""
    if isinstance(error, FileExistsError):
        return True
    chain: BaseException | None = error
    while chain is not None:
        text = f"{type(chain).__name__} {chain}"
        if "PreconditionFailed" in text or "pre-condition" in text or "412" in text:
            return True
        chain = chain.__cause__ or chain.__context__
    return error.errno == errno.EEXIST


def _store(path: AnyPath) -> _Store:
    return _Bucket(path) if isinstance(path, RemotePath) else _LocalFile(path)


# The lock -----------------------------------------------------------------------------------------


class Lock:
    """Holds the lock file ``path`` while a job runs; a context manager.

    Args:
        path: The lock file (a local path or a URL), e.g. ``<save_dir>/job.lock``.
        owner: What messages call the locked thing (e.g. ``training.save_dir``).
        heartbeat_s: How often the holder renews the lock (a background thread).
        stale_after_s: How long the lock outlives a holder that stopped renewing it (killed on
            another host, or stalled); written into the lock, so every reader uses the
            holder's own.
        wait_s: How long :meth:`acquire` waits for a live holder to let go.
        advice: What the message of a held lock tells the user to do.
        same_run_is_restart: Take over a holder of the same torchrun launch on another host
            (an earlier round of a restarted job), for locks held by a launch's rank 0.
        conditional_writes_required: Refuse object stores without conditional writes (where
            two processes starting together could both believe they hold the lock).
    """

    def __init__(
        self,
        path: str | os.PathLike | AnyPath,
        *,
        owner: str,
        heartbeat_s: float = 10.0,
        stale_after_s: float = 120.0,
        wait_s: float = 0.0,
        advice: str = "wait for it to end, or stop it",
        same_run_is_restart: bool = False,
        conditional_writes_required: bool = False,
    ) -> None:
        if stale_after_s <= 2 * heartbeat_s:
            raise ValueError("stale_after_s must allow for a few missed heartbeats")
        self.path: AnyPath = as_path(path)
        self._store = _store(self.path)
        if (
            conditional_writes_required
            and isinstance(self._store, _Bucket)
            and not self._store.conditional
        ):
            raise StorageError(
                f"{self.path}: a lock needs conditional writes, which tml implements for local "
                f"paths and {', '.join(p + '://' for p in _CONDITIONAL_PROTOCOLS)}"
            )
        self._owner = owner
        self._heartbeat_s = heartbeat_s
        self._stale_after_s = stale_after_s
        self._wait_s = wait_s
        self._advice = advice
        self._same_run_is_restart = same_run_is_restart
        self._me = LockHolder.this_process(stale_after_s)
        self._version: str | None = None
        # Serialises renewals with the release, so that a release never deletes a lock that a
        # renewal in flight is rewriting.
        self._renewing = threading.Lock()
        self._lost = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def token(self) -> str:
        """This lock object's id, as its lock file names it while it holds it."""
        return self._me.token

    def acquire(self) -> None:
        """Takes the lock, waiting up to ``wait_s`` for a live holder to let go.

        Raises:
            LockHeldError: naming the holder, when it is alive.
            UserInputError: the folder cannot be written (naming it and the reason).
        """
        folder = self.path.parent
        deadline = time.monotonic() + self._wait_s
        try:
            folder.mkdir(parents=True, exist_ok=True)
            while (holder := self._try_acquire()) is not None:
                if time.monotonic() >= deadline:
                    raise self._held(holder)
                time.sleep(min(1.0, max(0.05, deadline - time.monotonic())))
        except OSError as error:
            if isinstance(error, UserInputError):
                raise
            reason = error.strerror or str(error)
            raise UserInputError(f"{self._owner}: cannot write to {folder}: {reason}") from None
        self._stop.clear()
        self._lost.clear()
        self._thread = threading.Thread(target=self._beat, name="lock-heartbeat", daemon=True)
        self._thread.start()

    def check(self) -> None:
        """Raises :class:`LockLostError` when another process has taken the lock over."""
        if self._lost.is_set():
            raise LockLostError(
                f"{self.path}: this process's lock went stale and another process took it over"
            )

    def release(self) -> None:
        """Stops the heartbeat and removes the lock if it is still this object's."""
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        self._thread = None
        with self._renewing:
            holder, _ = self._read()
            if holder is not None and holder.token == self.token:
                self._store.remove()

    def holder(self) -> LockHolder | None:
        """Who holds the lock now, as far as its file says (None: nobody, or a dead holder)."""
        holder, _ = self._read()
        if holder is None or self._dead(holder):
            return None
        return holder

    def __enter__(self) -> Lock:
        self.acquire()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    def _read(self) -> tuple[LockHolder | None, str | None]:
        text, version = self._store.read()
        return (None if text is None else LockHolder.from_json(text)), version

    def _try_acquire(self) -> LockHolder | None:
        """None when the lock is now this object's, else its live holder."""
        for _ in range(3):  # released, or taken by another taker, in between: look again
            me = self._me.renewed(self._stale_after_s)
            version = self._store.create(me.to_json())
            if version is None:
                holder, found = self._read()
                if found is None:
                    continue  # released in between
                if holder is not None and not self._dead(holder):
                    return holder
                logger.warning(
                    "taking over %s from a process that is no longer running (%s)",
                    self.path,
                    holder.to_json() if holder is not None else "unreadable",
                )
                version = self._store.replace(me.to_json(), found)
                if version is None:
                    continue  # another process took it over first
            # Read back: on a store that ignores the conditions the last writer won.
            holder, version = self._read()
            if holder is not None and holder.token == self.token:
                self._me, self._version = me, version
                return None
            if holder is not None and not self._dead(holder):
                return holder
        raise LockHeldError(f"{self._owner}: could not take the lock {self.path}")

    def _dead(self, holder: LockHolder) -> bool:
        if time.time() > holder.expires_at:
            return True
        if holder.host == self._me.host:
            return not _process_alive(holder.pid, holder.started)
        return self._same_run_is_restart and holder.run == self._me.run

    def _held(self, holder: LockHolder) -> LockHeldError:
        stale_s = holder.expires_at - holder.heartbeat
        return LockHeldError(
            f"{self._owner}: {self.path.parent} is in use by another job ({holder.describe()}); "
            f"{self._advice} (a dead job's lock {self.path} is taken over once its heartbeat is "
            f"{stale_s:.0f} s old)"
        )

    def _beat(self) -> None:
        while not self._stop.wait(self._heartbeat_s):
            if not self._renew_once():
                return

    def _renew_once(self) -> bool:
        """Renews the heartbeat; False once another process has taken the lock over."""
        with self._renewing:
            me = self._me.renewed(self._stale_after_s)
            try:
                assert self._version is not None, "renewed only while held"
                version = self._store.replace(me.to_json(), self._version)
            except OSError as error:  # a store briefly unreachable: the next beat tries again
                logger.warning("could not renew %s: %s", self.path, error)
                return True
            if version is None:
                holder, _ = self._read()
                logger.error(
                    "%s was taken over by another process (%s): two of them may now write to %s",
                    self.path,
                    holder.to_json() if holder is not None else "removed",
                    self.path.parent,
                )
                self._lost.set()
                return False
            self._me, self._version = me, version
            return True
