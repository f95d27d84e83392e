"""An exclusive lease on a lock file, local or in an object store, for commands that must not run
twice at once on shared state (e.g. two retraining cycles promoting into one model registry).

Local paths use ``fcntl.flock`` on the file: the kernel releases it when the holding process
dies, however it dies, so a killed holder never blocks the next one.

An object store has no locks and no atomic rename, but S3 (and stores that follow its API)
offers conditional writes: a PUT with ``If-None-Match: *`` creates an object only if none exists,
and a PUT with ``If-Match: <etag>`` replaces it only if nobody changed it since it was read. The
lease is such an object naming its holder and an expiry time:

* acquire: create it conditionally; if it exists and has expired (or names a process of this
  host that is gone), replace it conditionally on the ETag that was read, so that of two
  processes taking over the same stale lease only one succeeds;
* hold: a background thread renews it (conditionally on our own last ETag) every third of its
  duration; a renewal that fails means another process took the lease over after ours expired
  (this process stalled), and :meth:`Lease.check` then raises instead of letting the holder
  write shared state it no longer owns;
* release: delete it if it is still ours.

A holder killed on another host blocks the lock until its lease expires (``duration_s``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import json
import os
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import IO, Any

from tml.core.errors import UserInputError
from tml.storage.filesystems import StorageError, filesystem, storage_errors
from tml.storage.paths import AnyPath, RemotePath, as_path

# Object stores whose filesystems accept S3's conditional PUT arguments (s3fs).
_CONDITIONAL_PROTOCOLS = ("s3", "s3a")


class LeaseHeldError(UserInputError):
    """Another process holds the lease; the message names it and when its lease ends."""


class LeaseLostError(RuntimeError):
    """This process's lease was taken over by another after it expired."""


