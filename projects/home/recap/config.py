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
from tml.core.cli import add_config_arguments, exit_status
from tml.core.config import BaseConfig, ConfigValueError, Field, load_config_from_yaml


class TrainingConfig(BaseConfig):
    """Length, checkpointing, logging and evaluation cadence of a job."""

    save_dir: str = Field(
        "/tmp/model",
        description="Folder (or object-store URL) for checkpoints, logs and outputs; one "
        "training job at a time (it holds the folder's job.lock).",
    )
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
        None,
        description="Micro-batches of global_batch_size whose gradients are summed into one "
        "optimizer step. Large tables are then replicated (data_parallel): torchrec's sharded "
        "tables are updated inside every backward pass and cannot accumulate.",
    )
    bf16_autocast: bool = Field(
        False,
        description="Run the forward pass under bfloat16 autocast; weights, gradients and "
        "optimizer state stay float32.",
    )
    seed: int = Field(
        0, description="Seed of parameter initialisation, data shuffling and dropout."
    )
    collective_timeout_in_s: pydantic.PositiveFloat = Field(
        900.0,
        description="How long a collective (and joining the process group) waits for the "
        "slowest rank before the job fails instead of hanging. Longer than the slowest "
        "checkpoint write or evaluation pass, during which the other ranks may wait.",
    )
    step_timeout_in_s: pydantic.PositiveFloat | None = Field(
        900.0,
        description="A rank on which no training step (with the logging and checkpoint "
        "staging between steps; evaluation excluded) finishes within this many seconds fails "
        "the job, naming itself, the step and where it is stuck, then printing its stacks; "
        "torchrun then restarts the workers or ends the job (null: never).",
    )
    preemption_grace_period_in_s: pydantic.PositiveFloat = Field(
        25.0,
        description="After SIGTERM or SIGUSR1 reaches any rank, every rank stops at the next "
        "step boundary, writes a checkpoint and exits 0; a rank not done within this many "
        "seconds exits 1 instead. Keep it below the orchestrator's own grace period "
        "(Kubernetes terminationGracePeriodSeconds, default 30 s; torchrun --shutdown-timeout, "
        "default 30 s) and above the time of one step plus one checkpoint write.",
    )
    sharding_plan: str | None = Field(
        None,
        description="A plan written by tml-recap-plan --json: train mode places the large "
        "tables as it says instead of planning (null: plan at start). It must be made for this "
        "model's tables and the job's world size, ranks per machine and device, which is "
        "checked before training. Evaluation and inference plan for their own ranks.",
    )

    @pydantic.model_validator(mode="after")
    def _check_save_dir(self) -> TrainingConfig:
        # An empty path would put checkpoints and logs into whatever folder the job starts in.
        if not self.save_dir.strip():
            raise ConfigValueError(
                "is empty; name a folder or an object-store URL for the job's files",
                ("save_dir",),
            )
        return self


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
    args = parser.parse_args(argv)

    def check() -> None:
        config = load_config_from_yaml(RecapConfig, args.config_path, args.overrides)
        print(config.pretty_print(), end="")

    return exit_status(check)


if __name__ == "__main__":
    sys.exit(main())
