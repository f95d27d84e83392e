"""A cycle's data window: the newest complete dated folder, and the job configs that read it.

The window ends at a day (``explicit_date_inputs``) or an hour (``explicit_datetime_inputs``)
folder of ``train_data``. That newest folder is the held-out slice on which the candidate and
the promoted model are compared; the candidate trains on the ``days`` (``hours``) folders before
it, so neither model has seen the slice. The next cycle's window ends one folder later and trains
on this one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from datetime import datetime, timedelta

from projects.home.recap.config import RecapConfig
from projects.home.recap.data.config import (
    DATE_FORMAT,
    DATETIME_FORMAT,
    ExplicitDateInputs,
    ExplicitDatetimeInputs,
    RecapDataConfig,
)
from projects.home.recap.data.files import DATA_FILE_SUFFIX
from projects.home.recap.retrain.config import RetrainingConfig
from tml.core.errors import UserInputError
from tml.storage import list_files

# The validation partition the evaluation phase adds when no holdout_partition is configured.
HOLDOUT = "retraining_holdout"


class NoNewDataError(UserInputError):
    """The window's folders are not (completely) there yet; the message names what is missing."""


@dataclasses.dataclass(frozen=True)
class DataWindow:
    """A window of dated folders ending at ``end``, the newest folder (the held-out slice)."""

    hourly: bool
    end: datetime

    @property
    def step(self) -> timedelta:
        return timedelta(hours=1) if self.hourly else timedelta(days=1)

    @property
    def label(self) -> str:
        """The newest folder as the config spells dates: YYYY/MM/DD or YYYY/MM/DD/HH."""
        return self.end.strftime(DATETIME_FORMAT if self.hourly else DATE_FORMAT)

    @property
    def compact(self) -> str:
        """The newest folder as digits (YYYYMMDD or YYYYMMDDHH), for ids that sort by time."""
        return self.end.strftime("%Y%m%d%H" if self.hourly else "%Y%m%d")


def dated_inputs(config: RecapConfig) -> ExplicitDateInputs | ExplicitDatetimeInputs:
    """The dated folders of ``train_data``.

    Raises:
        UserInputError: when ``train_data`` reads a glob instead.
    """
    data = config.train_data
    inputs = data.explicit_date_inputs or data.explicit_datetime_inputs
    if inputs is None:
        raise UserInputError(
            "train_data: retraining reads dated folders; set train_data.explicit_date_inputs "
            "(daily) or train_data.explicit_datetime_inputs (hourly) instead of inputs"
        )
    return inputs


def parse_end(text: str, hourly: bool) -> datetime:
    """``--end_date`` as a folder time: YYYY/MM/DD for daily data, YYYY/MM/DD/HH for hourly.

    Raises:
        UserInputError: naming the expected format.
    """
    time_format = DATETIME_FORMAT if hourly else DATE_FORMAT
    try:
        return datetime.strptime(text, time_format)
    except ValueError:
        expected = "YYYY/MM/DD/HH" if hourly else "YYYY/MM/DD"
        kind = "hourly" if hourly else "daily"
        raise UserInputError(
            f"--end_date: expected {expected} for {kind} train_data, got '{text}'"
        ) from None


def complete_folders(config: RecapConfig, ready_marker: str | None) -> list[datetime]:
    """The times of the dated folders under ``data_root`` that are completely written, oldest
    first: those holding ``ready_marker`` or, without one, a data file."""
    inputs = dated_inputs(config)
    hourly = isinstance(inputs, ExplicitDatetimeInputs)
    depth = 4 if hourly else 3
    root = inputs.data_root.rstrip("/")
    name = ready_marker or f"*{DATA_FILE_SUFFIX}"
    pattern = "/".join([root, *(["*"] * depth), name])
    folder = re.compile(r"/".join([r"(\d{4})", *([r"(\d{2})"] * (depth - 1))]) + r"$")
    times = set()
    for path in list_files(pattern):
        relative = path[len(root) :].strip("/").rsplit("/", 1)[0]
        match = folder.fullmatch(relative)
        if match is None:
            continue
        try:
            times.add(datetime(*(int(part) for part in match.groups())))
        except ValueError:  # e.g. 2026/13/40: not a date folder
            continue
    return sorted(times)