@dataclasses.dataclass(frozen=True)
class Holder:
    """Who holds a lease, as written into the lock file."""

    owner: str
    host: str
    pid: int
    expires_at: float | None  # None: held until the process ends (local flock)

    def describe(self) -> str:
        until = (
            f", lease until {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(self.expires_at))}"
            if self.expires_at is not None
            else ""
        )
        return f"pid {self.pid} on {self.host}{until}"

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Holder | None:
        try:
            fields = json.loads(text)
            return cls(**fields)
        except (ValueError, TypeError):
            return None


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class Lease:
    """An exclusive lease on ``path``; a context manager that acquires and releases it.

    Args:
        path: The lock file (a local path or an ``s3://`` URL).
        duration_s: How long an object-store lease lasts without renewal (local locks last as
            long as the process).
        wait_s: How long :meth:`acquire` waits for a held lease before giving up.
    """

    def __init__(
        self,
        path: str | os.PathLike | RemotePath,
        *,
        duration_s: float = 120.0,
        wait_s: float = 0.0,
    ) -> None:
        self.path: AnyPath = as_path(path)
        self.duration_s = duration_s
        self.wait_s = wait_s
        self.owner = uuid.uuid4().hex
        self._file: IO[str] | None = None
        self._etag: str | None = None
        self._lost = threading.Event()
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None
        self._lock = threading.Lock()
        if isinstance(self.path, RemotePath):
            protocol = str(self.path).split("://", 1)[0]
            if protocol not in _CONDITIONAL_PROTOCOLS:
                raise StorageError(
                    f"{self.path}: a lock needs conditional writes, which tml implements for "
                    f"local paths and {', '.join(p + '://' for p in _CONDITIONAL_PROTOCOLS)}"
                )

    def __enter__(self) -> Lease:
        self.acquire()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    # Public API -------------------------------------------------------------------------------

    def acquire(self) -> None:
        """Takes the lease, waiting up to ``wait_s`` for a holder to let go.

        Raises:
            LeaseHeldError: another live process holds it, naming that process.
        """
        deadline = time.monotonic() + self.wait_s
        while True:
            holder = self._try_acquire()
            if holder is None:
                return
            if time.monotonic() >= deadline:
                raise LeaseHeldError(f"{self.path} is held by {holder.describe()}")
            time.sleep(min(1.0, max(0.05, deadline - time.monotonic())))

    def check(self) -> None:
        """Raises :class:`LeaseLostError` when another process has taken the lease over."""
        if self._lost.is_set():
            raise LeaseLostError(
                f"{self.path}: this process's lease expired and another process took it over"
            )

    def release(self) -> None:
        """Gives the lease up (nothing when it is not held)."""
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None
            return
        if self._renewer is None:
            return
        self._stop.set()
        self._renewer.join()
        self._renewer = None
        with self._lock:
            current, etag = self._read_remote()
            if current is not None and current.owner == self.owner and etag == self._etag:
                fs, inner = filesystem(str(self.path))
                with contextlib.suppress(FileNotFoundError), storage_errors(str(self.path)):
                    fs.rm_file(inner)

    def holder(self) -> Holder | None:
        """Who holds the lease now, as far as the lock file says (None: nobody)."""
        if isinstance(self.path, Path):
            if not self.path.is_file():
                return None
            probe = self.path.open("a+")
            try:
                fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return Holder.from_json(self.path.read_text())
            finally:
                probe.close()  # closing drops a lock this probe took
            return None
        current, _ = self._read_remote()
        if current is None or self._stale(current):
            return None
        return current

    # Local ------------------------------------------------------------------------------------

    def _try_acquire(self) -> Holder | None:
        """None when the lease is now ours, else its current holder."""
        if isinstance(self.path, Path):
            return self._try_local()
        return self._try_remote()

    def _me(self, expires: bool) -> Holder:
        return Holder(
            owner=self.owner,
            host=socket.gethostname(),
            pid=os.getpid(),
            expires_at=time.time() + self.duration_s if expires else None,
        )

    def _try_local(self) -> Holder | None:
        assert isinstance(self.path, Path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # "a+" creates the file without truncating what the holder wrote into it.
        file = self.path.open("a+")
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            file.close()
            return Holder.from_json(self.path.read_text()) or Holder("?", "?", -1, None)
        file.seek(0)
        file.truncate()
        file.write(self._me(expires=False).to_json())
        file.flush()
        self._file = file
        return None

    # Remote -----------------------------------------------------------------------------------

    def _read_remote(self) -> tuple[Holder | None, str | None]:
        fs, inner = filesystem(str(self.path))
        try:
            with storage_errors(str(self.path)):
                info = fs.info(inner)
                text = fs.cat_file(inner).decode()
        except FileNotFoundError:
            return None, None
        # The ETag of info belongs to the version read only if nothing changed in between; a
        # conditional write on a newer ETag fails safely, so at worst this costs one retry.
        return Holder.from_json(text) or Holder("?", "?", -1, 0.0), info.get("ETag")

    @staticmethod
    def _stale(holder: Holder) -> bool:
        if holder.expires_at is not None and holder.expires_at < time.time():
            return True
        # A holder on this host whose process is gone cannot renew: no need to wait for expiry.
        return holder.host == socket.gethostname() and not _process_alive(holder.pid)

    def _put(self, data: bytes, **condition: Any) -> str | None:
        """A conditional PUT; the new ETag, or None when the condition did not hold."""
        fs, inner = filesystem(str(self.path))
        try:
            with storage_errors(str(self.path)):
                answer = fs.pipe_file(inner, data, **condition)
        except OSError as error:
            if _precondition_failed(error):
                return None
            raise
        return (answer or {}).get("ETag") or fs.info(inner).get("ETag")

    def _try_remote(self) -> Holder | None:
        data = self._me(expires=True).to_json().encode()
        etag = self._put(data, mode="create")
        if etag is None:
            current, current_etag = self._read_remote()
            if current is None:  # released in between: try again at once
                return self._try_remote()
            if not self._stale(current) or current_etag is None:
                return current
            etag = self._put(data, IfMatch=current_etag)
            if etag is None:  # another process took the stale lease first
                return self._read_remote()[0] or current
        self._etag = etag
        self._stop.clear()
        self._lost.clear()
        self._renewer = threading.Thread(target=self._renew, daemon=True, name="lease-renewal")
        self._renewer.start()
        return None

    def _renew(self) -> None:
        while not self._stop.wait(self.duration_s / 3):
            if not self._renew_once():
                return

    def _renew_once(self) -> bool:
        """Extends the lease; False once another process has taken it over."""
        with self._lock:
            try:
                etag = self._put(self._me(expires=True).to_json().encode(), IfMatch=self._etag)
            except OSError:
                return True  # the store is unreachable for now; the next round tries again
            if etag is None:
                self._lost.set()
                return False
            self._etag = etag
            return True


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
