"""A tiny ranker job fed fixed batches, for multi-process training tests.

Every global step's examples are a deterministic function of their row numbers, so a job on two
ranks, on one rank, or with gradient accumulation sees exactly the same examples per optimizer
step, only split differently.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from pathlib import Path
from typing import Any

import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from projects.home.recap.build import (
    build_data,
    build_whole_model,
    load_trained_model,
    model_input_spec,
)
from projects.home.recap.config import RecapConfig
from projects.home.recap.data.dataset import ReadOptions
from projects.home.recap.data.reading import ROW_FILE, ROW_IN_FILE
from projects.home.recap.inputs import DenseInputs, RecapBatch
from projects.home.recap.job_folder import JobFolder
from projects.home.recap.train import build_trainer, run_training
from tml.checkpoint import checkpoint_folder, complete_steps, is_complete
from tml.core.config import apply_override
from tml.distributed import distributed_environment, running_statistics
from tml.observability.logging import setup_logging

REPO = Path(__file__).resolve().parents[4]
SCHEMA = REPO / "projects/home/recap/config/home_recap_2022/segdense.json"
TASKS = [
    "recap.engagement.is_favorited",
    "recap.engagement.is_replied",
    "recap.engagement.is_retweeted",
]
TABLES = {"meta__user_id": 50, "meta__author_id": 40}
_RAMP = {"linear_ramp_to_constant": {"learning_rate": 0.01, "num_ramp_steps": 2}}


def tiny_config(save_dir: Path, *overrides: str) -> RecapConfig:
    """A small share_all ranker with two large tables and no batch norm (per-rank statistics
    would make 1-rank and 2-rank runs differ)."""
    data = {
        "training": {
            "save_dir": str(save_dir),
            "num_train_steps": 4,
            "checkpoint_every_n": 2,
            "train_log_every_n": 1,
            "num_eval_steps": 0,
        },
        "model": {
            "multi_task_type": "share_all",
            "featurization_config": {"log1p_abs_config": {}},
            "backbone": {"mlp_config": {"layer_sizes": [16], "final_layer_activation": True}},
            "large_embeddings": {
                "tables": [
                    {
                        "name": name,
                        "num_embeddings": rows,
                        "embedding_dim": 4,
                        "sharding_types": ["table_wise"],
                    }
                    for name, rows in TABLES.items()
                ],
                "optimizer": {"init_learning_rate": 0.5},
            },
            "tasks": {task: {"mlp_config": {"layer_sizes": [8, 1]}} for task in TASKS},
        },
        "train_data": {
            "global_batch_size": 16,
            "inputs": str(save_dir / "unused" / "*.parquet"),
            "seg_dense_schema": {
                "schema_path": str(SCHEMA),
                "renamed_features": {
                    "continuous": "home_recap_2022_cont__segdense_vals",
                    "binary": "home_recap_2022_binary__segdense_vals",
                    "user_embedding": "user.timelines.twhin_user_follow_embeddings."
                    "twhin_user_follow_embeddings",
                    "meta__user_id": "meta.user_id",
                    "meta__author_id": "meta.author_id",
                },
            },
            "tasks": {task: {} for task in TASKS},
            "preprocess": {
                "truncate_and_slice": {
                    "continuous_feature_truncation": 12,
                    "binary_feature_truncation": 6,
                }
            },
        },
        "optimizer": {
            "multi_task_learning_rates": {
                "backbone_learning_rate": copy.deepcopy(_RAMP),
                "tower_learning_rates": {task: copy.deepcopy(_RAMP) for task in TASKS},
            }
        },
    }
    for override in overrides:
        apply_override(data, override, RecapConfig)
    return RecapConfig.model_validate(data)


def example_rows(start: int, stop: int, config: RecapConfig) -> RecapBatch:
    """Rows ``start..stop`` of the job's endless example stream."""
    widths = model_input_spec(config).widths
    rows = []
    for row in range(start, stop):
        generator = torch.Generator().manual_seed(1000 + row)
        rows.append(
            {
                "continuous": torch.randn(widths.continuous, generator=generator) * 3,
                "binary": torch.randint(0, 2, (widths.binary,), generator=generator),
                "user_embedding": torch.randn(
                    widths.embeddings["user_embedding"], generator=generator
                ),
                "labels": (torch.rand(len(TASKS), generator=generator) < 0.3).float(),
                "ids": [
                    int(torch.randint(0, rows_, (1,), generator=generator))
                    for rows_ in TABLES.values()
                ],
            }
        )
    count = len(rows)
    ids = torch.tensor([[row["ids"][t] for row in rows] for t in range(len(TABLES))])
    tables = config.model.large_embeddings
    return RecapBatch(
        inputs=DenseInputs(
            continuous_features=torch.stack([row["continuous"] for row in rows]),
            binary_features=torch.stack([row["binary"] for row in rows]),
            discrete_features=torch.zeros(count, 0, dtype=torch.int64),
            user_embedding=torch.stack([row["user_embedding"] for row in rows]),
        ),
        labels=torch.stack([row["labels"] for row in rows]),
        weights=torch.ones(count, len(TASKS)),
        sparse_features=KeyedJaggedTensor.from_lengths_sync(
            keys=list(TABLES),
            values=ids.reshape(-1),
            lengths=torch.ones(len(TABLES) * count, dtype=torch.int32),
        )
        if tables is not None
        else None,
    )


