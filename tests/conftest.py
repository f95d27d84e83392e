"""Fixtures shared across the test tree."""

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from tml.distributed import DistributedEnvironment, init_distributed, shutdown_distributed

# Worker functions of multi-process tests live in modules under tests/ that spawned children
# import by name, so the repository root must be importable however pytest was started.
ROOT = str(Path(__file__).resolve().parents[1])
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skips the tests marked ``gpu`` where torch sees no CUDA device (CI, laptops): they run
    only where one is (``pytest -m gpu``, benchmarks/gpu_check.sh)."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device; torch sees none")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def _is_pytests_own(handler: logging.Handler) -> bool:
    return type(handler).__module__.startswith("_pytest")


@pytest.fixture(autouse=True)
def _restore_root_logging():
    """Command lines called in process set logging up for themselves: their handler writes to
    the test's captured stderr, which is closed after the test. The root logger is put back."""
    root = logging.getLogger()
    handlers = [handler for handler in root.handlers if not _is_pytests_own(handler)]
    level = root.level
    yield
    root.handlers[:] = [h for h in root.handlers if _is_pytests_own(h)] + handlers
    root.setLevel(level)


@pytest.fixture
def single_process_group(monkeypatch) -> DistributedEnvironment:
    """A one-member Gloo process group, as a job started without torchrun gets."""
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    environment = init_distributed("cpu")
    yield environment
    shutdown_distributed()


@contextlib.contextmanager
def _environment(variables: dict[str, str]) -> Iterator[None]:
    """Sets environment variables for the duration (child processes inherit them)."""
    saved = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _fresh_bucket(protocol: str, test_name: str) -> str:
    """An empty bucket named after the test on the ``protocol`` store; returns its URL."""
    import fsspec

    name = "t-" + "".join(c if c.isalnum() else "-" for c in test_name.lower())[:50]
    name = name.strip("-")
    fs = fsspec.filesystem(protocol)
    fs.invalidate_cache()
    if fs.exists(name):
        fs.rm(name, recursive=True)
    fs.mkdir(name)
    return f"{protocol}://{name}"


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3 server (behind a fault-injecting proxy) on loopback for the whole session, with
    fake credentials and its endpoint in the environment; stopped at the end."""
    from tests.helpers.s3_server import S3Server

    server = S3Server.start()
    with _environment(server.environment()):
        yield server
    server.stop()


@pytest.fixture
def s3_bucket(s3_server, request):
    """A fresh empty bucket named after the test; yields its URL (``s3://name``)."""
    url = _fresh_bucket("s3", request.node.name)
    s3_server.faults.reset()
    yield url
    s3_server.faults.reset()


@pytest.fixture(scope="session")
def gcs_server():
    """A Google Cloud Storage emulator on loopback for the whole session, gcsfs pointed at it
    without credentials (here and in child processes); stopped at the end. Skips where the
    ``gcs`` and ``dev`` extras (gcsfs, gcp-storage-emulator) are not installed."""
    pytest.importorskip("gcp_storage_emulator")
    from tests.helpers.gcs_server import GcsServer

    server = GcsServer.start()
    with _environment(server.environment()):
        # Both are read at import: set before gcsfs is first imported (below), and fsspec's
        # configuration is updated for this process, which imported fsspec already.
        pytest.importorskip("gcsfs")
        import fsspec.config

        saved_config = fsspec.config.conf.get("gs")
        fsspec.config.conf["gs"] = {**(saved_config or {}), "token": "anon"}
        yield server
        if saved_config is None:
            fsspec.config.conf.pop("gs", None)
        else:
            fsspec.config.conf["gs"] = saved_config
    server.stop()


@pytest.fixture
def gcs_bucket(gcs_server, request):
    """A fresh empty bucket named after the test; yields its URL (``gs://name``)."""
    yield _fresh_bucket("gs", request.node.name)
