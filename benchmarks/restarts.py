"""Automatic restart after kill -9, measured on the real launcher.

    .venv/bin/python benchmarks/restarts.py [--kills 20] [--seed 0]

Generates tiny data, trains a 2-rank CPU job (docker/entrypoint.sh -> torchrun, 60 steps, a
checkpoint every 10) once without interruption, then --kills times kills a random rank with
SIGKILL at a random point (after a random checkpoint, plus up to 0.3 s) under MAX_RESTARTS=2.
Prints, for each kill and in total, whether the job finished by itself with parameters
bit-equal to the uninterrupted run, and the time lost against it (the restart's start-up and
the steps since the checkpoint it resumed from). Each kill takes about a minute here.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

# The launched-job helpers live with the tests that share them.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

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


def timed_job(run_dir: Path, save_dir: Path, **env: str) -> tuple[float, str, int | None]:
    started = time.monotonic()
    process = launch(run_dir, save_dir, **env)
    try:
        output = finish(process, timeout=300)
    except AssertionError as hung:
        return time.monotonic() - started, str(hung), None
    return time.monotonic() - started, output, process.returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    choose = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as temporary:
        run_dir = Path(temporary)
        generate_training_data(run_dir)
        baseline_s, output, status = timed_job(run_dir, run_dir / "uninterrupted")
        if status != 0:
            sys.exit(f"the uninterrupted job failed:\n{output[-3000:]}")
        reference = full_parameters(job_config(run_dir, run_dir / "uninterrupted"), STEPS)
        print(f"uninterrupted job: {baseline_s:.1f} s")
        exact, lost = 0, []
        for kill in range(args.kills):
            after = choose.randrange(CHECKPOINT_EVERY, STEPS, CHECKPOINT_EVERY)
            save_dir = run_dir / f"kill_{kill}"
            started = time.monotonic()
            process = launch(run_dir, save_dir, MAX_RESTARTS="2")
            wait_for(save_dir / "checkpoints" / f"step_{after}" / "COMPLETE", process)
            time.sleep(choose.uniform(0.0, 0.3))
            victim = choose.choice(workers(process.pid))
            rank = rank_of(victim)
            os.kill(victim, signal.SIGKILL)
            try:
                output = finish(process, timeout=300)
                status: int | None = process.returncode
            except AssertionError:
                status = None
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
