"""Fixtures shared by the ranker's end-to-end tests."""

from pathlib import Path

import pytest

from tests.projects.home.recap.tiny_job import SCORE, generate, run, run_tiny_job


@pytest.fixture(scope="session")
def tiny_job(tmp_path_factory) -> Path:
    """The tiny job run once through the real command line on local disk (see
    ``run_tiny_job``), its predictions scored into ``scored.json``; returns its run folder."""
    run_dir = tmp_path_factory.mktemp("e2e")
    generate(run_dir)
    run_tiny_job(run_dir)
    run([*SCORE, "--json", str(run_dir / "scored.json")], run_dir)
    return run_dir
