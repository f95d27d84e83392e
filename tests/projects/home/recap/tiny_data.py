"""The tiny end-to-end jobs' data (fixtures/tiny_e2e.yaml), generated once per test session.

The generator runs in this process and every job gets its own copy: a generator process per job
would spend most of its time importing torch.
"""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import tempfile
from pathlib import Path

from projects.home.recap.tools import generate_random_data

CONFIG = Path(__file__).parent / "fixtures" / "tiny_e2e.yaml"


def generate(run_dir: Path) -> None:
    """640 training examples and 300 validation examples (2 files each, row groups of 64)
    under ``run_dir/data``, where the tiny config with ``TML_TEST_RUN=run_dir`` reads them."""
    shutil.copytree(_generated() / "data", Path(run_dir) / "data")


@functools.cache
def _generated() -> Path:
    root = Path(tempfile.mkdtemp(prefix="tml-test-data-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    common = ["--config_path", str(CONFIG), "--num_files", "2", "--row_group_size", "64"]
    saved = os.environ.get("TML_TEST_RUN")
    os.environ["TML_TEST_RUN"] = str(root)
    try:
        for partition in (
            ["--num_examples", "640"],
            ["--num_examples", "300", "--partition", "all_tasks"],
        ):
            status = generate_random_data.main([*common, *partition])
            assert status == 0, f"generating {partition} failed"
    finally:
        if saved is None:
            del os.environ["TML_TEST_RUN"]
        else:
            os.environ["TML_TEST_RUN"] = saved
    return root
