"""The ranker's top-level config, and a checker for it.

Check a config before launching a big job::

    python -m projects.home.recap.config --config_path CFG [dotted.path=value ...]

prints the resolved config as YAML and exits 0, or prints a one-line error and exits 2.
"""

from __future__ import annotations

import argparse
import enum
import sys

import pydantic

from projects.home.recap.data.config import RecapDataConfig
from projects.home.recap.model.config import ModelConfig
from projects.home.recap.optimizer.config import RecapOptimizerConfig
from tml.core.config import BaseConfig, ConfigError, ConfigValueError, Field, load_config_from_yaml


class JobMode(enum.StrEnum):
    """What a run of the entry point does."""

    TRAIN = "train"
    EVALUATE = "evaluate"
    INFERENCE = "inference"


class MetricSet(enum.StrEnum):
    """Named sets of evaluation metrics, chosen by ``RecapConfig.which_metrics``."""

    ALL = "all"
    AUROC_RCE = "auroc_rce"
    CALIBRATION = "calibration"
    CONSTANT_MEMORY = "constant_memory"


# The metrics (names of tml.metrics.METRICS) each set computes for every evaluated task.
# constant_memory leaves out AUROC and NRCE, which keep every evaluated example.
METRICS_OF_SET: dict[MetricSet, tuple[str, ...]] = {
    MetricSet.ALL: (
        "auroc",
        "rce",
        "nrce",
        "mean_label",
        "mean_prediction",
        "precision",
        "recall",
    ),
    MetricSet.AUROC_RCE: ("auroc", "rce"),
    MetricSet.CALIBRATION: ("rce", "nrce", "mean_label", "mean_prediction"),
    MetricSet.CONSTANT_MEMORY: ("rce", "mean_label", "mean_prediction", "precision", "recall"),
}


class TrainingConfig(BaseConfig):
    """Length, checkpointing, logging and evaluation cadence of a job."""

    save_dir: str = Field("/tmp/model", description="Folder for checkpoints, logs and outputs.")
    num_train_steps: pydantic.PositiveInt = Field(
        1_000_000, description="Number of optimizer steps the job ends at."
    )
    initial_checkpoint_dir: str | None = Field(
        None,
        description="Warm start: load weights from this checkpoint and start at step 0 "
        "(ignored when save_dir already holds a checkpoint to resume).",
    )
    checkpoint_every_n: pydantic.PositiveInt = Field(
        1000, description="Steps between checkpoints (one is also written at the end)."
    )
    checkpoint_max_to_keep: pydantic.PositiveInt | None = Field(
        None, description="Keep only the newest N checkpoints (null: keep all)."
    )
    train_log_every_n: pydantic.PositiveInt = Field(
        1000, description="Steps between training log lines."
    )
    num_eval_steps: int = Field(
        16384,
        description="Batches per evaluation of each validation partition (< 0: the whole "
        "partition; 0: no evaluation).",
    )
    eval_log_every_n: pydantic.PositiveInt = Field(
        5000, description="Steps between evaluations during training."
    )
    eval_timeout_in_s: pydantic.PositiveFloat = Field(
        3600.0, description="How long a separate evaluator waits for a new checkpoint."
    )
    gradient_accumulation: pydantic.PositiveInt | None = Field(
        None, description="Micro-batches whose gradients are summed into one optimizer step."
    )


class RecapConfig(BaseConfig):
    """Everything a training, evaluation or inference job of the ranker needs."""

    training: TrainingConfig = Field(TrainingConfig(), description="Job length and cadence.")
    model: ModelConfig = Field(description="The model.")
    train_data: RecapDataConfig = Field(description="Training data.")
    validation_data: dict[str, RecapDataConfig] = Field(
        {}, description="Named evaluation partitions."
    )
    optimizer: RecapOptimizerConfig = Field(description="Optimizer and learning rates.")
    which_metrics: MetricSet | None = Field(
        None,
        description="Metric set computed per evaluated task at evaluation (null: all): "
        + "; ".join(f"{name.value} = {', '.join(names)}" for name, names in METRICS_OF_SET.items())
        + ". constant_memory skips the metrics that keep every evaluated example.",
    )

    @pydantic.model_validator(mode="after")
    def _check_tasks_line_up(self) -> RecapConfig:
        # Labels are matched to towers by name: the data may carry more labels than the model.
        model_tasks = list(self.model.tasks)
        for task in model_tasks:
            if task not in self.train_data.tasks:
                raise ConfigValueError(
                    "this model task has no label in train_data.tasks", ("model", "tasks", task)
                )
        for name, partition in self.validation_data.items():
            for task in model_tasks:
                if task not in partition.tasks:
                    raise ConfigValueError(
                        f"model task '{task}' has no label in this partition",
                        ("validation_data", name, "tasks"),
                    )
            for index, task in enumerate(partition.evaluation_tasks):
                if task not in self.model.tasks:
                    raise ConfigValueError(
                        f"'{task}' is not a model task",
                        ("validation_data", name, "evaluation_tasks", index),
                    )
        return self

    @pydantic.model_validator(mode="after")
    def _check_learning_rates(self) -> RecapConfig:
        rates = self.optimizer.multi_task_learning_rates
        if rates is None:
            return self
        where = ("optimizer", "multi_task_learning_rates")
        for task in rates.tower_learning_rates:
            if task not in self.model.tasks:
                raise ConfigValueError(
                    f"tower learning rate for '{task}', which is not a model task",
                    (*where, "tower_learning_rates", task),
                )
        for task in self.model.tasks:
            if task not in rates.tower_learning_rates:
                raise ConfigValueError(
                    f"model task '{task}' has no tower learning rate",
                    (*where, "tower_learning_rates"),
                )
        if self.model.backbone is not None and rates.backbone_learning_rate is None:
            raise ConfigValueError(
                "the model has a backbone, so it needs a backbone learning rate",
                (*where, "backbone_learning_rate"),
            )
        return self

    @pydantic.model_validator(mode="after")
    def _check_embedding_features(self) -> RecapConfig:
        large = self.model.large_embeddings
        renamed = self.train_data.seg_dense_schema.renamed_features
        for index, table in enumerate(large.tables if large else []):
            if table.name not in renamed:
                raise ConfigValueError(
                    f"table '{table.name}' reads the renamed feature of the same name, which "
                    "train_data.seg_dense_schema.renamed_features does not define",
                    ("model", "large_embeddings", "tables", index, "name"),
                )
        return self


def main(argv: list[str] | None = None) -> int:
    """Checks a config: prints it resolved as YAML (exit 0) or a one-line error (exit 2)."""
    parser = argparse.ArgumentParser(
        prog="python -m projects.home.recap.config", description="Check a ranker config."
    )
    parser.add_argument("--config_path", required=True, help="YAML config file.")
    parser.add_argument("overrides", nargs="*", help="dotted.path=value overrides.")
    args = parser.parse_args(argv)
    try:
        config = load_config_from_yaml(RecapConfig, args.config_path, args.overrides)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(config.pretty_print(), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