def resolve_window(
    config: RecapConfig, retraining: RetrainingConfig, end: str | None
) -> DataWindow:
    """The window ending at ``end`` (default: the newest complete folder).

    Raises:
        NoNewDataError: no complete folder at all, or not the one asked for.
    """
    inputs = dated_inputs(config)
    hourly = isinstance(inputs, ExplicitDatetimeInputs)
    folders = complete_folders(config, retraining.ready_marker)
    what = f"with a {retraining.ready_marker} file" if retraining.ready_marker else "with data"
    if end is None:
        if not folders:
            raise NoNewDataError(f"no dated folder {what} under {inputs.data_root}")
        return DataWindow(hourly, folders[-1])
    window = DataWindow(hourly, parse_end(end, hourly))
    if window.end not in folders:
        raise NoNewDataError(f"{inputs.data_root}/{window.label} is not a folder {what} yet")
    return window


def training_config(
    config: RecapConfig, window: DataWindow, save_dir: str, warm_start: str | None
) -> RecapConfig:
    """The candidate's job: ``train_data`` over the folders before the held-out one (or through
    it, when the held-out slice is a configured partition), saved to ``save_dir``, warm-started
    from ``warm_start`` (a checkpoint folder; None: from scratch)."""
    data = config.model_dump(mode="json")
    inputs = dated_inputs(config)
    through = window.end if config_holdout(config) is not None else window.end - window.step
    if isinstance(inputs, ExplicitDatetimeInputs):
        # An hourly window ending at E reads the hours before E.
        dated = data["train_data"]["explicit_datetime_inputs"]
        dated["end_datetime"] = (through + window.step).strftime(DATETIME_FORMAT)
    else:
        dated = data["train_data"]["explicit_date_inputs"]
        dated["end_date"] = through.strftime(DATE_FORMAT)
    data["training"]["save_dir"] = save_dir
    data["training"]["initial_checkpoint_dir"] = warm_start
    return RecapConfig.model_validate(data)


def config_holdout(config: RecapConfig) -> str | None:
    """The configured held-out partition, or None for the window's newest folder."""
    return config.retraining.holdout_partition if config.retraining is not None else None


def holdout_data(config: RecapConfig, window: DataWindow) -> RecapDataConfig:
    """The held-out slice: the configured partition, or the window's newest folder read like
    ``train_data`` (without ``downsample_negatives``, a training step that drops rows)."""
    configured = config_holdout(config)
    if configured is not None:
        return config.validation_data[configured]
    data = config.train_data.model_dump(mode="json")
    inputs = dated_inputs(config)
    if isinstance(inputs, ExplicitDatetimeInputs):
        data["explicit_datetime_inputs"] = {
            "data_root": inputs.data_root,
            "end_datetime": (window.end + window.step).strftime(DATETIME_FORMAT),
            "hours": 1,
        }
    else:
        data["explicit_date_inputs"] = {
            "data_root": inputs.data_root,
            "end_date": window.label,
            "days": 1,
        }
    if data.get("preprocess"):
        data["preprocess"]["downsample_negatives"] = None
    data["evaluation_tasks"] = []
    return RecapDataConfig.model_validate(data)


def cycle_id(config: RecapConfig, window: DataWindow, warm_start: str) -> str:
    """The cycle's id: the window's end and a digest of everything that decides the candidate
    (the job config as resolved, overrides included, and the warm-start choice), so the same
    command on the same window is the same cycle, and a changed config a new one."""
    data = config.model_dump(mode="json")
    # Decided by the cycle, not by the user: the same for every run of one cycle.
    data["training"]["save_dir"] = None
    data["training"]["initial_checkpoint_dir"] = None
    text = json.dumps({"config": data, "warm_start": warm_start, "window": window.label})
    digest = hashlib.sha256(text.encode()).hexdigest()[:10]
    return f"{window.compact}-{digest}"
