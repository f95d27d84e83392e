"""Faults through the real launcher (docker/entrypoint.sh -> torchrun -> 2 Gloo ranks): a rank
killed with SIGKILL is restarted, a stop signal checkpoints and exits 0, and either way the job
ends exactly where an uninterrupted one does."""

from __future__ import annotations

import contextlib
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from projects.home.recap.config import RecapConfig
from tests.projects.home.recap.distributed_jobs import full_parameters
from tml.checkpoint import complete_steps
from tml.core.config import load_config_from_yaml

pytestmark = pytest.mark.slow

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
    except subprocess.TimeoutExpired:
        # torchrun runs in a process group of its own (the launcher's job control).
        for pid in [*descendants(process.pid), process.pid]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        output, _ = process.communicate()
        pytest.fail(f"the job hung for {timeout} s:\n{output[-4000:]}")
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


def assert_bit_equal(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert got.keys() == want.keys()
    differing = [name for name in want if not torch.equal(got[name], want[name])]
    assert not differing, f"parameters differ from the uninterrupted run: {differing}"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """Training data for the jobs of this module."""
    run_dir = tmp_path_factory.mktemp("faults")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "projects.home.recap.tools.generate_random_data",
            "--config_path",
            str(CONFIG),
            "--num_examples",
            "640",
            "--num_files",
            "2",
            "--row_group_size",
            "64",
        ],
        cwd=REPO,
        env=environment(run_dir),
        check=True,
        capture_output=True,
    )
    return run_dir


@pytest.fixture(scope="module")
def uninterrupted(run_dir) -> dict[str, torch.Tensor]:
    """The parameters at the last step of a job nothing happened to."""
    save_dir = run_dir / "uninterrupted"
    process = launch(run_dir, save_dir)
    output = finish(process)
    assert process.returncode == 0, output[-4000:]
    return full_parameters(job_config(run_dir, save_dir), STEPS)


def test_a_killed_rank_is_restarted_and_the_job_ends_exactly(run_dir, uninterrupted):
    choice = random.Random()
    after_step = choice.choice([10, 20, 30])
    save_dir = run_dir / f"killed_after_{after_step}"
    process = launch(run_dir, save_dir, MAX_RESTARTS="2")
    wait_for(save_dir / "checkpoints" / f"step_{after_step}" / "COMPLETE", process)
    time.sleep(choice.uniform(0.0, 0.2))
    ranks = workers(process.pid)
    assert len(ranks) == 2, ranks
    victim = choice.choice(ranks)
    os.kill(victim, signal.SIGKILL)
    output = finish(process)
    assert process.returncode == 0, output[-4000:]
    assert "resumed from step" in output, output[-4000:]
    assert_bit_equal(full_parameters(job_config(run_dir, save_dir), STEPS), uninterrupted)


def stopped_step(output: str) -> int:
    match = re.search(r"stopped at step (\d+) with a checkpoint", output)
    assert match, output[-4000:]
    return int(match.group(1))


def test_a_stop_signal_checkpoints_exits_0_and_the_job_resumes_exactly(run_dir, uninterrupted):
    save_dir = run_dir / "preempted"
    checkpoints = save_dir / "checkpoints"
    grace_s = 25.0  # training.preemption_grace_period_in_s's default

    # SIGTERM to the launcher, as Kubernetes sends it to a container's first process.
    process = launch(run_dir, save_dir)
    wait_for(checkpoints / "step_10" / "COMPLETE", process)
    signalled = time.monotonic()
    process.send_signal(signal.SIGTERM)
    output = finish(process)
    assert process.returncode == 0, output[-4000:]
    assert time.monotonic() - signalled < grace_s
    first = stopped_step(output)
    assert 10 <= first < STEPS and complete_steps(checkpoints)[-1] == first
    assert re.search(r"rank [01] received SIGTERM: every rank stops after step", output)

    # SIGUSR1 to one rank only (as Slurm's --signal may come): the other stops at the same step.
    process = launch(run_dir, save_dir)
    after = (first // CHECKPOINT_EVERY + 1) * CHECKPOINT_EVERY
    assert after < STEPS
    wait_for(checkpoints / f"step_{after}" / "COMPLETE", process)
    victim = random.choice(workers(process.pid))
    os.kill(victim, signal.SIGUSR1)
    output = finish(process)
    assert process.returncode == 0, output[-4000:]
    second = stopped_step(output)
    assert after <= second < STEPS and complete_steps(checkpoints)[-1] == second
    assert "received SIGUSR1" in output

    process = launch(run_dir, save_dir)
    output = finish(process)
    assert process.returncode == 0, output[-4000:]
    assert f"resumed from step {second}" in output
    assert_bit_equal(full_parameters(job_config(run_dir, save_dir), STEPS), uninterrupted)


def test_a_hung_rank_fails_the_job_within_the_step_timeout_naming_it(run_dir, tmp_path):
    marker = tmp_path / "hang_started"
    injection = Path(__file__).parent / "fixtures" / "hang_injection"
    process = launch(
        run_dir,
        tmp_path / "hung",
        "training.step_timeout_in_s=5",
        # The peer waits in a collective; its own timeout must not be what ends the job.
        "training.collective_timeout_in_s=300",
        MAX_RESTARTS="0",
        PYTHONPATH=os.pathsep.join([str(injection), str(REPO), os.environ.get("PYTHONPATH", "")]),
        TML_TEST_HANG_RANK="1",
        TML_TEST_HANG_AT_STEP="5",
        TML_TEST_HANG_MARKER=str(marker),
    )
    wait_for(marker, process)
    hung = time.monotonic()
    output = finish(process, timeout=120)
    assert process.returncode != 0
    assert time.monotonic() - hung < 5 + 20, output[-4000:]
    assert re.search(
        r"rank 1: no training step finished in 5 s \(training.step_timeout_in_s\), stuck in "
        r"step 5 at \S*hang_injection/sitecustomize.py:\d+ \(hang_after_step\):",
        output,
    ), output[-4000:]
    # Its peer, if its watchdog fired too, says it was only waiting.
    for line in output.splitlines():
        if "rank 0: no training step finished" in line:
            assert "waiting for another rank in a collective" in line, line


def test_a_mistake_one_rank_finds_is_its_one_line_and_the_peer_stops_quietly(run_dir, tmp_path):
    shutil.copytree(run_dir / "data", tmp_path / "data")
    # Rank 1 reads the second file, left with a schema and no rows.
    second = sorted((tmp_path / "data" / "train").glob("*.parquet"))[1]
    pq.write_table(pq.read_table(second).slice(0, 0), second)
    process = launch(tmp_path, tmp_path / "model", MAX_RESTARTS="0")
    output = finish(process)
    assert process.returncode != 0
    errors = [line for line in output.splitlines() if "error:" in line]
    assert len(errors) == 1, output[-4000:]
    assert errors[0].startswith("[rank 1] error: ") and "none of the 2 files" in errors[0]
    assert "[rank 0] stopped: another rank went away" in output
    assert "[rank0]: Traceback" not in output and "GLHF" not in output, output[-4000:]
