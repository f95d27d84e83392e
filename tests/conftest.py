"""Fixtures shared across the test tree."""

import sys
from pathlib import Path

import pytest

from tml.distributed import DistributedEnvironment, init_distributed, shutdown_distributed

# Worker functions of multi-process tests live in modules under tests/ that spawned children
# import by name, so the repository root must be importable however pytest was started.
ROOT = str(Path(__file__).resolve().parents[1])
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


@pytest.fixture
def single_process_group(monkeypatch) -> DistributedEnvironment:
    """A one-member Gloo process group, as a job started without torchrun gets."""
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    environment = init_distributed("cpu")
    yield environment
    shutdown_distributed()
