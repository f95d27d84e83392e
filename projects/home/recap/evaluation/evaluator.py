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

import torch
import torch.distributed as dist

from projects.home.recap.build import build_partition_data
from projects.home.recap.config import RecapConfig
from projects.home.recap.data.dataset import ReadOptions
from projects.home.recap.evaluation.metrics import build_metrics
from projects.home.recap.inputs import InputSpec
from projects.home.recap.job_folder import JobFolder, MetricStream
from projects.home.recap.lockstep import agreed_steps, lockstep_batches
from tml.distributed import DistributedEnvironment
from tml.observability.metric_json import metrics_to_json
from tml.observability.metric_loggers import MetricLoggers
from tml.storage import AnyPath, write_atomically

logger = logging.getLogger(__name__)


class PartitionEvaluator:
    """Evaluates the model on one validation partition.

    The partition's loader is built once (files, footers, vocabularies, ``cache``) and rewound
    before each evaluation, which therefore reads the same examples every time.

    Args:
        name: The partition's name in ``validation_data``.
        config: The job's config (model tasks, metric set, stratifiers, eval length).
        environment: This process's place in the job.
        model_inputs: The inputs the model was built for; the partition must match them.

    Raises:
        UserInputError: the partition's features differ in width from the training data's
            (the model could not read them), or its files cannot be read.
    """

    def __init__(
        self,
        name: str,
        config: RecapConfig,
        environment: DistributedEnvironment,
        model_inputs: InputSpec,
    ) -> None:
        self.name = name
        self.config = config
        self.environment = environment
        self.tasks = list(config.model.tasks)
        self.dataset = build_partition_data(
            config, name, ReadOptions.evaluation(), environment, model_inputs
        )
        self._start = self.dataset.state_dict()
        self.metrics = build_metrics(
            self.tasks,
            config.which_metrics,
            config.model.stratifiers,
            evaluation_tasks=config.validation_data[name].evaluation_tasks,
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


class Evaluation:
    """All validation partitions of a job, logged together.

    Calling it evaluates every partition at a step, logs each metric as
    ``<partition>/<metric>/<task>`` and prints a per-task table of every metric on the main rank.
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

    def discard_after(self, step: int) -> None:
        """Forgets the results logged after ``step``, which a resumed job evaluates again."""
        self.loggers.discard_after(step)

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
    config: RecapConfig,
    environment: DistributedEnvironment,
    stream: MetricStream,
    model_inputs: InputSpec,
) -> Evaluation | None:
    """Evaluation of every ``validation_data`` partition, or None when there is nothing to do.

    Args:
        config: The job.
        environment: This process's place in it.
        stream: Where the metrics are logged (in-training evaluation or the follower).
        model_inputs: The inputs the model was built for.
    """
    if not config.validation_data or config.training.num_eval_steps == 0:
        return None
    partitions = [
        PartitionEvaluator(name, config, environment, model_inputs)
        for name in config.validation_data
    ]
    loggers = JobFolder(config.training.save_dir).metric_loggers(
        stream,
        is_main=environment.is_main,
        # Per-task metrics are printed as a table; the console line has each partition's totals.
        console_shows=lambda name: name.count("/") == 1,
    )
    return Evaluation(partitions, loggers, environment)


def format_summary(metrics: dict[str, float], tasks: list[str]) -> str:
    """Every metric computed per task (the set ``which_metrics`` selects), one row per task, in
    the order the metrics were computed; slices by stratifier are left to the metric files."""
    columns: list[str] = []
    for key in metrics:
        name, _, task = key.partition("/")
        if task in tasks and name not in columns:
            columns.append(name)
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


def write_results(path: AnyPath, step: int, results: dict[str, float]) -> None:
    """Writes one partition's results at a step as JSON, atomically."""
    record = {"step": step, "metrics": metrics_to_json(results)}
    write_atomically(path, json.dumps(record, indent=1, allow_nan=False))
