"""Score a folder of predictions with the metrics evaluation computes (``tml-recap-score``).

    tml-recap-score --config_path CFG [--predictions DIR] [--json FILE] [dotted.path=value ...]

The predictions of ``--mode inference`` carry each row's labels and example weights (see
:mod:`projects.home.recap.predictions`), so the metrics of ``which_metrics`` per task and per
stratifier come from the same metric code as evaluation, on every row of the predictions. The
partition's ``evaluation_tasks`` are scored (the partition is ``inference.data``, whose
predictions the default folder holds). Predictions of one checkpoint on a partition without
``downsample_negatives`` give that checkpoint's evaluation metrics of the whole partition.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import pyarrow.parquet as pq
import torch

from projects.home.recap.config import RecapConfig
from projects.home.recap.evaluation.evaluator import format_summary
from projects.home.recap.evaluation.metrics import build_metrics
from projects.home.recap.job_folder import JobFolder
from projects.home.recap.predictions import (
    label_column,
    stratifier_column,
    weight_column,
)
from tml.core.cli import add_config_arguments, exit_status, parse_command_line
from tml.core.config import load_config_from_yaml
from tml.core.errors import UserInputError
from tml.observability.logging import setup_logging
from tml.observability.metric_json import metrics_to_json

logger = logging.getLogger(__name__)


def predictions_folder(config: RecapConfig) -> Path:
    """Where ``--mode inference`` writes its predictions for ``config``."""
    if config.inference.output_dir:
        return Path(config.inference.output_dir)
    job = JobFolder(config.training.save_dir)
    return job.predictions_dir(job.find_checkpoint(config.inference.checkpoint))


def score(config: RecapConfig, folder: Path) -> dict[str, float]:
    """The evaluation metrics of every row of the predictions in ``folder``.

    Raises:
        UserInputError: no predictions files, the inference that wrote them did not finish,
            or a column the metrics need is missing.
    """
    files = JobFolder.complete_predictions_files(folder)
    if not files:
        raise UserInputError(f"no predictions files (predictions-*-of-*.parquet) in {folder}")
    tasks = list(config.model.tasks)
    stratifiers = list(config.model.stratifiers or [])
    partition = config.inference.data or next(iter(config.validation_data), None)
    evaluation_tasks = (
        config.validation_data[partition].evaluation_tasks
        if partition in config.validation_data
        else None
    )
    needed = [
        *(f"calibrated_probability/{task}" for task in tasks),
        *(label_column(task) for task in tasks),
        *(weight_column(task) for task in tasks),
        *(stratifier_column(stratifier.name) for stratifier in stratifiers),
    ]
    table = pq.read_table(files)
    missing = [name for name in needed if name not in table.column_names]
    if missing:
        raise UserInputError(
            f"{folder}: the predictions lack {missing}; they were written for another model or "
            "by an older tml (rerun --mode inference)"
        )

    def matrix(names: list[str], dtype: torch.dtype) -> torch.Tensor:
        columns = [torch.from_numpy(table.column(name).to_numpy()) for name in names]
        return torch.stack(columns, dim=1).to(dtype)

    outputs = {
        "calibrated_probabilities": matrix(needed[: len(tasks)], torch.float32),
        "labels": matrix([label_column(task) for task in tasks], torch.float32),
        "weights": matrix([weight_column(task) for task in tasks], torch.float32),
    }
    if stratifiers:
        outputs["stratifiers"] = matrix(
            [stratifier_column(stratifier.name) for stratifier in stratifiers], torch.int64
        )
    metrics = build_metrics(
        tasks,
        config.which_metrics,
        stratifiers,
        evaluation_tasks=evaluation_tasks,
        prediction_key="calibrated_probabilities",
    )
    metrics.update(outputs)
    results = metrics.compute()
    results["examples"] = float(table.num_rows)
    return results


def main(argv: list[str] | None = None) -> int:
    """The command line; a mistake is one line on stderr and exit 2."""
    parser = argparse.ArgumentParser(
        prog="tml-recap-score",
        description="Score a predictions folder with the evaluation metrics of the config.",
    )
    add_config_arguments(parser)
    parser.add_argument(
        "--predictions",
        help="Folder of predictions files (default: where --mode inference writes them).",
    )
    parser.add_argument("--json", help="Also write the metrics to this JSON file.")
    args = parse_command_line(parser, argv)

    def run() -> None:
        setup_logging(0)
        config = load_config_from_yaml(RecapConfig, args.config_path, args.overrides)
        folder = Path(args.predictions) if args.predictions else predictions_folder(config)
        results = score(config, folder)
        logger.info(
            "%d predictions in %s:\n%s",
            int(results["examples"]),
            folder,
            format_summary(results, list(config.model.tasks)),
        )
        if args.json:
            Path(args.json).write_text(
                json.dumps(metrics_to_json(results), indent=1, allow_nan=False)
            )
        for name, value in results.items():
            print(f"{name}\t{value:.6g}")

    return exit_status(run)


if __name__ == "__main__":
    sys.exit(main())
