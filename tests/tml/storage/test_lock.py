"""The folder lock: a live holder keeps others out, a dead one is taken over, locally and on a
bucket (the loopback S3 server of tests/conftest.py)."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import time

import pytest

from tml.core.errors import UserInputError
from tml.storage import as_path
from tml.storage.lock import FolderInUseError, FolderLock, LockHolder


@pytest.fixture(params=["local", "bucket"])
def folder(request, tmp_path):
    if request.param == "bucket":
        return as_path(request.getfixturevalue("s3_bucket")) / "job"
    return tmp_path / "job"


def lock_at(folder, **timing) -> FolderLock:
    return FolderLock(folder / "job.lock", owner="training.save_dir", **timing)


def plant(folder, **changes) -> LockHolder:
    """A lock file as another job would have left it."""
    holder = dataclasses.replace(LockHolder.this_process(), **changes)
    (folder / "job.lock").write_text(holder.to_json())
    return holder


def test_a_live_holder_keeps_a_second_job_out_until_it_releases(folder):
    with lock_at(folder):
        holder = LockHolder.from_json((folder / "job.lock").read_text())
        assert holder.same_process(LockHolder.this_process())
        with pytest.raises(FolderInUseError) as error:
            lock_at(folder).acquire()
        assert re.fullmatch(
            rf"training.save_dir: {re.escape(str(folder))} is in use by another job \(process "
            rf"{holder.pid} on {re.escape(holder.host)}, alive \d+ s ago\); give this job another "
            r"folder, or stop that one \(a dead job's lock \S+ is taken over once its heartbeat "
            r"is 120 s old\)",
            str(error.value),
        )
    assert not (folder / "job.lock").exists()
    with lock_at(folder):
        pass


def test_a_dead_jobs_lock_is_taken_over(folder, caplog):
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
    # On another host, silent for longer than stale_after_s.
    plant(folder, run="other-launch", host="elsewhere", heartbeat=time.time() - 121)
    with lock_at(folder):
        pass
    # On another host, fresh, but an earlier round of this launch (a torchrun restart).
    plant(folder, host="elsewhere")
    with lock_at(folder):
        pass
    # On another host, fresh, another launch: alive as far as anyone here can tell.
    plant(folder, run="other-launch", host="elsewhere")
    with pytest.raises(FolderInUseError, match="in use by another job"):
        lock_at(folder).acquire()


def test_the_holder_renews_its_heartbeat(tmp_path):
    lock = lock_at(tmp_path, heartbeat_s=0.05, stale_after_s=1.0)
    with lock:
        first = LockHolder.from_json(lock.path.read_text()).heartbeat
        time.sleep(0.3)
        assert LockHolder.from_json(lock.path.read_text()).heartbeat > first


def test_a_folder_that_cannot_be_written_is_one_line(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(UserInputError) as error:
        lock_at(blocker / "job").acquire()
    assert str(error.value) == f"training.save_dir: cannot write to {blocker}/job: Not a directory"
