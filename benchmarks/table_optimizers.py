"""Do the tables learn at their default rates? SGD at the old default against row-wise Adagrad.

    .venv/bin/python benchmarks/table_optimizers.py [--train_examples 150000 --steps 580]
        [--seeds 0 1 2] [--variants NAME ...] [--data_dir DIR]

Generates data with known structure (projects/home/recap/tools/generate_random_data.py: each
label's log-odds hold a per-user and a per-author effect that only the large tables of those ids
can learn, beside feature and taste signal the dense part learns), then trains the shipped small
config (projects/home/recap/config/local_cpu.yaml, narrowed where it does not touch the tables:
see SMALLER) in this process, on one rank, once per table optimizer and seed, for one pass over
the data by default, and evaluates on a validation partition drawn with other seeds. Prints the
last training loss, the validation loss and the AUROC and RCE averaged over the tasks, side by
side, with a run whose tables are frozen (rate 0) as the reference: a table optimizer that does
not beat it has not learned the planted per-user and per-author effects.

Every variant differs only in the table optimizer; the dense part (Adam) and the data are the
same. With the defaults, about 3 minutes to generate the data and 20-60 s a run on 2 shared
cores (one thread: more threads than free cores wait on each other).
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from projects.home.recap.config import RecapConfig  # noqa: E402
from projects.home.recap.tools.generate_random_data import generate_dataset  # noqa: E402
from projects.home.recap.train import run_training  # noqa: E402
from tml.core.config import load_config_from_yaml  # noqa: E402
from tml.distributed import distributed_environment  # noqa: E402
from tml.observability.logging import setup_logging  # noqa: E402

CONFIG = REPO / "projects/home/recap/config/local_cpu.yaml"
TABLES = ("meta__user_id", "meta__author_id")

# Smaller than local_cpu.yaml where it does not touch the tables, to keep the benchmark to
# minutes on 2 shared cores: the labels depend on the first 8 continuous columns only, and three
# tasks (the most frequent labels, for steady AUROCs) show what the tables learn as well as ten.
TASKS = (
    "recap.engagement.is_favorited",
    "recap.engagement.is_video_playback_50",
    "recap.engagement.is_good_clicked_convo_desc_v2",
)
_RAMP = "{linear_ramp_to_constant: {learning_rate: 0.001, num_ramp_steps: 50}}"
SMALLER = [
    *(
        f"{partition}.preprocess.truncate_and_slice.continuous_feature_truncation=64"
        for partition in ("train_data", "validation_data.validation")
    ),
    "model.backbone.mask_net_config.mask_blocks=["
    + ", ".join(["{output_size: 64, aggregation_size: 64, input_layer_norm: false}"] * 2)
    + "]",
    "model.backbone.mask_net_config.mlp={layer_sizes: [64], final_layer_activation: true}",
    "model.tasks={"
    + ", ".join(f"{t}: {{mlp_config: {{layer_sizes: [32, 1]}}}}" for t in TASKS)
    + "}",
    "optimizer.multi_task_learning_rates.tower_learning_rates={"
    + ", ".join(f"{t}: {_RAMP}" for t in TASKS)
    + "}",
]

# name -> the table optimizer, as overrides of large_embeddings.optimizer.
VARIANTS = {
    "frozen tables (rate 0)": "{init_learning_rate: 0.0, learning_rate: {constant: 0.0}}",
    "sgd 0.05 (old default)": "{init_learning_rate: 0.05, learning_rate: {constant: 0.05}}",
    "rowwise_adagrad 0.01": "{init_learning_rate: 0.01, rowwise_adagrad: {}}",
    "rowwise_adagrad 0.05": "{init_learning_rate: 0.05, rowwise_adagrad: {}}",
    "rowwise_adagrad 0.1": "{init_learning_rate: 0.1, rowwise_adagrad: {}}",
    "rowwise_adagrad 0.2": "{init_learning_rate: 0.2, rowwise_adagrad: {}}",
    "sgd 2.0": "{init_learning_rate: 2.0, learning_rate: {constant: 2.0}}",
}
DEFAULT_VARIANTS = ("frozen tables (rate 0)", "sgd 0.05 (old default)", "rowwise_adagrad 0.05")


def train_once(run_dir: Path, data: Path, optimizer: str, seed: int, steps: int) -> dict:
    save_dir = run_dir / f"job_{time.monotonic_ns()}"
    overrides = [
        f"training.save_dir={save_dir}",
        f"training.num_train_steps={steps}",
        f"training.checkpoint_every_n={steps}",
        f"training.train_log_every_n={max(1, steps // 10)}",
        f"training.eval_log_every_n={steps}",
        f"training.seed={seed}",
        f"train_data.inputs={data / 'train'}/*/*.parquet",
        f"validation_data.validation.inputs={data / 'validation'}/*.parquet",
        f"model.large_embeddings.optimizer={optimizer}",
        *SMALLER,
    ]
    config = load_config_from_yaml(RecapConfig, CONFIG, overrides)
    started = time.monotonic()
    with distributed_environment("cpu") as environment:
        run_training(config, environment)
    elapsed = time.monotonic() - started
    train = [json.loads(line) for line in (save_dir / "train.jsonl").read_text().splitlines()]
    evaluation = json.loads((save_dir / "eval.jsonl").read_text().splitlines()[-1])
    tasks = list(config.model.tasks)
    return {
        "train_loss": train[-1]["loss"],
        "val_loss": evaluation.get("validation/loss", float("nan")),
        "auroc": statistics.mean(evaluation[f"validation/auroc/{task}"] for task in tasks),
        "rce": statistics.mean(evaluation[f"validation/rce/{task}"] for task in tasks),
        "seconds": elapsed,
    }


def generate_part(arguments: tuple[str, str, int, int]) -> None:
    """One process's share of the data: ``(partition, folder, examples, seed)``."""
    partition, folder, examples, seed = arguments
    base = load_config_from_yaml(RecapConfig, CONFIG)
    data_config = base.train_data if partition == "train" else base.validation_data[partition]
    generate_dataset(data_config, folder, num_examples=examples, seed=seed, progress=False)


