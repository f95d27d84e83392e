"""Evaluation of validation partitions, during training and as a separate checkpoint follower.

Each partition runs ``num_eval_steps`` batches (< 0: the whole partition) through the model and
computes its metrics on calibrated probabilities with the partition's example weights. The
model is trained in the training data's sampled space (its loss is not reweighted) and its
calibration maps predictions back to un-sampled rates; the evaluation weights undo the
partition's own sampling. Both sides then describe un-sampled traffic (AUROC is unaffected by
either; RCE and mean prediction depend on it).

Sharded tables make every forward a collective, so all ranks run the same number of forwards,
agreed once per evaluation: a rank whose share is exhausted repeats its last batch without
counting it until every rank is done.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
import torch.distributed as dist

from projects.home.recap.config import JobMode, RecapConfig
from projects.home.recap.data.batch import RecapBatch
from projects.home.recap.data.config import RecapDataConfig
from projects.home.recap.data.dataset import build_dataset
from projects.home.recap.data.features import feature_widths
from projects.home.recap.evaluation.metrics import build_metrics
from tml.core.errors import UserInputError
from tml.distributed import DistributedEnvironment
from tml.observability.metric_loggers import MetricLoggers, build_metric_loggers

logger = logging.getLogger(__name__)

_SUMMARY_METRICS = ("auroc", "rce")


class PartitionEvaluator:
    """Evaluates the model on one validation partition.

    The partition's loader is built once (files, footers, vocabularies, ``cache``) and rewound
    before each evaluation, which therefore reads the same examples every time.

    Args:
        name: The partition's name in ``validation_data``.
        data_config: The partition.
        config: The job's config (model tasks, metric set, stratifiers, eval length).
        environment: This process's place in the job.

    Raises:
        UserInputError: the partition's features differ in width from the training data's
            (the model could not read them), or its files cannot be read.
    """

    def __init__(
        self,
        name: str,
        data_config: RecapDataConfig,
        config: RecapConfig,
        environment: DistributedEnvironment,
    ) -> None:
        self.name = name
        self.data_config = data_config
        self.config = config
        self.environment = environment
        self.tasks = list(config.model.tasks)
        widths, trained = feature_widths(data_config), feature_widths(config.train_data)
        if widths != trained:
            raise UserInputError(
                f"validation_data.{name}: its features are {widths}, but the model is built for "
                f"the training data's {trained}; use the same schema and preprocessing"
            )
        try:
            self.dataset = build_dataset(
                data_config,
                mode=JobMode.EVALUATE,
                tasks=self.tasks,
                large_embeddings=config.model.large_embeddings,
                rank=environment.rank,
                world_size=environment.world_size,
                seed=config.training.seed,
            )
        except UserInputError as error:
            raise UserInputError(f"validation_data.{name}: {error}") from None
        self._start = self.dataset.state_dict()
        self.metrics = build_metrics(
            self.tasks,
            config.which_metrics,
            config.model.stratifiers,
            evaluation_tasks=data_config.evaluation_tasks,
            prediction_key="calibrated_probabilities",
        ).to(environment.device)

    def evaluate(self, model: torch.nn.Module) -> dict[str, float]:
        """Metrics (and the mean loss) of one pass over the partition, the same on every rank."""
        self.dataset.load_state_dict(self._start)
        self.metrics.reset()
        device = self.environment.device
        steps = agreed_steps(
            self.dataset.batches_per_pass, self.config.training.num_eval_steps, device
        )
        loss_sum = torch.zeros(2, dtype=torch.float64, device=device)
        model.eval()
        with torch.no_grad():
            for batch, counted in lockstep_batches(self.dataset, steps, device):
                loss, outputs = model(batch)
                if counted:
                    self.metrics.update(outputs)
                    loss_sum[0] += loss.double() * batch.batch_size
                    loss_sum[1] += batch.batch_size
        results = self.metrics.compute()
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(loss_sum)
        results["loss"] = (loss_sum[0] / loss_sum[1]).item() if loss_sum[1] > 0 else math.nan
        results["examples"] = float(loss_sum[1].item())
        return results


def agreed_steps(batches: int, num_steps: int, device: torch.device) -> int:
    """The number of forwards every rank runs: the largest share's batches (all of every
    share's rows), capped at ``num_steps`` when it is not negative. One collective."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        count = torch.tensor([batches], dtype=torch.int64, device=device)
        dist.all_reduce(count, op=dist.ReduceOp.MAX)
        batches = int(count.item())
    return batches if num_steps < 0 else min(batches, num_steps)