class FixedBatches:
    """This rank's slice of each micro-batch of the example stream, resumable."""

    def __init__(self, config: RecapConfig, rank: int, world_size: int) -> None:
        self.config = config
        self.micro_batch = config.train_data.global_batch_size
        self.per_rank = self.micro_batch // world_size
        self.rank = rank
        self.next_micro_batch = 0

    def __iter__(self):
        while True:
            start = self.next_micro_batch * self.micro_batch + self.rank * self.per_rank
            self.next_micro_batch += 1
            yield example_rows(start, start + self.per_rank, self.config)

    def state_dict(self) -> dict[str, Any]:
        return {"next_micro_batch": self.next_micro_batch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.next_micro_batch = state["next_micro_batch"]


def train_job(config: RecapConfig, device_type: str = "cpu") -> int:
    """Trains ``config`` on fixed batches on this rank (on ``device_type``: "cuda" gives each
    rank its GPU and NCCL); returns the final step."""
    with distributed_environment(device_type) as environment:
        setup_logging(environment.rank)
        batches = FixedBatches(config, environment.rank, environment.world_size)
        return run_training(config, environment, batches)


def train_job_stopped_and_resumed(stopped: RecapConfig, full: RecapConfig) -> tuple[int, int]:
    """Trains ``stopped`` (a shorter job in the same folder), then ``full``, which resumes from
    the former's last checkpoint, in one process (a relaunch without the start-up cost)."""
    with distributed_environment("cpu") as environment:
        setup_logging(environment.rank)
        steps = []
        for config in (stopped, full):
            batches = FixedBatches(config, environment.rank, environment.world_size)
            steps.append(run_training(config, environment, batches))
        return steps[0], steps[1]


def train_job_statistics(config: RecapConfig) -> tuple[int, dict[str, torch.Tensor]]:
    """:func:`train_job`, returning also this rank's batch norm running statistics after it."""
    with distributed_environment("cpu") as environment:
        setup_logging(environment.rank)
        batches = FixedBatches(config, environment.rank, environment.world_size)
        with build_trainer(config, environment, batches) as trainer:
            trainer.train()
            statistics = {
                name: tensor.detach().clone()
                for name, tensor in running_statistics(trainer.model).items()
            }
            return trainer.step, statistics


def full_parameters(config: RecapConfig, step: int) -> dict[str, torch.Tensor]:
    """The model's parameters (tables gathered) from the job's checkpoint at ``step``."""
    folder = checkpoint_folder(JobFolder(config.training.save_dir).checkpoints, step)
    model = build_whole_model(config, model_input_spec(config))
    return dict(load_trained_model(model, folder).state_dict())


def fail_while_checkpointing(config: RecapConfig) -> dict[str, Any]:
    """Builds the trainer, starts a checkpoint write, then fails inside the trainer's block.

    Returns what a restart would find: whether the checkpoint is complete and whether the
    metric loggers still accept records.
    """
    with distributed_environment("cpu") as environment:
        setup_logging(environment.rank)
        batches = FixedBatches(config, environment.rank, environment.world_size)
        trainer = build_trainer(config, environment, batches)
        try:
            with trainer:
                trainer.checkpoints.save(1, trainer.state_dict())
                raise RuntimeError("a bad batch")
        except RuntimeError:
            pass
        folder = checkpoint_folder(JobFolder(config.training.save_dir).checkpoints, 1)
        try:
            trainer.loggers.log(1, {"loss": 1.0})
            loggers_open = True
        except ValueError:  # writing to a closed file
            loggers_open = False
        return {"complete": is_complete(folder), "loggers_open": loggers_open}


class _Kept(logging.Handler):
    def __init__(self, messages: list[str]) -> None:
        super().__init__(logging.INFO)
        self.messages = messages

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def train_job_with_sharding_log(config: RecapConfig) -> tuple[int, list[str]]:
    """:func:`train_job`, returning also what this rank logged about the tables' placement."""
    messages: list[str] = []
    handler = _Kept(messages)
    sharding_logger = logging.getLogger("projects.home.recap.sharding")
    sharding_logger.addHandler(handler)
    try:
        return train_job(config), messages
    finally:
        sharding_logger.removeHandler(handler)


class RecordingRows:
    """A real loader whose batches' rows are recorded as (file path, row in file), in the
    order they leave the loader, and whose resharded resume is reported."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset
        self.batches: list[list[tuple[str, int]]] = []
        self.report: Any = None

    def __iter__(self):
        for batch in self.dataset:
            paths = self.dataset.file_paths
            files = batch.extra_features[ROW_FILE].flatten().tolist()
            rows = batch.extra_features[ROW_IN_FILE].flatten().tolist()
            self.batches.append([(paths[f], r) for f, r in zip(files, rows, strict=True)])
            yield batch

    def state_dict(self) -> dict[str, Any]:
        return self.dataset.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.dataset.load_state_dict(state)

    def load_resharded_state_dicts(self, states: list[dict[str, Any]]) -> Any:
        self.report = self.dataset.load_resharded_state_dicts(states)
        return self.report


def train_job_recording_rows(config: RecapConfig) -> tuple[int, int, list, Any]:
    """Trains on the real files of ``config.train_data`` on this rank; returns the step it
    started from, the step reached, the rows of each batch read, and the resharding report
    (None without one). Batches read ahead but not trained are among the rows: count by
    steps."""
    with distributed_environment("cpu") as environment:
        setup_logging(environment.rank)
        options = dataclasses.replace(ReadOptions.training(), row_ids=True)
        recorder = RecordingRows(build_data(config, config.train_data, options, environment))
        steps = complete_steps(JobFolder(config.training.save_dir).checkpoints)
        start = max(steps, default=0)
        step = run_training(config, environment, recorder)
        return start, step, recorder.batches, recorder.report
