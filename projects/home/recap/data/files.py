"""Which files a dataset reads: a glob, or dated folders over a window of days or hours.

Every pattern and ``data_root`` may be a local path or an object-store URL (``s3://bucket/...``,
see :mod:`tml.storage`); the files come back as URLs then.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from datetime import datetime, timedelta

from projects.home.recap.data.config import (
    DATE_FORMAT,
    DATETIME_FORMAT,
    ExplicitDateInputs,
    ExplicitDatetimeInputs,
    RecapDataConfig,
)
from tml.core.errors import UserInputError
from tml.storage import as_path, is_url, list_files

logger = logging.getLogger(__name__)

DATA_FILE_SUFFIX = ".parquet"


class FileSelectionError(UserInputError):
    """No usable files, or too many missing folders; the message names the pattern or folders."""


def date_folders(inputs: ExplicitDateInputs) -> list[str]:
    """``data_root/YYYY/MM/DD`` for the ``days`` days ending at ``end_date`` (inclusive), oldest
    first."""
    end = datetime.strptime(inputs.end_date, DATE_FORMAT)
    days = [end - timedelta(days=offset) for offset in range(inputs.days)]
    return [_join(inputs.data_root, day.strftime(DATE_FORMAT)) for day in sorted(days)]


def datetime_folders(inputs: ExplicitDatetimeInputs) -> list[str]:
    """``data_root/YYYY/MM/DD/HH`` for the hours ``end-1h .. end-hours`` (the end hour itself is
    not read: it may still be being written), oldest first."""
    end = datetime.strptime(inputs.end_datetime, DATETIME_FORMAT)
    hours = [end - timedelta(hours=offset + 1) for offset in range(inputs.hours)]
    return [_join(inputs.data_root, hour.strftime(DATETIME_FORMAT)) for hour in sorted(hours)]


def _join(root: str, *parts: str) -> str:
    # URLs always join with "/"; local paths the platform's way.
    return "/".join([root.rstrip("/"), *parts]) if is_url(root) else os.path.join(root, *parts)


def _glob_files(config: RecapDataConfig) -> list[str]:
    pattern = config.inputs
    assert pattern is not None
    files = list_files(pattern)
    if not files:
        raise FileSelectionError(f"inputs: no file matches the glob '{pattern}'")
    return files


def _folder_files(folders: list[str], tolerance: int, unit: str, field: str) -> list[str]:
    files: list[str] = []
    missing: list[str] = []
    for folder in folders:
        found = list_files(_join(folder, "*" + DATA_FILE_SUFFIX))
        if not found:
            logger.warning("%s: no %s files in %s", field, DATA_FILE_SUFFIX, folder)
            missing.append(folder)
        files.extend(found)
    if len(missing) > tolerance:
        shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
        raise FileSelectionError(
            f"{field}: {len(missing)} of {len(folders)} {unit} folders are missing or hold no "
            f"{DATA_FILE_SUFFIX} file, more than the {tolerance} tolerated: {shown}"
        )
    if not files:
        raise FileSelectionError(
            f"{field}: no {DATA_FILE_SUFFIX} file in any of the {len(folders)} folders "
            f"{folders[0]} .. {folders[-1]}"
        )
    return files


def _date_files(config: RecapDataConfig) -> list[str]:
    inputs = config.explicit_date_inputs
    assert inputs is not None
    return _folder_files(
        date_folders(inputs), inputs.num_missing_days_tol, "day", "explicit_date_inputs"
    )


def _datetime_files(config: RecapDataConfig) -> list[str]:
    inputs = config.explicit_datetime_inputs
    assert inputs is not None
    return _folder_files(
        datetime_folders(inputs), inputs.num_missing_hours_tol, "hour", "explicit_datetime_inputs"
    )


# The config's one-of group ``date_inputs_format`` -> how that variant finds its files.
_SELECTORS: dict[str, Callable[[RecapDataConfig], list[str]]] = {
    "inputs": _glob_files,
    "explicit_date_inputs": _date_files,
    "explicit_datetime_inputs": _datetime_files,
}


def inputs_root(config: RecapDataConfig) -> str:
    """The folder every selected file lies under: ``data_root`` of dated folders, or the part
    of the ``inputs`` glob before its first wildcard. Files are identified relative to it where
    the same data may be moved (the loader's resume fingerprint)."""
    variant = config.chosen("date_inputs_format")
    if variant == "explicit_date_inputs":
        assert config.explicit_date_inputs is not None
        root = config.explicit_date_inputs.data_root
    elif variant == "explicit_datetime_inputs":
        assert config.explicit_datetime_inputs is not None
        root = config.explicit_datetime_inputs.data_root
    else:
        assert config.inputs is not None
        parts = config.inputs.split("/")
        fixed = next(
            (index for index, part in enumerate(parts) if any(c in part for c in "*?[")),
            len(parts),
        )
        # A glob without wildcards names one file: its folder is the root.
        root = "/".join(parts[: min(fixed, len(parts) - 1)])
    # Spelled as the selected files are (a local path normalised, a URL as it is).
    return root if is_url(root) else os.fspath(as_path(root or "."))


def select_files(config: RecapDataConfig) -> list[str]:
    """The dataset's files, sorted by path, cut to ``num_files_to_keep``.

    Raises:
        FileSelectionError: when nothing matches (naming the glob or folders), or when more
            dated folders are missing than tolerated.
    """
    variant = config.chosen("date_inputs_format")
    assert variant is not None, "the config guarantees one input format"
    files = sorted(_SELECTORS[variant](config))
    if config.num_files_to_keep is not None and len(files) > config.num_files_to_keep:
        logger.info("keeping the first %d of %d files", config.num_files_to_keep, len(files))
        files = files[: config.num_files_to_keep]
    return files
