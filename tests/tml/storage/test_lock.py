"""The lock of tml.storage.lock: a live holder keeps others out, a dead one is taken over, a
stalled holder learns it lost the lock, locally and on a bucket (the loopback S3 server of
tests/conftest.py)."""

from __future__ import annotations

import dataclasses
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tml.core.errors import UserInputError
from tml.storage import Lock, LockHeldError, LockHolder, LockLostError, StorageError, as_path
from tml.storage.lock import _Bucket

REPO = Path(__file__).resolve().parents[3]
HOLD = (
    "import sys, time; from tml.storage import Lock; "
    "lock = Lock(sys.argv[1], owner='test'); lock.acquire(); print('held', flush=True); "
    "time.sleep(60)"
)


@pytest.fixture(params=["local", "bucket"])
def folder(request, tmp_path):
    if request.param == "bucket":
        return as_path(request.getfixturevalue("s3_bucket")) / "job"
    return tmp_path / "job"


def lock_at(folder, **options) -> Lock:
    return Lock(
        folder / "job.lock",
        owner="training.save_dir",
        advice="give this job another folder, or stop that one",
        **options,
    )


def plant(folder, **changes) -> LockHolder:
    """A lock file as another process would have left it (of another lock object)."""
    holder = dataclasses.replace(LockHolder.this_process(), **changes)
    (folder / "job.lock").write_text(holder.to_json())
    return holder


def hold_in_child(path: str) -> subprocess.Popen:
    """A process that takes the lock and sleeps holding it."""
    child = subprocess.Popen(
        [sys.executable, "-c", HOLD, path],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout.readline().strip() == "held"
    return child


def test_a_live_holder_keeps_a_second_one_out_until_it_releases(folder):
    with lock_at(folder) as first:
        holder = LockHolder.from_json((folder / "job.lock").read_text())
        assert holder.token == first.token and holder.pid == os.getpid()
        assert first.holder() == holder
        with pytest.raises(LockHeldError) as error:
            lock_at(folder).acquire()
        assert re.fullmatch(
            rf"training.save_dir: {re.escape(str(folder))} is in use by another job \(process "
            rf"{holder.pid} on {re.escape(holder.host)}, alive \d+ s ago\); give this job another "
            r"folder, or stop that one \(a dead job's lock \S+ is taken over once its heartbeat "
            r"is 120 s old\)",
            str(error.value),
        )
        first.check()
    assert not (folder / "job.lock").exists()
    assert lock_at(folder).holder() is None
    with lock_at(folder):
        pass


def test_a_dead_holders_lock_is_taken_over(folder, caplog):
    folder.mkdir(parents=True, exist_ok=True)
    # Killed on this host: its process is gone.
    finished = subprocess.Popen(["true"])
    finished.wait()
    plant(folder, run="killed-launch", pid=finished.pid)
    with lock_at(folder):
        assert "taking over" in caplog.text
    # Its process id now names another process (this one), as in a restarted container.
    plant(folder, run="killed-launch", started=LockHolder.this_process().started - 1)
    with lock_at(folder):
        pass
    # On another host, silent for longer than it said it may be.
    plant(folder, run="other-launch", host="elsewhere", expires_at=time.time() - 1)
    with lock_at(folder):
        pass
    # Unreadable (half written by a store without atomic writes).
    (folder / "job.lock").write_text("{")
    with lock_at(folder):
        pass
    # On another host, fresh, but an earlier round of this launch (a torchrun restart) ...
    plant(folder, host="elsewhere")
    with lock_at(folder, same_run_is_restart=True):
        pass
    # ... which only a lock that asks for it takes over.
    plant(folder, host="elsewhere")
    with pytest.raises(LockHeldError):
        lock_at(folder).acquire()
    # On another host, fresh, another launch: alive as far as anyone here can tell.
    plant(folder, run="other-launch", host="elsewhere")
    with pytest.raises(LockHeldError, match="in use by another job"):
        lock_at(folder, same_run_is_restart=True).acquire()


def test_a_lock_ends_with_its_killed_process(folder):
    folder.mkdir(parents=True, exist_ok=True)
    child = hold_in_child(str(folder / "job.lock"))
    try:
        with pytest.raises(LockHeldError, match=f"process {child.pid} on "):
            lock_at(folder).acquire()
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    left = LockHolder.from_json((folder / "job.lock").read_text())
    assert left.pid == child.pid and left.expires_at > time.time()  # not stale yet
    with lock_at(folder) as lock:  # its process is gone: taken over at once
        lock.check()


def test_the_holder_renews_its_heartbeat(tmp_path):
    lock = lock_at(tmp_path, heartbeat_s=0.05, stale_after_s=1.0)
    with lock:
        first = LockHolder.from_json(lock.path.read_text()).heartbeat
        time.sleep(0.3)
        assert LockHolder.from_json(lock.path.read_text()).heartbeat > first


def test_waiting_for_a_lock_gives_up_after_wait_s(tmp_path):
    with lock_at(tmp_path):
        started = time.monotonic()
        with pytest.raises(LockHeldError):
            lock_at(tmp_path, wait_s=0.3).acquire()
        assert time.monotonic() - started >= 0.3


def test_a_stalled_holder_is_taken_over_and_learns_it(folder):
    stalled = lock_at(folder, heartbeat_s=0.2, stale_after_s=0.6)
    stalled.acquire()
    stalled._stop.set()  # a holder that stalls: no renewal comes
    time.sleep(0.7)
    with lock_at(folder) as successor:
        # The stalled holder's next renewal finds the lock changed under it.
        assert not stalled._renew_once()
        with pytest.raises(LockLostError):
            stalled.check()
        successor.check()
        holder = LockHolder.from_json((folder / "job.lock").read_text())
        assert holder is not None and holder.token == successor.token
    stalled.release()  # it is no longer its lock: nothing to remove
    assert not (folder / "job.lock").exists()


def test_two_takeovers_of_one_dead_holder_cannot_both_win(s3_bucket):
    url = f"{s3_bucket}/LOCK"
    dead = dataclasses.replace(LockHolder.this_process(), host="elsewhere", expires_at=0.0)
    as_path(url).write_text(dead.to_json())
    store = _Bucket(as_path(url))
    _, etag = store.read()
    # Both read the dead holder; the first replaces it; the second's replacement then fails.
    assert store.replace(LockHolder.this_process().to_json(), etag) is not None
    assert store.replace(LockHolder.this_process().to_json(), etag) is None


def test_a_store_without_conditional_writes_is_refused_where_required():
    with pytest.raises(StorageError, match="needs conditional writes"):
        Lock("memory://registry/LOCK", owner="registry", conditional_writes_required=True)


def test_a_folder_that_cannot_be_written_is_one_line(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(UserInputError) as error:
        lock_at(blocker / "job").acquire()
    assert str(error.value) == f"training.save_dir: cannot write to {blocker}/job: Not a directory"
