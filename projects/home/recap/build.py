"""What every mode builds from a config: data for a purpose, the model (sharded or whole) and
its weights from a checkpoint.

Train, evaluate, inference and export are siblings above this module; each calls these builders
and none imports another mode. The model is always built for the training data's inputs (its
calibration undoes the training data's sampling), so every other dataset a mode reads must
produce the same input widths.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from torchrec.distributed.model_parallel import DistributedModelParallel

from projects.home.recap.config import RecapConfig
from projects.home.recap.data.config import RecapDataConfig
from projects.home.recap.data.dataset import ReadOptions, RecapDataset, build_dataset
from projects.home.recap.data.features import build_input_spec
from projects.home.recap.data.sharing import per_rank_batch_size
from projects.home.recap.inputs import InputSpec
from projects.home.recap.model.model_and_loss import ModelAndLoss, build_model_and_loss
from projects.home.recap.sharding import shard_model
from tml.checkpoint import load_weights
from tml.core.errors import UserInputError
from tml.distributed import DistributedEnvironment


def rank_batch_size(data_config: RecapDataConfig, environment: DistributedEnvironment) -> int:
    """Examples this job's ranks each read per step of ``data_config``."""
    return per_rank_batch_size(data_config.global_batch_size, environment.world_size)


def accumulation_steps(config: RecapConfig) -> int:
    """Micro-batches per optimizer step."""
    return config.training.gradient_accumulation or 1


def replicates_tables(config: RecapConfig) -> bool:
    """Whether the large tables must be replicated: only they can accumulate gradients."""
    return accumulation_steps(config) > 1


# Data ------------------------------------------------------------------------------------------


def build_data(
    config: RecapConfig,
    data_config: RecapDataConfig,
    options: ReadOptions,
    environment: DistributedEnvironment,
) -> RecapDataset:
    """This rank's share of ``data_config``, read as ``options`` say, in the model's task order;
    pinned in host memory when the job runs on a GPU."""
    return build_dataset(
        data_config,
        options=dataclasses.replace(options, pin_memory=environment.device.type == "cuda"),
        tasks=list(config.model.tasks),
        large_embeddings=config.model.large_embeddings,
        rank=environment.rank,
        world_size=environment.world_size,
        seed=config.training.seed,
    )


def build_train_data(config: RecapConfig, environment: DistributedEnvironment) -> RecapDataset:
    """This rank's share of the training data, repeating, shuffled."""
    return build_data(config, config.train_data, ReadOptions.training(), environment)


def build_partition_data(
    config: RecapConfig,
    partition: str,
    options: ReadOptions,
    environment: DistributedEnvironment,
    model_inputs: InputSpec,
) -> RecapDataset:
    """This rank's share of a ``validation_data`` partition, checked to fit the model.

    Raises:
        UserInputError: naming the partition, when its files cannot be read or its inputs
            differ in width from those the model was built for.
    """
    where = f"validation_data.{partition}"
    if partition not in config.validation_data:
        raise UserInputError(
            f"{where}: no such partition (partitions: {sorted(config.validation_data)})"
        )
    try:
        dataset = build_data(config, config.validation_data[partition], options, environment)
    except UserInputError as error:
        raise UserInputError(f"{where}: {error}") from None
    if dataset.input_spec.widths != model_inputs.widths:
        raise UserInputError(
            f"{where}: its features are {dataset.input_spec.widths}, but the model is built for "
            f"the training data's {model_inputs.widths}; use the same schema and preprocessing"
        )
    return dataset


def model_input_spec(config: RecapConfig) -> InputSpec:
    """The inputs the model is built for: the training data's, for modes that do not read it
    (with a training dataset at hand, use its ``input_spec`` instead of reading files again)."""
    return build_input_spec(config.train_data, list(config.model.tasks))


# Model -----------------------------------------------------------------------------------------


def build_sharded_model(
    config: RecapConfig,
    environment: DistributedEnvironment,
    inputs: InputSpec,
    batch_size: int,
    *,
    saved_plan: str | None = None,
) -> DistributedModelParallel:
    """The model with its loss, large tables sharded across ranks, dense part replicated.

    Every rank builds the same initial weights (seeded), so a job starts identically on any
    number of ranks. ``batch_size`` (examples per rank per step) feeds the planner's costs;
    ``saved_plan`` (a ``tml-recap-plan --json`` file) replaces the planner.
    """
    torch.manual_seed(config.training.seed)
    model = build_model_and_loss(config.model, inputs)
    return shard_model(
        model,
        config.model.large_embeddings,
        environment,
        per_rank_batch_size=batch_size,
        replicate_tables=replicates_tables(config),
        saved_plan=saved_plan,
    )


def build_whole_model(config: RecapConfig, inputs: InputSpec) -> ModelAndLoss:
    """The model with every table whole on the CPU, in one process (export, inspection)."""
    torch.manual_seed(config.training.seed)
    return build_model_and_loss(config.model, inputs, large_embedding_device=torch.device("cpu"))


def unwrap(model: torch.nn.Module) -> ModelAndLoss:
    """The model with its loss inside the parallel wrappers (sharded tables in place)."""
    inner = model.module if isinstance(model, DistributedModelParallel) else model
    if not isinstance(inner, ModelAndLoss):
        raise TypeError(f"expected the ranker with its loss, got {type(inner).__name__}")
    return inner


def load_trained_model(
    model: torch.nn.Module, checkpoint: Path, environment: DistributedEnvironment | None = None
) -> torch.nn.Module:
    """Loads ``checkpoint``'s weights into ``model`` (sharded or whole) and puts it in eval mode.

    Returns:
        ``model``.
    """
    load_weights(model, checkpoint, environment.rank if environment is not None else 0)
    return model.eval()