def lockstep_batches(
    dataset: Iterable[RecapBatch], steps: int, device: torch.device
) -> Iterator[tuple[RecapBatch, bool]]:
    """Exactly ``steps`` batches on ``device``, each flagged whether it counts.

    Sharded tables make every forward a collective, so every rank runs the same number of them
    (see :func:`agreed_steps`); a rank whose share ends first repeats its last batch with
    ``counted=False``.
    """
    iterator = iter(dataset)
    last: RecapBatch | None = None
    for _ in range(steps):
        batch = next(iterator, None)
        if batch is not None:
            last = batch.to(device)
            yield last, True
        elif last is not None:
            yield last, False
        else:
            raise UserInputError(
                "a rank got no batch at all from its share of the data while others did; "
                "write more files or row groups than ranks"
            )


class Evaluation:
    """All validation partitions of a job, logged together.

    Calling it evaluates every partition at a step, logs each metric as
    ``<partition>/<metric>/<task>`` and prints a per-task AUROC/RCE table on the main rank.
    """

    def __init__(
        self,
        partitions: list[PartitionEvaluator],
        loggers: MetricLoggers,
        environment: DistributedEnvironment,
    ) -> None:
        self.partitions = partitions
        self.loggers = loggers
        self.environment = environment

    def close(self) -> None:
        self.loggers.close()

    def __call__(self, model: torch.nn.Module, step: int) -> dict[str, dict[str, float]]:
        results = {}
        for partition in self.partitions:
            started = time.perf_counter()
            metrics = partition.evaluate(model)
            metrics["seconds"] = time.perf_counter() - started
            results[partition.name] = metrics
            self.loggers.log(step, {f"{partition.name}/{k}": v for k, v in metrics.items()})
            if self.environment.is_main:
                logger.info(
                    "evaluation of %s at step %d (%d examples):\n%s",
                    partition.name,
                    step,
                    int(metrics["examples"]),
                    format_summary(metrics, partition.tasks),
                )
        return results


def build_evaluation(
    config: RecapConfig, environment: DistributedEnvironment, *, stream: str = "eval"
) -> Evaluation | None:
    """Evaluation of every ``validation_data`` partition, or None when there is nothing to do."""
    if not config.validation_data or config.training.num_eval_steps == 0:
        return None
    partitions = [
        PartitionEvaluator(name, partition, config, environment)
        for name, partition in config.validation_data.items()
    ]
    loggers = build_metric_loggers(
        config.training.save_dir,
        name=stream,
        is_main=environment.is_main,
        # Per-task metrics are printed as a table; the console line has each partition's totals.
        console_shows=lambda name: name.count("/") == 1,
    )
    return Evaluation(partitions, loggers, environment)


def format_summary(metrics: dict[str, float], tasks: list[str]) -> str:
    """Per-task AUROC and RCE (and whatever else of those two was computed) as a text table."""
    columns = [name for name in _SUMMARY_METRICS if any(k.startswith(f"{name}/") for k in metrics)]
    rows = [("task", *columns)]
    for task in tasks:
        values = [metrics.get(f"{name}/{task}") for name in columns]
        if any(value is not None for value in values):
            rows.append((task, *("-" if v is None else f"{v:.4f}" for v in values)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        for row in rows
    ]
    return "\n".join(lines)


def write_results(path: Path, step: int, results: dict[str, float]) -> None:
    """Writes one partition's results at a step as JSON, atomically."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps({"step": step, "metrics": results}, indent=1))
    temporary.replace(path)
