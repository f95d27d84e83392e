"""Train mode: train to the end of ``num_epochs`` or ``num_train_steps``, evaluating link
prediction and checkpointing on the way, through tml's trainer.

The job resumes its own newest checkpoint; failing that it warm-starts from
``initial_checkpoint_dir`` (weights only, step 0).
"""

from __future__ import annotations

import contextlib
import logging

import torch

from projects.twhin.build import build_edges, build_optimizer, build_sharded_model
from projects.twhin.config import TwhinConfig
from projects.twhin.data.edges import EdgeDataset, steps_in_epochs
from projects.twhin.evaluation import LinkPredictionEvaluation
from projects.twhin.job_folder import EVAL, TRAIN, TwhinJobFolder
from tml.checkpoint import CheckpointManager
from tml.distributed import DistributedEnvironment
from tml.training.preemption import StopRequest
from tml.training.trainer import LoopSettings, Trainer

logger = logging.getLogger(__name__)


def train_steps(config: TwhinConfig, dataset: EdgeDataset) -> int:
    """Where the job ends: after ``num_epochs`` passes or ``num_train_steps``, the first."""
    return min(
        config.training.num_train_steps, steps_in_epochs(dataset, config.training.num_epochs)
    )


def build_trainer(
    config: TwhinConfig,
    environment: DistributedEnvironment,
    stop_request: StopRequest | None = None,
) -> Trainer:
    """Data, sharded model, optimizer, checkpoints, loggers and evaluation, in data-flow order;
    the trainer owns (and closes) what holds resources."""
    batches = build_edges(config, config.train_data, environment, training=True, where="train_data")
    batch_size = config.train_data.per_replica_batch_size
    model = build_sharded_model(config, environment, batch_size)
    optimizer, scheduler = build_optimizer(model, config.model)
    job = TwhinJobFolder(config.training.save_dir)
    resources = contextlib.ExitStack()
    with resources:
        checkpoints = CheckpointManager(
            job.checkpoints,
            max_to_keep=config.training.checkpoint_max_to_keep,
            rank=environment.rank,
        )
        resources.callback(checkpoints.close)
        evaluation = None
        if config.validation_data is not None and config.training.num_eval_steps != 0:
            validation = build_edges(
                config, config.validation_data, environment, training=False, where="validation_data"
            )
            evaluation = LinkPredictionEvaluation(
                validation,
                [relation.name for relation in config.model.relations],
                config.training.num_eval_steps,
                job.metric_loggers(EVAL, is_main=environment.is_main),
                environment.device,
            )
            resources.callback(evaluation.close)
        loggers = job.metric_loggers(TRAIN, is_main=environment.is_main)
        resources.callback(loggers.close)
        trainer = Trainer(
            model=model,
            optimizer=optimizer,
            scheduler=scheduler,
            batches=batches,
            environment=environment,
            checkpoints=checkpoints,
            loggers=loggers,
            settings=LoopSettings(
                num_train_steps=train_steps(config, batches),
                log_every_n=config.training.train_log_every_n,
                checkpoint_every_n=config.training.checkpoint_every_n,
                eval_every_n=config.training.eval_log_every_n if evaluation else None,
                per_rank_batch_size=batch_size,
                autocast_dtype=torch.bfloat16 if config.runtime.enable_amp else None,
                step_timeout_s=config.training.step_timeout_in_s,
            ),
            evaluate=evaluation,
            stop_request=stop_request,
        )
        resources.pop_all()  # the trainer now owns every resource
    return trainer


def run_training(config: TwhinConfig, environment: DistributedEnvironment) -> int:
    """Trains; returns the step reached."""
    if environment.device.type == "cuda" and config.runtime.enable_tensorfloat32:
        torch.backends.cuda.matmul.allow_tf32 = True
    stop_request = StopRequest(config.training.preemption_grace_period_in_s, environment.rank)
    with stop_request, build_trainer(config, environment, stop_request) as trainer:
        if not trainer.resume() and config.training.initial_checkpoint_dir:
            job = TwhinJobFolder(config.training.save_dir)
            trainer.warm_start(job.find_checkpoint(config.training.initial_checkpoint_dir))
        trainer.train()
        return trainer.step
