"""The ``retraining`` section of a ranker config: the held-out slice, the promotion gate, how
training is launched and the registry's lock.

Every field has a default, so a config without the section retrains with these defaults; the
cross-field checks (:func:`check_retraining`) run when the section is given (at load) and when
the retraining command starts.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING

import pydantic

from projects.home.recap.evaluation.metric_sets import METRICS_OF_SET, MetricSet
from projects.home.recap.inference_config import ranking_weights
from tml.core.config import BaseConfig, ConfigValueError, Field

if TYPE_CHECKING:  # the job config holds this section; only its type is needed here
    from projects.home.recap.config import RecapConfig


class GateMetric(enum.StrEnum):
    """Metrics the gate compares; for each of them higher is better."""

    AUROC = "auroc"
    RCE = "rce"
    NRCE = "nrce"


class PerTaskRule(BaseConfig):
    """No gated task may get worse by more than ``max_drop`` in ``metric``."""

    metric: GateMetric = Field(GateMetric.AUROC, description="The metric compared per task.")
    tasks: list[str] | None = Field(
        None,
        description="The tasks gated (null: the heaviest_tasks model tasks of largest absolute "
        "ranking weight, inference.ranking_weights or the published ones).",
    )
    heaviest_tasks: pydantic.PositiveInt = Field(
        3, description="How many of the heaviest-weighted tasks are gated when tasks is null."
    )
    max_drop: pydantic.NonNegativeFloat = Field(
        0.002,
        description="How far below the promoted model's value the candidate's may fall on each "
        "gated task (0: never worse).",
    )


class WeightedRule(BaseConfig):
    """The ranking-weighted mean of ``metric`` over the tasks must improve by ``min_gain``."""

    metric: GateMetric = Field(
        GateMetric.RCE,
        description="The metric averaged over the tasks that have a ranking weight, each "
        "weighted by the absolute value of its weight (a negative weight matters as much).",
    )
    min_gain: float = Field(
        0.0,
        description="The least the candidate's weighted mean must exceed the promoted model's "
        "by (negative: tolerate that much loss).",
    )


class GateConfig(BaseConfig):
    """When a candidate replaces the promoted model. A non-finite (NaN) value never passes; with
    no promoted model yet, a candidate passes when every gated value is finite."""

    per_task: PerTaskRule | None = Field(
        PerTaskRule(), description="The per-task rule (null: none)."
    )
    weighted: WeightedRule | None = Field(
        WeightedRule(), description="The weighted-score rule (null: none)."
    )

    @pydantic.model_validator(mode="after")
    def _check_rules(self) -> GateConfig:
        if self.per_task is None and self.weighted is None:
            raise ValueError("a gate without rules would promote any candidate; keep one")
        return self


class LaunchConfig(BaseConfig):
    """How a cycle starts its training job: docker/entrypoint.sh (torchrun) on this node."""

    nproc_per_node: pydantic.PositiveInt = Field(
        1, description="Training processes on this node (one per GPU)."
    )
    max_restarts: pydantic.NonNegativeInt = Field(
        3,
        description="Times torchrun restarts failed workers, each resuming from the newest "
        "checkpoint.",
    )


class RetrainingConfig(BaseConfig):
    """A retraining cycle: the window's held-out slice, the gate, the launch and the lock."""

    holdout_partition: str | None = Field(
        None,
        description="The validation_data partition both models are evaluated on (null: the "
        "window's newest day or hour, read like train_data, which then trains on the days or "
        "hours before it).",
    )
    evaluation_batches: int = Field(
        -1,
        description="Batches of the held-out slice each model is evaluated on (< 0: all of it, "
        "every row once; must not be 0).",
    )
    ready_marker: str | None = Field(
        None,
        description="A file whose presence marks a dated folder as completely written (Spark "
        "writes _SUCCESS); null: a folder counts once it holds a .parquet file.",
    )
    gate: GateConfig = Field(GateConfig(), description="The promotion gate.")
    launch: LaunchConfig = Field(LaunchConfig(), description="How training is launched.")
    lock_lease_s: pydantic.PositiveFloat = Field(
        120.0,
        description="How long the registry lock outlives a cycle that died on another host or "
        "stalled (renewed every third of it while the cycle runs); a holder on this host whose "
        "process is gone is taken over at once.",
    )

    @pydantic.field_validator("evaluation_batches")
    @classmethod
    def _check_batches(cls, value: int) -> int:
        if value == 0:
            raise ValueError("0 batches would evaluate nothing; use a positive number or -1")
        return value


def gated_tasks(rule: PerTaskRule, config: RecapConfig) -> list[str]:
    """The tasks the per-task rule compares."""
    if rule.tasks is not None:
        return list(rule.tasks)
    weights = ranking_weights(config.inference, list(config.model.tasks))
    heaviest = sorted(weights, key=lambda task: -abs(weights[task]))
    return heaviest[: rule.heaviest_tasks]


def check_retraining(config: RecapConfig, retraining: RetrainingConfig) -> None:
    """The checks that need the whole job config.

    Raises:
        ConfigValueError: naming the ``retraining`` field at fault.
    """
    where = ("retraining",)
    partition = retraining.holdout_partition
    if partition is not None and partition not in config.validation_data:
        raise ConfigValueError(
            f"'{partition}' is not a validation_data partition "
            f"(partitions: {sorted(config.validation_data)})",
            (*where, "holdout_partition"),
        )
    computed = METRICS_OF_SET[config.which_metrics or MetricSet.ALL]
    tasks = list(config.model.tasks)
    weights = ranking_weights(config.inference, tasks)
    rules = {"per_task": retraining.gate.per_task, "weighted": retraining.gate.weighted}
    for name, rule in rules.items():
        if rule is not None and rule.metric.value not in computed:
            raise ConfigValueError(
                f"which_metrics '{config.which_metrics}' does not compute {rule.metric.value}",
                (*where, "gate", name, "metric"),
            )
    per_task = retraining.gate.per_task
    if per_task is not None:
        for index, task in enumerate(per_task.tasks or []):
            if task not in tasks:
                raise ConfigValueError(
                    f"'{task}' is not a model task", (*where, "gate", "per_task", "tasks", index)
                )
        if not gated_tasks(per_task, config):
            raise ConfigValueError(
                "no model task has a ranking weight to pick the heaviest from; list the tasks",
                (*where, "gate", "per_task", "tasks"),
            )
    if retraining.gate.weighted is not None and not weights:
        raise ConfigValueError(
            "no model task has a ranking weight (inference.ranking_weights)",
            (*where, "gate", "weighted"),
        )
