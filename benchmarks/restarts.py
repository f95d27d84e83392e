"""Automatic restart after kill -9, measured on the real launcher.

    .venv/bin/python benchmarks/restarts.py [--kills 20] [--seed 0] [--agents 2]

Generates tiny data, trains a 2-rank CPU job (docker/entrypoint.sh -> torchrun, 60 steps, a
checkpoint every 10) once without interruption, then --kills times kills a random rank with
SIGKILL at a random point (after a random checkpoint, plus up to 0.3 s) under MAX_RESTARTS=2.
Prints, for each kill and in total, whether the job finished by itself with parameters
bit-equal to the uninterrupted run, and the time lost against it (the restart's start-up and
the steps since the checkpoint it resumed from). Each kill takes about a minute here.

With --agents 2 the same 2 ranks run as two nodes on loopback: two launchers (NNODES=2,
NPROC_PER_NODE=1, one c10d rendezvous on 127.0.0.1), each with its own torchrun agent; the
killed worker's agent and the other one must agree on the restart.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# The launched-job helpers live with the tests that share them.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.helpers.multiprocess import free_port
from tests.projects.home.recap.distributed_jobs import full_parameters
from tests.projects.home.recap.launched_jobs import (
    CHECKPOINT_EVERY,
    STEPS,
    differing,
    finish,
    generate_training_data,
    job_config,
    launch,
    wait_for,
    workers,
)


def rank_of(pid: int) -> str:
    try:
        variables = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except FileNotFoundError:
        return "?"
    for variable in variables:
        if variable.startswith(b"RANK="):
            return variable[5:].decode()
    return "?"


def launch_job(run_dir: Path, save_dir: Path, agents: int, **env: str) -> list[subprocess.Popen]:
    """The 2-rank job on one launcher, or on ``agents`` launchers of 2 // agents ranks each
    that meet at a c10d rendezvous on loopback (as nodes of one job would)."""
    if agents == 1:
        return [launch(run_dir, save_dir, **env)]
    port = free_port()
    shape = {
        "NNODES": str(agents),
        "NPROC_PER_NODE": str(2 // agents),
        "RDZV_ENDPOINT": f"127.0.0.1:{port}",
        "RDZV_ID": f"restarts-{port}",  # a fresh job id per run: no stale rendezvous state
    }
    return [launch(run_dir, save_dir, **shape, **env) for _ in range(agents)]


def finish_job(processes: list[subprocess.Popen]) -> tuple[str, int | None]:
    """Every launcher's output and the worst exit status (None when one hung)."""
    outputs, statuses = [], []
    for process in processes:
        try:
            outputs.append(finish(process, timeout=300))
            statuses.append(process.returncode)
        except AssertionError as hung:
            outputs.append(str(hung))
            statuses.append(None)
    if None in statuses:
        return "\n".join(outputs), None
    return "\n".join(outputs), max(statuses, key=abs)


def timed_job(
    run_dir: Path, save_dir: Path, agents: int, **env: str
) -> tuple[float, str, int | None]:
    started = time.monotonic()
    output, status = finish_job(launch_job(run_dir, save_dir, agents, **env))
    return time.monotonic() - started, output, status


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--agents",
        type=int,
        choices=[1, 2],
        default=1,
        help="torchrun agents the 2 ranks are spread over (2: two nodes on loopback)",
    )
    args = parser.parse_args()
    choose = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as temporary:
        run_dir = Path(temporary)
        generate_training_data(run_dir)
        baseline_s, output, status = timed_job(run_dir, run_dir / "uninterrupted", args.agents)
        if status != 0:
            sys.exit(f"the uninterrupted job failed:\n{output[-3000:]}")
        reference = full_parameters(job_config(run_dir, run_dir / "uninterrupted"), STEPS)
        print(f"uninterrupted job on {args.agents} agent(s): {baseline_s:.1f} s")
        exact, lost = 0, []
        for kill in range(args.kills):
            after = choose.randrange(CHECKPOINT_EVERY, STEPS, CHECKPOINT_EVERY)
            save_dir = run_dir / f"kill_{kill}"
            started = time.monotonic()
            processes = launch_job(run_dir, save_dir, args.agents, MAX_RESTARTS="2")
            wait_for(save_dir / "checkpoints" / f"step_{after}" / "COMPLETE", processes[0])
            time.sleep(choose.uniform(0.0, 0.3))
            victim = choose.choice([pid for p in processes for pid in workers(p.pid)])
            rank = rank_of(victim)
            os.kill(victim, signal.SIGKILL)
            output, status = finish_job(processes)
            if status != 0:
                print(output[-3000:], flush=True)
            elapsed = time.monotonic() - started
            same = status == 0 and not differing(
                full_parameters(job_config(run_dir, save_dir), STEPS), reference
            )
            exact += same
            lost.append(elapsed - baseline_s)
            outcome = "hung" if status is None else f"exit {status}"
            print(
                f"kill {kill + 1:2d}: rank {rank} after checkpoint {after:2d}: {outcome}, "
                f"{'bit-equal' if same else 'NOT bit-equal'}, {elapsed:.1f} s "
                f"({elapsed - baseline_s:+.1f} s)",
                flush=True,
            )
            shutil.rmtree(save_dir, ignore_errors=True)
        print(
            f"finished exactly: {exact}/{args.kills}; time lost per kill: median "
            f"{statistics.median(lost):.1f} s, max {max(lost):.1f} s"
        )


if __name__ == "__main__":
    main()
