"""Faults through the real launcher (docker/entrypoint.sh -> torchrun -> 2 Gloo ranks): a rank
killed with SIGKILL is restarted, a stop signal checkpoints and exits 0, and either way the job
ends exactly where an uninterrupted one does."""

from __future__ import annotations

import os
import random
import re
import shutil
import signal
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from tests.projects.home.recap.distributed_jobs import full_parameters
from tests.projects.home.recap.launched_jobs import (
    CHECKPOINT_EVERY,
    REPO,
    STEPS,
    differing,
    finish,
    generate_training_data,
    job_config,
    launch,
    wait_for,
    workers,
)
from tml.checkpoint import complete_steps

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """Training data for the jobs of this module."""
    run_dir = tmp_path_factory.mktemp("faults")
    generate_training_data(run_dir)
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
    assert not differing(full_parameters(job_config(run_dir, save_dir), STEPS), uninterrupted)


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
    assert not differing(full_parameters(job_config(run_dir, save_dir), STEPS), uninterrupted)


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


def test_a_mistake_one_rank_finds_is_its_one_line_the_peer_stops_quietly_and_none_retries(
    run_dir, tmp_path
):
    shutil.copytree(run_dir / "data", tmp_path / "data")
    # Rank 1 reads the second file, whose favorite labels all read 2.
    second = sorted((tmp_path / "data" / "train").glob("*.parquet"))[1]
    table = pq.read_table(second)
    column = "recap.engagement.is_favorited"
    bad = pa.array([2] * table.num_rows, table.schema.field(column).type)
    table = table.set_column(table.schema.get_field_index(column), column, bad)
    pq.write_table(table, second, row_group_size=64)
    process = launch(tmp_path, tmp_path / "model")  # with restarts (MAX_RESTARTS 3)
    output = finish(process)
    assert process.returncode == 2, output[-4000:]
    errors = [line for line in output.splitlines() if "error:" in line]
    assert len(errors) == 1, output[-4000:]
    # (rank 0's progress bar may start the same line)
    assert re.search(
        rf"\[rank 1\] error: {re.escape(str(second))}: column '{column}': 64 rows of row group "
        r"\d hold a label other than 0 or 1, the first at row \d+ of the file \(2\)$",
        errors[0],
    ), errors[0]
    assert "[rank 0] stopped: another rank went away" in output
    # Not retried: torchrun is stopped before it restarts anyone, and says nothing.
    assert "will restart worker group" not in output and "ChildFailedError" not in output
    assert "[rank0]: Traceback" not in output and "GLHF" not in output, output[-4000:]
