"""The ranker's top-level config, and a checker for it.

Check a config before launching a big job::

    python -m projects.home.recap.config --config_path CFG [dotted.path=value ...]

prints the resolved config as YAML and exits 0, or prints a one-line error and exits 2.
"""

from __future__ import annotations

import argparse
import sys

import pydantic

from projects.home.recap.data.config import RecapDataConfig
from projects.home.recap.evaluation.metric_sets import METRICS_OF_SET, MetricSet
from projects.home.recap.inference_config import InferenceConfig
from projects.home.recap.model.config import ModelConfig
from projects.home.recap.optimizer.config import RecapOptimizerConfig
from projects.home.recap.retrain.config import RetrainingConfig, check_retraining
from tml.core.cli import add_config_arguments, exit_status, parse_command_line
from tml.core.config import BaseConfig, ConfigValueError, Field, load_config_from_yaml
from tml.core.config.training import BaseTrainingConfig


class TrainingConfig(BaseTrainingConfig):
    """Length, checkpointing, logging and evaluation cadence of a job, and how the ranker's steps
    run (gradient accumulation, autocast, a saved sharding plan)."""

    gradient_accumulation: pydantic.PositiveInt | None = Field(
        None,
        description="Micro-batches of global_batch_size whose gradients are summed into one "
        "optimizer step. Large tables are then replicated (data_parallel): torchrec's sharded "
        "tables are updated inside every backward pass and cannot accumulate.",
    )
    bf16_autocast: bool = Field(
        False,
        description="Run the forward pass under bfloat16 autocast; weights, gradients and "
        "optimizer state stay float32. Pays on GPUs and on CPUs with bf16 units (AVX512-BF16, "
        "AMX); elsewhere bf16 is emulated and far slower than fp32, and the trainer warns.",
    )
    sharding_plan: str | None = Field(
        None,
        description="A plan written by tml-recap-plan --json: train mode places the large "
        "tables as it says instead of planning (null: plan at start). It must be made for this "
        "model's tables and the job's world size, ranks per machine and device, which is "
        "checked before training. Evaluation and inference plan for their own ranks.",
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
    inference: InferenceConfig = Field(
        InferenceConfig(), description="Inference mode: data, checkpoint, score weights, output."
    )
    which_metrics: MetricSet | None = Field(
        None,
        description="Metric set computed per evaluated task at evaluation (null: all): "
        + "; ".join(f"{name.value} = {', '.join(names)}" for name, names in METRICS_OF_SET.items())
        + ". constant_memory skips the metrics that keep every evaluated example.",
    )
    retraining: RetrainingConfig | None = Field(
        None,
        description="Production retraining (tml-recap-retrain): held-out slice, promotion gate, "
        "launch, registry lock (null: the defaults, checked when the command starts).",
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
        shared = self.model.shared_parameter_sources(
            self.train_data.seg_dense_schema.renamed_features
        )
        if shared and rates.backbone_learning_rate is None:
            raise ConfigValueError(
                f"the model has parameters outside its towers ({', '.join(shared)}), trained "
                "at the backbone learning rate, which is not set",
                (*where, "backbone_learning_rate"),
            )
        return self

    @pydantic.model_validator(mode="after")
    def _check_inference(self) -> RecapConfig:
        data = self.inference.data
        if data is not None and data not in self.validation_data:
            raise ConfigValueError(
                f"'{data}' is not a validation_data partition "
                f"(partitions: {sorted(self.validation_data)})",
                ("inference", "data"),
            )
        for task in self.inference.ranking_weights or {}:
            if task not in self.model.tasks:
                raise ConfigValueError(
                    "ranking weight for a task the model does not predict",
                    ("inference", "ranking_weights", task),
                )
        return self

    @pydantic.model_validator(mode="after")
    def _check_accumulation_placement(self) -> RecapConfig:
        # torchrec's model-parallel tables only have fused kernels, which update a table inside
        # every backward pass; only replicated tables can sum gradients over micro-batches.
        large = self.model.large_embeddings
        if (self.training.gradient_accumulation or 1) == 1 or large is None:
            return self
        for index, table in enumerate(large.tables):
            where = ("model", "large_embeddings", "tables", index)
            if table.sharding_types is not None and "data_parallel" not in table.sharding_types:
                raise ConfigValueError(
                    "gradient accumulation needs replicated tables (data_parallel): sharded "
                    "tables are updated inside every backward pass; allow data_parallel or "
                    "drop training.gradient_accumulation",
                    (*where, "sharding_types"),
                )
            if table.compute_kernels is not None and "dense" not in table.compute_kernels:
                raise ConfigValueError(
                    "gradient accumulation needs the dense kernel of replicated tables",
                    (*where, "compute_kernels"),
                )
        return self

    @pydantic.model_validator(mode="after")
    def _check_retraining(self) -> RecapConfig:
        if self.retraining is not None:
            check_retraining(self, self.retraining)
        return self

    @pydantic.model_validator(mode="after")
    def _check_sharding_plan(self) -> RecapConfig:
        if self.training.sharding_plan is not None and self.model.large_embeddings is None:
            raise ConfigValueError(
                "a sharding plan places large tables, and model.large_embeddings has none",
                ("training", "sharding_plan"),
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
    add_config_arguments(parser)
    args = parse_command_line(parser, argv)

    def check() -> None:
        config = load_config_from_yaml(RecapConfig, args.config_path, args.overrides)
        print(config.pretty_print(), end="")

    return exit_status(check)


if __name__ == "__main__":
    sys.exit(main())
