"""Do the tables learn at their default rates? SGD at the old default against row-wise Adagrad.

    .venv/bin/python benchmarks/table_optimizers.py [--steps 300] [--seeds 0 1 2]

Generates data with known structure (projects/home/recap/tools/generate_random_data.py: each
label's log-odds hold a per-user and a per-author effect that only the large tables of those ids
can learn, beside feature and taste signal the dense part learns), then trains the shipped small
config (projects/home/recap/config/local_cpu.yaml) in this process, on one rank, once per table
optimizer and seed, and evaluates on a validation partition drawn with another seed. Prints
the last training loss, the validation loss and the mean AUROC and RCE over the tasks, side by
side, and what the tables learned: the correlation between the learned per-row vectors and the
planted effects is not directly observable, so it reports the validation gain of the tables
instead, against a run whose tables are frozen (rate 0).

Every variant differs only in the table optimizer; the dense part (Adam) and the data are the
same. A few minutes on a 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

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
}


def train_once(run_dir: Path, data: Path, optimizer: str, seed: int, steps: int) -> dict:
    save_dir = run_dir / f"job_{time.monotonic_ns()}"
    overrides = [
        f"training.save_dir={save_dir}",
        f"training.num_train_steps={steps}",
        f"training.checkpoint_every_n={steps}",
        f"training.train_log_every_n={max(1, steps // 10)}",
        f"training.eval_log_every_n={steps}",
        f"training.seed={seed}",
        f"train_data.inputs={data / 'train'}/*.parquet",
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--train_examples", type=int, default=50_000)
    parser.add_argument("--validation_examples", type=int, default=10_000)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS))
    args = parser.parse_args()
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT="29533", RANK="0", WORLD_SIZE="1", LOCAL_RANK="0"
    )
    os.environ.setdefault("LOCAL_WORLD_SIZE", "1")
    setup_logging(0)
    import logging

    logging.getLogger().setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="table_optimizers_") as scratch:
        run_dir = Path(scratch)
        data = run_dir / "data"
        base = load_config_from_yaml(RecapConfig, CONFIG)
        generate_dataset(
            base.train_data, str(data / "train"), num_examples=args.train_examples, seed=1
        )
        validation = base.validation_data["validation"]
        generate_dataset(
            validation, str(data / "validation"), num_examples=args.validation_examples, seed=2
        )
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
