"""A tiny segdense schema and data whose every value is known, for the data tests."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from projects.home.recap.data.config import RecapDataConfig
from projects.home.recap.data.parquet_format import SegDenseWriter, WriteOptions
from projects.home.recap.data.schema import load_schema

LABELS = ["label.a", "label.b", "label.c"]
SCHEMA = {
    "schema": [
        {"feature_name": "cont", "dtype": "float_list", "length": 12},
        {"feature_name": "bin", "dtype": "int64_list", "length": 6},
        {"feature_name": "disc", "dtype": "int64_list", "length": 4},
        *({"feature_name": name, "dtype": "int64_list", "length": 1} for name in LABELS),
        {"feature_name": "meta.user_id", "dtype": "int64_list", "length": 1},
        {"feature_name": "meta.tweet_id", "dtype": "int64_list", "length": 1},
        {"feature_name": "user.emb", "dtype": "float_list", "length": 4},
        {"feature_name": "ts.served", "dtype": "int64_list", "length": 1},
        {"feature_name": "ts.impressed", "dtype": "int64_list", "length": 1},
        {"feature_name": "ts.engaged_a", "dtype": "int64_list", "length": 1},
        {"feature_name": "text", "dtype": "bytes_list", "length": 1},
    ]
}


def rows_for(ids: np.ndarray) -> dict[str, Any]:
    """Values of the examples with the given ids: every feature is a function of the id."""
    ids = np.asarray(ids, dtype=np.int64)
    count = len(ids)
    columns = np.arange(12, dtype=np.float32)
    return {
        "cont": (ids[:, None] * 100 + columns).astype(np.float32),
        "bin": ((ids[:, None] + np.arange(6)) % 2).astype(np.int64),
        "disc": ids[:, None] * 10 + np.arange(4),
        "label.a": (ids % 3 == 0).astype(np.int64)[:, None],
        "label.b": (ids % 5 == 0).astype(np.int64)[:, None],
        "label.c": (ids % 7 == 0).astype(np.int64)[:, None],
        "meta.user_id": (ids * 7919)[:, None],
        "meta.tweet_id": ids[:, None],
        "user.emb": (ids[:, None] + np.arange(4) / 10).astype(np.float32),
        "ts.served": np.full((count, 1), 1_000_000, np.int64),
        "ts.impressed": (1_000_000 + ids * 1000)[:, None],
        "ts.engaged_a": (1_000_000 + ids * 2000)[:, None],
        "text": [b"t%d" % i for i in ids],
    }


@pytest.fixture
def schema_path(tmp_path: Path) -> str:
    path = tmp_path / "segdense.json"
    path.write_text(json.dumps(SCHEMA))
    return str(path)


@pytest.fixture
def write_files(tmp_path: Path, schema_path: str) -> Callable[..., list[str]]:
    """Writes files of consecutive ids: ``write_files([10, 7], row_group_size=4)`` writes ids
    0..9 into one file and 10..16 into another."""

    def write(
        sizes: list[int], folder: str = "data", row_group_size: int = 4, chunk_size: int = 5
    ) -> list[str]:
        schema = load_schema(schema_path)
        directory = tmp_path / folder
        directory.mkdir(parents=True, exist_ok=True)
        paths, start = [], 0
        options = WriteOptions(row_group_size=row_group_size, chunk_size=chunk_size)
        for index, size in enumerate(sizes):
            path = str(directory / f"part-{index:05d}.parquet")
            with SegDenseWriter(path, schema, options) as writer:
                writer.write(rows_for(np.arange(start, start + size)))
            paths.append(path)
            start += size
        return paths

    return write


@pytest.fixture
def make_config(tmp_path: Path, schema_path: str) -> Callable[..., RecapDataConfig]:
    """A data config over ``tmp_path/data/*.parquet``; keyword arguments override fields."""

    def make(**overrides: Any) -> RecapDataConfig:
        data: dict[str, Any] = {
            "inputs": str(tmp_path / "data" / "*.parquet"),
            "global_batch_size": 4,
            "seg_dense_schema": {
                "schema_path": schema_path,
                "renamed_features": {
                    "continuous": "cont",
                    "binary": "bin",
                    "discrete": "disc",
                    "user_embedding": "user.emb",
                    "meta__user_id": "meta.user_id",
                    "meta__tweet_id": "meta.tweet_id",
                },
            },
            "tasks": {name: {} for name in LABELS},
        }
        for key, value in overrides.items():
            if key == "seg_dense_schema":
                data[key] = {**data[key], **value}
            else:
                data[key] = value
        return RecapDataConfig.model_validate(data)

    return make
