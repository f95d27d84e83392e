"""Tiny TwHIN jobs on a generated graph, for in-process and multi-process tests."""

from __future__ import annotations

from pathlib import Path

import torch

from projects.twhin.build import build_whole_model
from projects.twhin.config import TwhinConfig
from projects.twhin.data.generate import generate_edges, write_edges
from projects.twhin.job_folder import TwhinJobFolder
from projects.twhin.train import run_training
from tml.checkpoint import checkpoint_folder, load_weights
from tml.core.config import apply_override
from tml.distributed import distributed_environment
from tml.observability.logging import setup_logging

ROWS = {"user": 64, "tweet": 48}


def tiny_config(save_dir: Path, data_dir: Path, *overrides: str) -> TwhinConfig:
    """Two tables (users column-wise, tweets table-wise), two relations (one user->tweet, one
    user->user), adagrad tables; edges 0..1599 train, 1600..1999 validate."""
    optimizer = {"adagrad": {"lr": 0.2}}
    data = {
        "training": {
            "save_dir": str(save_dir),
            "num_train_steps": 4,
            "checkpoint_every_n": 2,
            "train_log_every_n": 1,
            "num_eval_steps": -1,
            "eval_log_every_n": 1000,
        },
        "model": {
            "translation_optimizer": {"sgd": {"lr": 0.1}},
            "embeddings": {
                "tables": [
                    {
                        "name": name,
                        "num_embeddings": rows,
                        "embedding_dim": 8,
                        "optimizer": optimizer,
                        # Placed differently, so that both CPU placements are exercised.
                        "sharding_types": [placement],
                    }
                    for (name, rows), placement in zip(
                        ROWS.items(), ("column_wise", "table_wise"), strict=True
                    )
                ]
            },
            "relations": [
                {"name": "fav", "lhs": "user", "rhs": "tweet"},
                {"name": "follow", "lhs": "user", "rhs": "user"},
            ],
        },
        "train_data": {
            "data_root": str(data_dir / "*.parquet"),
            "per_replica_batch_size": 32,
            "global_negatives": 4,
            "in_batch_negatives": 0,
            "limit": 1600,
        },
        "validation_data": {
            "data_root": str(data_dir / "*.parquet"),
            "per_replica_batch_size": 100,
            "global_negatives": 20,
            "in_batch_negatives": 0,
            "limit": 400,
            "offset": 1600,
        },
    }
    for override in overrides:
        apply_override(data, override, TwhinConfig)
    return TwhinConfig.model_validate(data)


def write_graph(data_dir: Path, config: TwhinConfig, num_edges: int = 2000) -> None:
    """A planted-community graph (4 communities, 5 % noise) for ``config``'s model."""
    edges = generate_edges(config.model, num_edges, communities=4, noise=0.05, seed=1)
    write_edges(edges, str(data_dir), num_files=2)


def train_job(config: TwhinConfig) -> int:
    """Trains ``config`` on this rank (a process of run_on_ranks); returns the final step."""
    with distributed_environment("cpu") as environment:
        setup_logging(environment.rank)
        return run_training(config, environment)


def parameters_at(config: TwhinConfig, step: int) -> dict[str, torch.Tensor]:
    """The whole model's parameters from the job's checkpoint at ``step``."""
    model = build_whole_model(config)
    load_weights(
        model, checkpoint_folder(TwhinJobFolder(config.training.save_dir).checkpoints, step)
    )
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
