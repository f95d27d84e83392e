"""Evaluate mode (``--mode evaluate``): follow a training job's checkpoints and evaluate each
one once.

Run it beside a training job with the same config. It waits for complete checkpoints in the job
folder, evaluates each one on every validation partition, logs the metrics at the checkpoint's
step (stream ``evaluator``: console, TensorBoard, JSONL) and marks the checkpoint done per
partition with a results file in its folder (see ``JobFolder``), so a restarted evaluator skips
what is done. It stops once the final step (``num_train_steps``) is
evaluated, or when no new checkpoint has appeared for ``eval_timeout_in_s``.
"""

from __future__ import annotations

import logging
import time

import torch
import torch.distributed as dist

from projects.home.recap.build import (
    build_sharded_model,
    load_trained_model,
    model_input_spec,
    rank_batch_size,
)
from projects.home.recap.config import RecapConfig
from projects.home.recap.evaluation.evaluator import Evaluation, build_evaluation, write_results
from projects.home.recap.inputs import InputSpec
from projects.home.recap.job_folder import JobFolder, MetricStream
from tml.checkpoint import checkpoint_folder, complete_steps
from tml.core.errors import UserInputError
from tml.distributed import DistributedEnvironment

logger = logging.getLogger(__name__)

_POLL_SECONDS = 5.0


class CheckpointFollower:
    """Evaluates every complete checkpoint of a job once per partition.

    Args:
        config: The training job's config.
        environment: This process's place in the evaluator job.
        evaluation: The partitions and their loggers.
        model: The sharded model each checkpoint is loaded into.
        poll_seconds: How often to look for new checkpoints.
    """

    def __init__(
        self,
        config: RecapConfig,
        environment: DistributedEnvironment,
        evaluation: Evaluation,
        model: torch.nn.Module,
        poll_seconds: float = _POLL_SECONDS,
    ) -> None:
        self.config = config
        self.environment = environment
        self.evaluation = evaluation
        self.model = model
        self.directory = JobFolder(config.training.save_dir).checkpoints
        self.poll_seconds = poll_seconds

    def run(self) -> list[int]:
        """Follows the job until its final step is evaluated or it goes quiet; returns the
        steps evaluated."""
        timeout = self.config.training.eval_timeout_in_s
        final_step = self.config.training.num_train_steps
        evaluated: list[int] = []
        last_progress = time.monotonic()
        while True:
            step, pending, finished = self._next_checkpoint()
            if finished:
                logger.info("the final step %d is evaluated: stopping", final_step)
                return evaluated
            if step is None:
                if time.monotonic() - last_progress > timeout:
                    logger.info("no new checkpoint for %.0f s: stopping", timeout)
                    return evaluated
                time.sleep(self.poll_seconds)
                continue
            self._evaluate(step, pending)
            evaluated.append(step)
            last_progress = time.monotonic()

    def _next_checkpoint(self) -> tuple[int | None, list[str], bool]:
        """The oldest complete checkpoint with partitions still to evaluate, those partitions,
        and whether the final step is done; rank 0 decides so that every rank agrees."""
        choice: list[object] = [None, [], False]
        if self.environment.is_main:
            final_step = self.config.training.num_train_steps
            for step in complete_steps(self.directory):
                pending = self._pending(step)
                if pending:
                    choice = [step, pending, False]
                    break
                if step >= final_step:
                    choice = [None, [], True]
                    break
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.broadcast_object_list(choice, src=0)
        return choice[0], choice[1], choice[2]

    def _pending(self, step: int) -> list[str]:
        folder = checkpoint_folder(self.directory, step)
        return [
            partition.name
            for partition in self.evaluation.partitions
            if not JobFolder.evaluation_results(folder, partition.name).exists()
        ]

    def _evaluate(self, step: int, pending: list[str]) -> None:
        # A training job's checkpoint_max_to_keep may prune this folder while it is read; the
        # oldest unevaluated one is taken first, so a follower that keeps up is not affected.
        folder = checkpoint_folder(self.directory, step)
        load_trained_model(self.model, folder, self.environment)
        partitions = [p for p in self.evaluation.partitions if p.name in pending]
        evaluation = Evaluation(partitions, self.evaluation.loggers, self.environment)
        results = evaluation(self.model, step)
        if self.environment.is_main:
            for name, metrics in results.items():
                write_results(JobFolder.evaluation_results(folder, name), step, metrics)
            if step >= self.config.training.num_train_steps:
                logger.info("evaluated the final step %d", step)


def run_evaluator(config: RecapConfig, environment: DistributedEnvironment) -> list[int]:
    """``--mode evaluate``: see the module docstring. Returns the steps evaluated."""
    inputs: InputSpec = model_input_spec(config)
    evaluation = build_evaluation(config, environment, MetricStream.EVALUATOR, inputs)
    if evaluation is None:
        raise UserInputError(
            "evaluate mode needs validation_data partitions and training.num_eval_steps != 0"
        )
    try:
        first = next(iter(config.validation_data.values()))
        model = build_sharded_model(
            config, environment, inputs, rank_batch_size(first, environment)
        )
        return CheckpointFollower(config, environment, evaluation, model).run()
    finally:
        evaluation.close()