def generate(data: Path, train_examples: int, validation_examples: int, processes: int) -> None:
    """Training data in ``processes`` folders (one file each, drawn in parallel), validation
    data drawn with other seeds; the world's rules are the same in all."""
    parts = [
        ("train", str(data / "train" / f"part_{index}"), train_examples // processes, 11 + index)
        for index in range(processes)
    ]
    parts.append(("validation", str(data / "validation"), validation_examples, 2))
    with multiprocessing.get_context("spawn").Pool(len(parts)) as pool:
        pool.map(generate_part, parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=390, help="default: one pass over the data")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--train_examples", type=int, default=100_000)
    parser.add_argument("--validation_examples", type=int, default=10_000)
    parser.add_argument("--processes", type=int, default=2, help="that generate the data")
    parser.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS))
    parser.add_argument("--data_dir", help="Keep the generated data here (reused when it exists).")
    args = parser.parse_args()
    with socket.socket() as probe:  # a free port for this process's one-rank group
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0"
    )
    os.environ.setdefault("LOCAL_WORLD_SIZE", "1")
    setup_logging(0)
    logging.getLogger().setLevel(logging.WARNING)
    # One thread: on a shared machine, more threads than free cores wait on each other.
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="table_optimizers_") as scratch:
        run_dir = Path(scratch)
        data = Path(args.data_dir) if args.data_dir else run_dir / "data"
        if not (data / "train").is_dir():
            generate(data, args.train_examples, args.validation_examples, args.processes)
        results: dict[str, list[dict]] = {}
        for name in args.variants:
            for seed in args.seeds:
                result = train_once(run_dir, data, VARIANTS[name], seed, args.steps)
                results.setdefault(name, []).append(result)
                print(
                    f"{name:<24} seed {seed}: train loss {result['train_loss']:.4f}, val loss "
                    f"{result['val_loss']:.4f}, AUROC {result['auroc']:.4f}, RCE "
                    f"{result['rce']:.2f} ({result['seconds']:.0f} s)",
                    flush=True,
                )
    print(
        f"\n{args.steps} steps of batch 256 on {args.train_examples} examples, "
        f"seeds {args.seeds}; mean (min..max) over seeds, AUROC and RCE averaged over tasks:"
    )
    header = f"{'table optimizer':<24} | {'train loss':<22} | {'val loss':<22} | "
    header += f"{'AUROC':<22} | {'RCE':<22}"
    print(header)
    print("-" * len(header))
    for name, runs in results.items():
        cells = []
        for key, digits in (("train_loss", 4), ("val_loss", 4), ("auroc", 4), ("rce", 2)):
            values = [run[key] for run in runs]
            cells.append(
                f"{statistics.mean(values):.{digits}f} "
                f"({min(values):.{digits}f}..{max(values):.{digits}f})"
            )
        print(f"{name:<24} | " + " | ".join(f"{cell:<22}" for cell in cells))


if __name__ == "__main__":
    main()
