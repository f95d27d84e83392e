"""The shipped configs run as a user runs them, under torchrun on one GPU, for the gpu tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[4]
CONFIGS = REPO / "projects/home/recap/config"


def logged(save_dir: Path, name: str = "train") -> list[dict]:
    """The records of a job's ``<name>.jsonl`` metrics file."""
    return [json.loads(line) for line in (save_dir / f"{name}.jsonl").read_text().splitlines()]


def losses(save_dir: Path) -> list[float]:
    return [record["loss"] for record in logged(save_dir)]


def environment(run_dir: Path) -> dict[str, str]:
    """The shipped configs put data and jobs under $TML_RUN_DIR; one GPU, as a 1-GPU job has."""
    return {**os.environ, "TML_RUN_DIR": str(run_dir), "CUDA_VISIBLE_DEVICES": "0"}


def run(command: list[str], run_dir: Path, timeout: float = 600) -> str:
    """Runs ``command`` in the checkout; returns its stderr (the log), failing with its end."""
    result = subprocess.run(
        command, cwd=REPO, env=environment(run_dir), capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, f"{' '.join(command)}\n{result.stderr[-4000:]}"
    return result.stderr


def generate(config: Path, run_dir: Path, examples: int, *partition: str) -> None:
    """Random data for ``config`` in two files where the config reads it."""
    run(
        [
            sys.executable,
            "-m",
            "projects.home.recap.tools.generate_random_data",
            "--config_path",
            str(config),
            "--num_examples",
            str(examples),
            "--num_files",
            "2",
            *partition,
        ],
        run_dir,
    )


def torchrun(config: Path, run_dir: Path, *arguments: str) -> str:
    """``projects.home.recap.main`` with ``arguments`` under torchrun on one GPU; the log."""
    return run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "1",
            "-m",
            "projects.home.recap.main",
            "--config_path",
            str(config),
            *arguments,
        ],
        run_dir,
    )
