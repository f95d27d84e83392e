"""End-to-end training throughput of the real trainer, beside the model alone and the GEMM ceiling.

Run:  .venv/bin/python benchmarks/train_throughput.py [--steps 40] [--batch_size 512]
      [--processes 1 2] [--num_examples 24000] [--data_dir D]

For projects/home/recap/config/local_prod.yaml (production-shaped: 2117 continuous, 59 binary,
3 x 200 TwHIN, MaskNet 4 x 1024, ten towers), per dtype (fp32, bf16) and process count, all at the
same batch per rank, prints:

* the trainer: the real command under torchrun (Parquet loader, pipeline, optimizer groups,
  logging, a checkpoint at the end) on generated data, each process with its share of the
  cores. Two rates over all ranks, each the median over the logging intervals after the first
  (warm-up): from the step times the trainer logs, and from the wall clock between log lines
  (everything the loop does between steps included);
* the model alone: forward + backward + fused Adam on one in-memory batch on the trainer's path
  (``benchmarks/model_step.py``), in as many concurrent processes with the same threads each,
  summed; and the GEMM ceiling those processes measured in the same run (the square 2048^3
  GEMM's rate over the step's FLOPs, per process, summed);
* the trainer as a fraction of the model alone and of the ceiling;
* peak RSS: the largest process of the trainer's run, and of a model-alone process.

Rounds are not repeated here: read the ratios from one run, on a quiet machine (the load
average is printed at the start and the end).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from model_step import (
    DTYPES,
    SQUARE,
    describe_machine,
    load_average,
    make_optimizer_with_copies,
    multiply_accumulates,
    peak_rss_mib,
    square_gemm_seconds,
    synthetic_batch,
    train_step,
)

from projects.home.recap.build import build_whole_model, model_input_spec
from projects.home.recap.config import RecapConfig
from projects.home.recap.job_folder import JobFolder, MetricStream
from tml.core.config import load_config_from_yaml
from tml.training.host_memory import retain_freed_memory

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "projects/home/recap/config/local_prod.yaml"
TARGET_OF_CEILING = 0.85  # the trainer, 1 process, batch 512, of each dtype's square ceiling


@dataclasses.dataclass(frozen=True)
class TrainerRun:
    """Global examples/s of one trainer run and its largest process's peak RSS."""

    examples_per_second: float  # from the logged step times
    wall_examples_per_second: float  # from the wall clock between log lines
    peak_rss_mib: float


@dataclasses.dataclass(frozen=True)
class ModelAlone:
    """The model alone in one process: examples/s, the square GEMM ceiling, peak RSS."""

    examples_per_second: float
    ceiling_examples_per_second: float
    peak_rss_mib: float


def model_alone_worker(dtype_name: str, batch_size: int, steps: int) -> ModelAlone:
    """Runs in its own process (``--model_alone_worker``) with the threads it was given."""
    retain_freed_memory()
    config = load_config_from_yaml(RecapConfig, CONFIG)
    spec = model_input_spec(config)
    torch.manual_seed(0)
    model = build_whole_model(config, spec)
    batch = synthetic_batch(spec, batch_size, len(config.model.tasks))
    dtype = DTYPES[dtype_name]
    optimizer, _ = make_optimizer_with_copies(model, fused=True, copies=dtype is not None)
    for _ in range(3):
        train_step(model, optimizer, batch, dtype)
    # Steps and the square GEMM alternate, so a slower stretch of the machine hits both alike.
    steps_seconds, square_seconds = [], []
    for _ in range(steps):
        started = time.perf_counter()
        train_step(model, optimizer, batch, dtype)
        steps_seconds.append(time.perf_counter() - started)
        square_seconds.append(square_gemm_seconds(dtype or torch.float32))
    step = statistics.median(steps_seconds)
    square = statistics.median(square_seconds)
    flops = 6 * multiply_accumulates(model)
    ceiling = (2 * SQUARE**3 / square) / flops
    return ModelAlone(batch_size / step, ceiling, peak_rss_mib())


def model_alone(processes: int, dtype: str, batch_size: int, steps: int) -> ModelAlone:
    """``processes`` concurrent model-alone workers, each with its share of the cores, summed."""
    threads = max(1, (os.cpu_count() or 1) // processes)
    command = [
        sys.executable,
        __file__,
        "--model_alone_worker",
        dtype,
        "--batch_size",
        str(batch_size),
        "--steps",
        str(steps),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    workers = [
        subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)
        for _ in range(processes)
    ]
    results = []
    for worker in workers:
        output, _ = worker.communicate()
        if worker.returncode != 0:
            raise RuntimeError(f"model-alone worker failed with exit code {worker.returncode}")
        results.append(ModelAlone(**json.loads(output.strip().splitlines()[-1])))
    return ModelAlone(
        sum(r.examples_per_second for r in results),
        sum(r.ceiling_examples_per_second for r in results),
        max(r.peak_rss_mib for r in results),
    )


def generate(data_dir: Path, num_examples: int) -> None:
    if any(data_dir.glob("*.parquet")):
        return
    subprocess.run(
        [
            sys.executable,
            "-m",
            "projects.home.recap.tools.generate_random_data",
            "--config_path",
            str(CONFIG),
            "--num_examples",
            str(num_examples),
            "--num_files",
            "4",
            "--output_dir",
            str(data_dir),
        ],
        cwd=REPO,
        check=True,
        capture_output=True,
    )


# Runs a command and prints, last on stderr, the peak RSS (KiB) of the largest process it waited
# for (torchrun waits for its workers), so each run reports its own peak.
_PEAK_RSS_WRAPPER = (
    "import resource, subprocess, sys; code = subprocess.call(sys.argv[1:]); "
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); "
    "sys.exit(code)"
)


