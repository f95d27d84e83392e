"""A cycle's window: the newest complete dated folder, the training days before it, the held-out
folder, and the cycle id."""

from __future__ import annotations

from pathlib import Path

import pytest

from projects.home.recap.config import RecapConfig
from projects.home.recap.retrain.config import RetrainingConfig
from projects.home.recap.retrain.window import (
    NoNewDataError,
    cycle_id,
    holdout_data,
    resolve_window,
    training_config,
)
from tml.core.config import load_config_from_yaml
from tml.core.errors import UserInputError

CONFIG = Path(__file__).parents[1] / "fixtures" / "retrain.yaml"
HOURLY = [
    "train_data.explicit_date_inputs=null",
    "train_data.explicit_datetime_inputs={data_root: '${TML_TEST_RUN}/data', "
    "end_datetime: 2026/12/01/00, hours: 2}",
]


def load(run_dir: Path, monkeypatch, *overrides: str) -> RecapConfig:
    monkeypatch.setenv("TML_TEST_RUN", str(run_dir))
    return load_config_from_yaml(RecapConfig, CONFIG, overrides)


def folder(run_dir: Path, when: str, *files: str) -> None:
    path = run_dir / "data" / when
    path.mkdir(parents=True)
    for name in files:
        (path / name).write_bytes(b"")


def test_the_newest_folder_with_data_ends_the_window(tmp_path, monkeypatch):
    config = load(tmp_path, monkeypatch)
    folder(tmp_path, "2026/12/01", "part-0.parquet")
    folder(tmp_path, "2026/12/02", "part-0.parquet", "_SUCCESS")
    folder(tmp_path, "2026/12/03", "part-0.parquet.tmp")  # still being written
    folder(tmp_path, "2026/13/40", "part-0.parquet")  # not a date
    window = resolve_window(config, RetrainingConfig(), None)
    assert window.label == "2026/12/02" and window.compact == "20261202"
    assert resolve_window(config, RetrainingConfig(), "2026/12/01").label == "2026/12/01"
    with pytest.raises(NoNewDataError, match="2026/12/03 is not a folder with data yet"):
        resolve_window(config, RetrainingConfig(), "2026/12/03")
    marked = RetrainingConfig(ready_marker="_SUCCESS")
    with pytest.raises(NoNewDataError, match="2026/12/01 is not a folder with a _SUCCESS file"):
        resolve_window(config, marked, "2026/12/01")
    assert resolve_window(config, marked, None).label == "2026/12/02"


def test_no_folder_at_all_is_no_new_data(tmp_path, monkeypatch):
    config = load(tmp_path, monkeypatch)
    with pytest.raises(NoNewDataError, match="no dated folder with data under"):
        resolve_window(config, RetrainingConfig(), None)


def test_training_reads_the_days_before_the_held_out_one(tmp_path, monkeypatch):
    config = load(tmp_path, monkeypatch, "train_data.explicit_date_inputs.days=3")
    folder(tmp_path, "2026/12/05", "part-0.parquet")
    window = resolve_window(config, RetrainingConfig(), None)
    job = training_config(config, window, str(tmp_path / "job"), "/ckpt/step_4")
    dated = job.train_data.explicit_date_inputs
    assert (dated.end_date, dated.days) == ("2026/12/04", 3)
    assert job.training.save_dir == str(tmp_path / "job")
    assert job.training.initial_checkpoint_dir == "/ckpt/step_4"
    held_out = holdout_data(job, window).explicit_date_inputs
    assert (held_out.end_date, held_out.days) == ("2026/12/05", 1)


def test_hourly_windows_hold_out_the_newest_hour(tmp_path, monkeypatch):
    config = load(tmp_path, monkeypatch, *HOURLY)
    folder(tmp_path, "2026/12/01/05", "part-0.parquet")
    folder(tmp_path, "2026/12/01/06", "part-0.parquet")
    window = resolve_window(config, RetrainingConfig(), None)
    assert window.label == "2026/12/01/06"
    job = training_config(config, window, "job", None)
    # An hourly window ending at E reads the hours before E: here 04 and 05.
    assert job.train_data.explicit_datetime_inputs.end_datetime == "2026/12/01/06"
    assert holdout_data(job, window).explicit_datetime_inputs.end_datetime == "2026/12/01/07"
    with pytest.raises(UserInputError, match="expected YYYY/MM/DD/HH for hourly"):
        resolve_window(config, RetrainingConfig(), "2026/12/01")


def test_the_cycle_id_follows_config_and_window_but_not_the_folder(tmp_path, monkeypatch):
    folder(tmp_path, "2026/12/01", "part-0.parquet")
    folder(tmp_path, "2026/12/02", "part-0.parquet")
    config = load(tmp_path, monkeypatch)
    newest = resolve_window(config, RetrainingConfig(), None)
    older = resolve_window(config, RetrainingConfig(), "2026/12/01")

    def identity(config: RecapConfig, window, save_dir="a", warm_start="promoted") -> str:
        return cycle_id(training_config(config, window, save_dir, None), window, warm_start)

    same = identity(config, newest)
    assert same.startswith("20261202-") and identity(config, newest, save_dir="b") == same
    assert identity(config, older).startswith("20261201-")
    assert identity(config, newest, warm_start="scratch") != same
    changed = load(tmp_path, monkeypatch, "training.num_train_steps=5")
    assert identity(changed, newest) != same


def test_a_glob_input_cannot_be_retrained(tmp_path, monkeypatch):
    config = load(
        tmp_path, monkeypatch, "train_data.explicit_date_inputs=null", "train_data.inputs=x/*"
    )
    with pytest.raises(UserInputError, match="retraining reads dated folders"):
        resolve_window(config, RetrainingConfig(), None)
