"""The lease lock: exclusive on a local disk (flock, freed when its process dies) and on the
loopback S3 server (conditional writes, expiry, stale holders, lost renewals)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tml.storage import Holder, Lease, LeaseHeldError, LeaseLostError, as_path

REPO = Path(__file__).resolve().parents[3]
HOLD = (
    "import sys, time; from tml.storage import Lease; "
    "lease = Lease(sys.argv[1]); lease.acquire(); print('held', flush=True); time.sleep(60)"
)


def hold_in_child(path: str) -> subprocess.Popen:
    """A process that takes the lease and sleeps holding it."""
    child = subprocess.Popen(
        [sys.executable, "-c", HOLD, path],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout.readline().strip() == "held"
    return child


def test_a_local_lease_is_exclusive_until_released(tmp_path):
    path = tmp_path / "registry" / "LOCK"
    first = Lease(path)
    first.acquire()
    with pytest.raises(LeaseHeldError, match=f"held by pid {os.getpid()} on "):
        Lease(path).acquire()
    assert first.holder() is not None and first.holder().pid == os.getpid()
    first.release()
    assert Lease(path).holder() is None
    with Lease(path) as second:
        second.check()


def test_a_local_lease_ends_with_its_killed_process(tmp_path):
    path = str(tmp_path / "LOCK")
    child = hold_in_child(path)
    try:
        with pytest.raises(LeaseHeldError, match=f"pid {child.pid}"):
            Lease(path).acquire()
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    with Lease(path):  # the kernel dropped the dead holder's lock
        pass


def test_waiting_for_a_lease_gives_up_after_wait_s(tmp_path):
    path = tmp_path / "LOCK"
    with Lease(path):
        started = time.monotonic()
        with pytest.raises(LeaseHeldError):
            Lease(path, wait_s=0.3).acquire()
        assert time.monotonic() - started >= 0.3


def test_a_bucket_lease_is_exclusive_and_released(s3_bucket):
    url = f"{s3_bucket}/registry/LOCK"
    with Lease(url, duration_s=30) as first:
        with pytest.raises(LeaseHeldError, match="lease until"):
            Lease(url, duration_s=30).acquire()
        first.check()
    assert not as_path(url).exists()
    with Lease(url, duration_s=30):
        assert as_path(url).exists()


def test_an_expired_bucket_lease_is_taken_over_and_its_holder_learns_it(s3_bucket):
    url = f"{s3_bucket}/LOCK"
    stalled = Lease(url, duration_s=0.6)
    stalled.acquire()
    stalled._stop.set()  # a holder that stalls: no renewal comes
    time.sleep(0.7)
    with Lease(url, duration_s=30) as successor:
        # The stalled holder's next renewal finds the lease changed under it.
        assert not stalled._renew_once()
        with pytest.raises(LeaseLostError):
            stalled.check()
        successor.check()
        holder = Holder.from_json(as_path(url).read_text())
        assert holder is not None and holder.owner == successor.owner


def test_a_bucket_lease_of_a_dead_process_on_this_host_is_taken_at_once(s3_bucket):
    url = f"{s3_bucket}/LOCK"
    child = hold_in_child(url)
    child.send_signal(signal.SIGKILL)
    child.wait()
    left = json.loads(as_path(url).read_text())
    assert left["pid"] == child.pid and left["expires_at"] > time.time()  # not expired yet
    with Lease(url, duration_s=30) as lease:
        lease.check()


def test_two_takeovers_of_one_stale_lease_cannot_both_win(s3_bucket):
    url = f"{s3_bucket}/LOCK"
    stale = Holder(owner="gone", host="elsewhere", pid=1, expires_at=time.time() - 1)
    as_path(url).write_text(stale.to_json())
    first, second = Lease(url, duration_s=30), Lease(url, duration_s=30)
    _, etag = first._read_remote()
    # Both read the stale lease; the first replaces it; the second's replacement then fails.
    assert first._put(first._me(expires=True).to_json().encode(), IfMatch=etag) is not None
    assert second._put(second._me(expires=True).to_json().encode(), IfMatch=etag) is None