def end_to_end(
    processes: int,
    dtype: str,
    batch_size: int,
    steps: int,
    data_dir: Path,
    scratch: Path,
    log_every: int = 5,
) -> TrainerRun:
    """The trainer under torchrun; rates over all ranks, medians of the logging intervals after
    the first (the wall-clock ones start at the first log line, so they skip it too)."""
    save_dir = scratch / f"run_{processes}_{dtype}_{batch_size}"
    overrides = [
        f"training.save_dir={save_dir}",
        f"training.num_train_steps={steps}",
        f"training.train_log_every_n={log_every}",
        f"training.checkpoint_every_n={steps}",
        "training.num_eval_steps=0",
        f"training.bf16_autocast={'true' if dtype == 'bf16' else 'false'}",
        f"train_data.inputs={data_dir}/*.parquet",
        f"train_data.global_batch_size={batch_size * processes}",
    ]
    threads = max(1, (os.cpu_count() or 1) // processes)
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            _PEAK_RSS_WRAPPER,
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            str(processes),
            "-m",
            "projects.home.recap.main",
            "--config_path",
            str(CONFIG),
            *overrides,
        ],
        cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": str(threads)},
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise RuntimeError(result.stderr[-3000:])
    peak_kib = float(result.stderr.strip().splitlines()[-1])
    lines = JobFolder(save_dir).metrics_file(MetricStream.TRAIN).read_text().splitlines()
    records = [json.loads(line) for line in lines]
    logged = statistics.median(record["examples_per_second"] for record in records[1:])
    wall = statistics.median(
        (later["step"] - earlier["step"])
        * batch_size
        * processes
        / (later["time"] - earlier["time"])
        for earlier, later in itertools.pairwise(records)
    )
    return TrainerRun(logged, wall, peak_kib / 1024)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=40, help="Trainer steps per run.")
    parser.add_argument("--batch_size", type=int, default=512, help="Examples per rank.")
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--num_examples", type=int, default=24_000)
    parser.add_argument("--data_dir", type=Path, help="Reuse generated local_prod data.")
    parser.add_argument("--model_alone_worker", choices=list(DTYPES), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.model_alone_worker:
        result = model_alone_worker(args.model_alone_worker, args.batch_size, args.steps)
        print(json.dumps(dataclasses.asdict(result)))
        return 0

    with tempfile.TemporaryDirectory(prefix="tml-train-throughput-") as scratch_name:
        scratch = Path(scratch_name)
        data_dir = args.data_dir or scratch / "data"
        generate(data_dir, args.num_examples)
        print(describe_machine())
        print(f"model: {CONFIG.name}, batch {args.batch_size} per rank, {args.steps} steps a run")
        print(
            f"{'procs':>5} {'dtype':>5} {'trainer':>8} {'wall':>8} {'model':>8} {'ceiling':>8} "
            f"{'of model':>9} {'of ceiling':>11} {'RSS MiB':>8} {'model RSS':>10}"
        )
        fractions = {}
        for processes in args.processes:
            for dtype in DTYPES:
                run = end_to_end(processes, dtype, args.batch_size, args.steps, data_dir, scratch)
                alone = model_alone(processes, dtype, args.batch_size, steps=8)
                of_ceiling = run.examples_per_second / alone.ceiling_examples_per_second
                fractions[processes, dtype] = of_ceiling
                print(
                    f"{processes:>5} {dtype:>5} {run.examples_per_second:8.0f} "
                    f"{run.wall_examples_per_second:8.0f} {alone.examples_per_second:8.0f} "
                    f"{alone.ceiling_examples_per_second:8.0f} "
                    f"{run.examples_per_second / alone.examples_per_second:9.2f} "
                    f"{of_ceiling:11.1%} {run.peak_rss_mib:8.0f} {alone.peak_rss_mib:10.0f}"
                )
        print(
            "(ex/s over all ranks; trainer: from logged step times; wall: from the wall clock "
            "between log lines)"
        )
        print(load_average())
    if 1 in args.processes:
        print("\ntargets:")
        for dtype in DTYPES:
            fraction = fractions[1, dtype]
            passed = fraction >= TARGET_OF_CEILING
            print(
                f"  [{'met' if passed else 'MISSED'}] trainer, 1 process, {dtype}, >= "
                f"{TARGET_OF_CEILING:.0%} of the square {dtype} GEMM ceiling: {fraction:.1%}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
