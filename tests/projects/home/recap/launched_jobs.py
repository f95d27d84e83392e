"""Jobs started through the product's launcher (docker/entrypoint.sh -> torchrun -> 2 Gloo
ranks) on tiny generated data, with handles on their processes to signal and kill; used by
test_fault_tolerance.py and benchmarks/restarts.py."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from projects.home.recap.config import RecapConfig
from tests.projects.home.recap.tiny_job import generate
from tml.core.config import load_config_from_yaml

REPO = Path(__file__).resolve().parents[4]
CONFIG = Path(__file__).parent / "fixtures" / "tiny_e2e.yaml"
ENTRYPOINT = REPO / "docker" / "entrypoint.sh"
STEPS = 60
CHECKPOINT_EVERY = 10
SHORT_JOB = [
    f"training.num_train_steps={STEPS}",
    f"training.checkpoint_every_n={CHECKPOINT_EVERY}",
    "training.num_eval_steps=0",
    "training.train_log_every_n=10",
]
MAIN_MODULE = "projects.home.recap.main"


def environment(run_dir: Path, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        # The launcher finds this interpreter's torchrun, as `make run` finds the venv's.
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "TML_TEST_RUN": str(run_dir),
        "OMP_NUM_THREADS": "1",
        "CUDA_VISIBLE_DEVICES": "",
        "NPROC_PER_NODE": "2",
        **extra,
    }


def job_config(run_dir: Path, save_dir: Path) -> RecapConfig:
    os.environ["TML_TEST_RUN"] = str(run_dir)
    try:
        return load_config_from_yaml(
            RecapConfig, CONFIG, [*SHORT_JOB, f"training.save_dir={save_dir}"]
        )
    finally:
        del os.environ["TML_TEST_RUN"]


def launch(run_dir: Path, save_dir: Path, *overrides: str, **env: str) -> subprocess.Popen:
    """The product's launcher, in its own session so that a failed test can end all of it."""
    return subprocess.Popen(
        [
            "bash",
            str(ENTRYPOINT),
            "--config_path",
            str(CONFIG),
            *SHORT_JOB,
            f"training.save_dir={save_dir}",
            *overrides,
        ],
        cwd=REPO,
        env=environment(run_dir, **env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def finish(process: subprocess.Popen, timeout: float = 240) -> str:
    """Waits for the launcher; on a timeout kills it and everything under it, and fails."""
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired as timed_out:
        # torchrun runs in a process group of its own (the launcher's job control).
        for pid in [*descendants(process.pid), process.pid]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        output, _ = process.communicate()
        raise AssertionError(f"the job hung for {timeout} s:\n{output[-4000:]}") from timed_out
    return output


def descendants(root: int) -> list[int]:
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found, pending = [], [root]
    while pending:
        parent = pending.pop()
        children = [pid for pid, ppid in parents.items() if ppid == parent]
        found.extend(children)
        pending.extend(children)
    return found


def workers(launcher: int) -> list[int]:
    """The training processes under a launcher (torchrun's children, not torchrun itself)."""
    found = []
    for pid in descendants(launcher):
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except (FileNotFoundError, ProcessLookupError):
            continue
        parts = command.split("\0")
        launcher_process = any(
            "torchrun" in part or "torch.distributed.run" in part for part in parts
        )
        if MAIN_MODULE in parts and not launcher_process:
            found.append(pid)
    return sorted(found)


def wait_for(path: Path, process: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, f"the job ended before {path} appeared"
        assert time.monotonic() < deadline, f"no {path} after {timeout} s"
        time.sleep(0.02)


def differing(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> list[str]:
    """The names of the parameters that are not bit-equal (or not in both)."""
    names = sorted(got.keys() | want.keys())
    return [n for n in names if n not in got or n not in want or not torch.equal(got[n], want[n])]


def generate_training_data(run_dir: Path) -> None:
    """The tiny jobs' data under ``run_dir/data`` (640 training examples in 2 files)."""
    generate(run_dir)
