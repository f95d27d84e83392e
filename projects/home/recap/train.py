"""Train mode: train to ``num_train_steps``, evaluating and checkpointing on the way.

The job resumes its own newest checkpoint; failing that it warm-starts from
``initial_checkpoint_dir`` or loads pretrained tables.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator

import torch
import torch.distributed as dist
from torch.distributed._shard.sharded_tensor import ShardedTensor

from projects.home.recap.build import (
    accumulation_steps,
    build_sharded_model,
    build_train_data,
    model_input_spec,
    rank_batch_size,
    unwrap,
)
from projects.home.recap.config import RecapConfig
from projects.home.recap.data.dataset import RecapDataset
from projects.home.recap.embedding.config import LargeEmbeddingsConfig
from projects.home.recap.evaluation.evaluator import build_evaluation
from projects.home.recap.job_folder import JobFolder, MetricStream
from projects.home.recap.model.embeddings import load_pretrained_embeddings
from projects.home.recap.optimizer.optimizer import build_optimizer
from tml.checkpoint import CheckpointManager
from tml.core.errors import UserInputError
from tml.distributed import DistributedEnvironment
from tml.storage.lock import Lock
from tml.training.data_position import StatefulBatches
from tml.training.preemption import StopRequest
from tml.training.trainer import LoopSettings, Trainer

logger = logging.getLogger(__name__)


def build_trainer(
    config: RecapConfig,
    environment: DistributedEnvironment,
    batches: StatefulBatches | None = None,
    stop_request: StopRequest | None = None,
) -> Trainer:
    """Everything a training run needs, built in data-flow order; the trainer owns (and closes)
    what holds resources.

    Args:
        config: The job.
        environment: This process's place in it.
        batches: Training batches to use instead of ``train_data`` (tests feed fixed ones).
        stop_request: Stop signals the trainer heeds at step boundaries.
    """
    if batches is None:
        dataset: RecapDataset = build_train_data(config, environment)
        batches, inputs = dataset, dataset.input_spec
    else:
        inputs = model_input_spec(config)
    batch_size = rank_batch_size(config.train_data, environment)
    model = build_sharded_model(
        config, environment, inputs, batch_size, saved_plan=config.training.sharding_plan
    )
    optimizer, scheduler = build_optimizer(
        model, unwrap(model).parameter_groups(), config.optimizer, config.model.large_embeddings
    )
    job = JobFolder(config.training.save_dir)
    resources = contextlib.ExitStack()
    with resources:
        checkpoints = CheckpointManager(
            job.checkpoints,
            max_to_keep=config.training.checkpoint_max_to_keep,
            rank=environment.rank,
        )
        resources.callback(checkpoints.close)
        evaluation = build_evaluation(config, environment, MetricStream.EVAL, inputs)
        if evaluation is not None:
            resources.callback(evaluation.close)
        loggers = job.metric_loggers(
            MetricStream.TRAIN,
            is_main=environment.is_main,
            # Per-task losses and rates go to TensorBoard and train.jsonl, not the console.
            console_shows=lambda name: "/" not in name,
        )
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
                num_train_steps=config.training.num_train_steps,
                log_every_n=config.training.train_log_every_n,
                checkpoint_every_n=config.training.checkpoint_every_n,
                eval_every_n=config.training.eval_log_every_n,
                gradient_accumulation=accumulation_steps(config),
                per_rank_batch_size=batch_size,
                autocast_dtype=torch.bfloat16 if config.training.bf16_autocast else None,
                task_names=tuple(config.model.tasks),
                step_timeout_s=config.training.step_timeout_in_s,
            ),
            evaluate=evaluation,
            extra_metrics=table_norms(model, config.model.large_embeddings, environment.device),
            stop_request=stop_request,
        )
        # Built without error: the trainer now owns every resource and closes it.
        resources.pop_all()
    return trainer


def table_norms(
    model: torch.nn.Module, large_embeddings: LargeEmbeddingsConfig | None, device: torch.device
) -> Callable[[], dict[str, float]] | None:
    """Metrics ``norm/<table>`` (Frobenius norm of the whole table) for ``tables_to_log``.

    Sharded tables sum their local shards over ranks; replicated ones are whole on each rank.
    """
    names = large_embeddings.tables_to_log if large_embeddings else None
    if not names:
        return None

    def norms() -> dict[str, float]:
        # Looked up at each call: the state-dict view of a sharded table is made on demand.
        tables = unwrap(model).large_embeddings
        weights = tables.table_weights() if tables is not None else {}
        results = {}
        for name in names:
            weight = weights[name]
            if isinstance(weight, ShardedTensor):
                squares = torch.zeros((), dtype=torch.float64, device=device)
                for shard in weight.local_shards():
                    squares += shard.tensor.double().square().sum()
                if dist.is_initialized():
                    dist.all_reduce(squares)
            else:
                squares = weight.double().square().sum()
            results[f"norm/{name}"] = squares.sqrt().item()
        return results

    return norms


def save_dir_lock(job: JobFolder) -> Lock:
    """The lock of a training job's save_dir (``job.lock``), not yet acquired: held by rank 0
    of one launch, and taken over from an earlier round of the same torchrun launch (a
    restart may move rank 0 to another node before the old one's heartbeat is stale)."""
    return Lock(
        job.lock_file,
        owner="training.save_dir",
        advice="give this job another folder, or stop that one",
        same_run_is_restart=True,
    )


@contextlib.contextmanager
def hold_save_dir(job: JobFolder, environment: DistributedEnvironment) -> Iterator[None]:
    """Rank 0 holds the job folder's lock while the job trains; every rank fails with the
    same line when the folder cannot be written or another live job holds it.

    Taken before anything is written there: the checkpoint manager removes incomplete
    checkpoint folders at start, which would be another job's checkpoint being written.
    """
    lock = save_dir_lock(job) if environment.is_main else None
    problem = None
    if lock is not None:
        try:
            lock.acquire()
        except UserInputError as error:
            problem = str(error)
    if dist.is_initialized() and dist.get_world_size() > 1:
        shared = [problem]
        dist.broadcast_object_list(shared, src=0)
        problem = shared[0]
    if problem is not None:
        error = UserInputError(problem)
        error.same_on_every_rank = True
        raise error
    try:
        yield
    finally:
        if lock is not None:
            lock.release()


def run_training(
    config: RecapConfig,
    environment: DistributedEnvironment,
    batches: StatefulBatches | None = None,
) -> int:
    """Trains to ``num_train_steps``; ``batches`` as in :func:`build_trainer`. Returns the step
    reached."""
    if environment.device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    # Installed before the (slow) build, so that a SIGTERM while it runs still ends the job
    # cleanly, at its first step boundary.
    stop_request = StopRequest(config.training.preemption_grace_period_in_s, environment.rank)
    with (
        stop_request,
        hold_save_dir(JobFolder(config.training.save_dir), environment),
        build_trainer(config, environment, batches, stop_request) as trainer,
    ):
        if not trainer.resume():
            if config.training.initial_checkpoint_dir:
                job = JobFolder(config.training.save_dir)
                trainer.warm_start(job.find_checkpoint(config.training.initial_checkpoint_dir))
            else:
                loaded = load_pretrained_embeddings(unwrap(trainer.model).large_embeddings)
                if loaded:
                    logger.info("pretrained tables loaded: %s", ", ".join(loaded))
        trainer.train()
        return trainer.step
