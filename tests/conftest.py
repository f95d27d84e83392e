"""Fixtures shared across the test tree."""

import pytest

from tml.distributed import DistributedEnvironment, init_distributed, shutdown_distributed


@pytest.fixture
def single_process_group(monkeypatch) -> DistributedEnvironment:
    """A one-member Gloo process group, as a job started without torchrun gets."""
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    environment = init_distributed("cpu")
    yield environment
    shutdown_distributed()
