"""Train mode: build data, model, sharding, optimizer and checkpoints, then run the loop."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed._shard.sharded_tensor import ShardedTensor

from projects.home.recap.config import JobMode, RecapConfig
from projects.home.recap.data.dataset import RecapDataset, build_dataset
from projects.home.recap.data.features import feature_widths
from projects.home.recap.embedding.config import LargeEmbeddingsConfig
from projects.home.recap.evaluation.evaluator import build_evaluation
from projects.home.recap.model.embeddings import (
    is_large_embedding_parameter,
    load_pretrained_embeddings,
)
from projects.home.recap.model.model_and_loss import ModelAndLoss, build_model_and_loss
from projects.home.recap.optimizer.optimizer import build_optimizer
from projects.home.recap.sharding import shard_model
from tml.checkpoint import CheckpointManager
from tml.distributed import DistributedEnvironment
from tml.observability.metric_loggers import build_metric_loggers
from tml.training.data_position import StatefulBatches
from tml.training.trainer import LoopSettings, Trainer

logger = logging.getLogger(__name__)


def build_train_data(config: RecapConfig, environment: DistributedEnvironment) -> RecapDataset:
    """This rank's share of the training data, repeating, in the model's task order."""
    return build_dataset(
        config.train_data,
        mode=JobMode.TRAIN,
        tasks=list(config.model.tasks),
        large_embeddings=config.model.large_embeddings,
        rank=environment.rank,
        world_size=environment.world_size,
        seed=config.training.seed,
    )


def build_sharded_model(
    config: RecapConfig, environment: DistributedEnvironment, per_rank_batch_size: int
) -> torch.nn.Module:
    """The model with its loss, large tables sharded across ranks, dense part replicated."""
    torch.manual_seed(config.training.seed)
    model: ModelAndLoss = build_model_and_loss(
        config.model, config.train_data, feature_widths(config.train_data)
    )
    return shard_model(
        model,
        config.model.large_embeddings,
        environment,
        per_rank_batch_size=per_rank_batch_size,
        replicate_tables=accumulation_steps(config) > 1,
    )


def accumulation_steps(config: RecapConfig) -> int:
    """Micro-batches per optimizer step."""
    return config.training.gradient_accumulation or 1


def build_trainer(
    config: RecapConfig,
    environment: DistributedEnvironment,
    batches: StatefulBatches | None = None,
) -> Trainer:
    """Everything a training run needs, built in data-flow order.

    Args:
        config: The job.
        environment: This process's place in it.
        batches: Training batches to use instead of ``train_data`` (tests feed fixed ones).
    """
    batches = batches if batches is not None else build_train_data(config, environment)
    model = build_sharded_model(
        config, environment, config.train_data.global_batch_size // environment.world_size
    )
    optimizer, scheduler = build_optimizer(
        model,
        config.optimizer,
        list(config.model.tasks),
        config.model.large_embeddings,
        is_large_embedding=is_large_embedding_parameter,
    )
    save_dir = Path(config.training.save_dir)
    checkpoints = CheckpointManager(
        save_dir / "checkpoints",
        max_to_keep=config.training.checkpoint_max_to_keep,
        rank=environment.rank,
    )
    settings = LoopSettings(
        num_train_steps=config.training.num_train_steps,
        log_every_n=config.training.train_log_every_n,
        checkpoint_every_n=config.training.checkpoint_every_n,
        eval_every_n=config.training.eval_log_every_n,
        gradient_accumulation=accumulation_steps(config),
        per_rank_batch_size=config.train_data.global_batch_size // environment.world_size,
        autocast_dtype=torch.bfloat16 if config.training.bf16_autocast else None,
        task_names=tuple(config.model.tasks),
    )
    return Trainer(
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        batches=batches,
        environment=environment,
        checkpoints=checkpoints,
        loggers=build_metric_loggers(
            save_dir,
            name="train",
            is_main=environment.is_main,
            # Per-task losses and rates go to TensorBoard and train.jsonl, not the console.
            console_shows=lambda name: "/" not in name,
        ),
        settings=settings,
        evaluate=build_evaluation(config, environment),
        extra_metrics=table_norms(model, config.model.large_embeddings, environment.device),
    )


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
        state = model.state_dict()
        results = {}
        for name in names:
            key = next(key for key in state if key.endswith(f"embedding_bags.{name}.weight"))
            weight = state[key]
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


def run_training(
    config: RecapConfig,
    environment: DistributedEnvironment,
    batches: StatefulBatches | None = None,
) -> Trainer:
    """Trains to ``num_train_steps``: resumes this job's newest checkpoint, else warm-starts
    (``initial_checkpoint_dir``) or loads pretrained tables; ``batches`` as in build_trainer."""
    if environment.device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    trainer = build_trainer(config, environment, batches)
    if not trainer.resume():
        if config.training.initial_checkpoint_dir:
            trainer.warm_start(config.training.initial_checkpoint_dir)
        else:
            loaded = load_pretrained_embeddings(trainer.model, config.model.large_embeddings)
            if loaded:
                logger.info("pretrained tables loaded: %s", ", ".join(loaded))
    try:
        trainer.train()
    finally:
        if trainer.evaluate is not None:
            trainer.evaluate.close()
    return trainer
