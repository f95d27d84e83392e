"""Bringing a table of your own: CSV + mapping -> data the loader reads and a config that trains."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from projects.home.recap.config import RecapConfig
from projects.home.recap.data.dataset import ReadOptions, build_dataset
from projects.home.recap.tools import import_table
from tml.core.config import load_config_from_yaml

REPO = Path(__file__).parents[5]
IN_ORDER = ReadOptions(shuffle=False, repeat=False, with_labels=True, weigh_by_sampling_rates=False)
MAPPING = """\
source: ratings.csv
output_dir: imported
labels: [clicked, liked]
continuous: [age, price]
binary: [is_weekend]
discrete: [genre]
ids: {meta__user_id: user, meta__author_id: item}
embeddings: {user_embedding: [u0, u1, u2]}
validation_every: 4
"""


def write_csv(folder: Path, rows: int = 200) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    table = {
        "user": np.array([f"user{i % 17}" for i in range(rows)]),
        "item": rng.integers(0, 50, rows),
        "age": rng.integers(18, 80, rows).astype(np.float64),
        "price": np.round(rng.lognormal(2, 1, rows), 2),
        "is_weekend": rng.integers(0, 2, rows),
        "genre": rng.integers(0, 12, rows),
        "u0": rng.standard_normal(rows).round(3),
        "u1": rng.standard_normal(rows).round(3),
        "u2": rng.standard_normal(rows).round(3),
        "clicked": rng.integers(0, 2, rows),
        "liked": (rng.random(rows) < 0.2).astype(int),
        "unused": ["x"] * rows,
    }
    lines = [",".join(table)]
    lines += [",".join(str(table[name][row]) for name in table) for row in range(rows)]
    (folder / "ratings.csv").write_text("\n".join(lines) + "\n")
    return table


def test_csv_becomes_data_the_loader_reads(tmp_path: Path, capsys):
    table = write_csv(tmp_path)
    (tmp_path / "mapping.yaml").write_text(MAPPING)
    assert import_table.main(["--mapping", str(tmp_path / "mapping.yaml")]) == 0
    assert "wrote 150 training and 50 validation rows" in capsys.readouterr().out
    out = tmp_path / "imported"
    config = load_config_from_yaml(RecapConfig, str(out / "starter.yaml"))
    batches = list(build_dataset(config.train_data, options=IN_ORDER, tasks=["clicked", "liked"]))
    train_rows = np.flatnonzero(np.arange(200) % 4 != 0)
    continuous = np.concatenate([batch.inputs.continuous_features.numpy() for batch in batches])
    expected = np.stack([table["age"], table["price"]], axis=1).astype(np.float32)[train_rows]
    assert np.array_equal(continuous, expected)
    labels = np.concatenate([batch.labels.numpy() for batch in batches])
    assert labels.tolist() == np.stack([table["clicked"], table["liked"]], 1)[train_rows].tolist()
    discrete = np.concatenate([batch.inputs.discrete_features.numpy() for batch in batches])
    assert discrete[:, 0].tolist() == table["genre"][train_rows].tolist()
    items = np.concatenate([b.extra_features["meta__author_id"].numpy() for b in batches])
    assert items[:, 0].tolist() == table["item"][train_rows].tolist()
    users = np.concatenate([b.extra_features["meta__user_id"].numpy() for b in batches])[:, 0]
    # String ids are hashed, the same string to the same id.
    assert len(set(users.tolist())) == 17
    embedding = np.concatenate([batch.inputs.user_embedding.numpy() for batch in batches])
    assert np.allclose(embedding[:, 2], table["u2"][train_rows])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"continuous: [age, price]": "continuous: [age, prize]"}, "no column 'prize'"),
        ({"labels: [clicked, liked]": "labels: [clicked, age]"}, "column 'age' must hold 0 or 1"),
        ({"validation_every: 4": "validation_evry: 4"}, "validation_evry"),
    ],
)
def test_mistakes_are_one_line(tmp_path: Path, capsys, change: dict[str, str], message: str):
    write_csv(tmp_path)
    text = MAPPING
    for old, new in change.items():
        text = text.replace(old, new)
    (tmp_path / "mapping.yaml").write_text(text)
    assert import_table.main(["--mapping", str(tmp_path / "mapping.yaml")]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: ") and message in error and "\n" not in error


@pytest.mark.slow
def test_starter_config_trains_through_the_real_command(tmp_path: Path):
    write_csv(tmp_path, rows=600)
    (tmp_path / "mapping.yaml").write_text(MAPPING)
    assert import_table.main(["--mapping", str(tmp_path / "mapping.yaml")]) == 0
    config = tmp_path / "imported" / "starter.yaml"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
        "-m", "projects.home.recap.main", "--config_path", str(config),
        "training.num_train_steps=4", "training.checkpoint_every_n=4",
        "training.train_log_every_n=2", "training.eval_log_every_n=4",
        "train_data.global_batch_size=32",
    ]  # fmt: skip
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run(
        command, cwd=REPO, env=environment, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-4000:]
    model = tmp_path / "imported" / "model"
    assert (model / "checkpoints" / "step_4" / "COMPLETE").exists()
    losses = [json.loads(line)["loss"] for line in (model / "train.jsonl").read_text().splitlines()]
    assert losses and all(np.isfinite(losses))
