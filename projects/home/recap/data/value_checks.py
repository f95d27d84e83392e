"""Checks on the values the loader decodes: labels must be 0 or 1, and what a non-finite input
value does.

* A label other than 0 or 1 (NaN included) is an error naming the file, the column and the
  first such row: the loss would train on it silently.
* NaN or inf in ``continuous`` is counted and logged, once per file, naming the file and the
  column: the model's featurization replaces them by 0.
* NaN or inf in any other float input the model reads (the TwHIN embeddings) is an error, as
  for labels: nothing cleans them, and one such row makes the loss NaN.

The loader raises the errors as :class:`DataFileError`, or with ``ignore_data_errors`` skips the
row group, as for one it cannot decode.

The checks run on each decoded window of rows at once: a vectorised test over the whole
window (for floats one matrix-vector product giving every row's sum, which is finite only when
every value is), and only when that finds something, per row group to name the file and row.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Sequence

import numpy as np

from projects.home.recap.data.features import DENSE_INPUTS, FeaturePlan
from projects.home.recap.data.reader import Arrays, DataFile
from projects.home.recap.data.schema import FeatureDtype

logger = logging.getLogger(__name__)

# The one float input the model cleans (featurization replaces NaN and inf by 0).
CLEANED_INPUT = "continuous"


@dataclasses.dataclass(frozen=True)
class PlacedRowGroup:
    """Where a row group's rows landed in a window: ``rows[i]`` is its row ``i``."""

    data_file: DataFile
    row_group: int
    rows: slice | np.ndarray


class ValueChecks:
    """The checks of one dataset, from its feature plan; safe to run from several threads.

    Attributes:
        non_finite_rows: Rows read so far with a NaN or inf in a cleaned input.
    """

    def __init__(self, plan: FeaturePlan) -> None:
        self.labels = tuple(plan.labels)
        cleaned: list[str] = []
        finite: list[str] = []
        for schema_name, names in plan.names.items():
            float_inputs = [
                name
                for name in names
                if name in DENSE_INPUTS
                and DENSE_INPUTS[name].schema_dtype == FeatureDtype.FLOAT_LIST
            ]
            if not float_inputs:
                continue
            (cleaned if float_inputs == [CLEANED_INPUT] else finite).append(schema_name)
        self.cleaned = tuple(cleaned)
        self.finite = tuple(finite)
        self.non_finite_rows = 0
        self._reported: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    def __call__(
        self, arrays: Arrays, placed: Sequence[PlacedRowGroup], valid: np.ndarray | None
    ) -> dict[int, str]:
        """Checks a window's rows (``valid`` marks the rows that were read, None: all).

        Returns:
            The row groups that fail (their index in ``placed``), each with a message naming
            the file, the column and the first bad row: a bad label, or a non-finite value in
            an input nothing cleans. Non-finite cleaned inputs are only counted and logged.
        """
        problems: dict[int, str] = {}
        for name in self.labels:
            bad = ((arrays[name] != 0) & (arrays[name] != 1)).any(axis=1)
            if _any(bad, valid):
                what = "a label other than 0 or 1"
                self._locate(name, bad, placed, arrays[name], what, problems)
        for name in self.finite:
            bad = _non_finite_rows(arrays[name])
            if bad is not None and _any(bad, valid):
                what = "NaN or inf, which nothing in the model cleans"
                self._locate(name, bad, placed, None, what, problems)
        for name in self.cleaned:
            bad = _non_finite_rows(arrays[name])
            if bad is not None and _any(bad, valid):
                self._count(name, bad, placed)
        return problems

    @staticmethod
    def _locate(
        name: str,
        bad: np.ndarray,
        placed: Sequence[PlacedRowGroup],
        values: np.ndarray | None,
        what: str,
        problems: dict[int, str],
    ) -> None:
        for index, unit in enumerate(placed):
            rows = np.flatnonzero(bad[unit.rows])
            if len(rows) == 0 or index in problems:
                continue
            first = int(rows[0])
            shown = f" ({values[unit.rows][first][0].item()})" if values is not None else ""
            problems[index] = (
                f"{unit.data_file.path}: column '{name}': {len(rows)} rows of row group "
                f"{unit.row_group} hold {what}, the first at row "
                f"{_first_row(unit) + first} of the file{shown}"
            )

    def _count(self, name: str, bad: np.ndarray, placed: Sequence[PlacedRowGroup]) -> None:
        for unit in placed:
            count = int(bad[unit.rows].sum())
            if not count:
                continue
            path = unit.data_file.path
            with self._lock:
                self.non_finite_rows += count
                first_time = (path, name) not in self._reported
                self._reported.add((path, name))
                total = self.non_finite_rows
            if first_time:
                logger.warning(
                    "%s: column '%s': %d rows of row group %d hold NaN or inf, which the model "
                    "replaces by 0 (%d such rows read so far; each file is reported once)",
                    path,
                    name,
                    count,
                    unit.row_group,
                    total,
                )


def _any(bad: np.ndarray, valid: np.ndarray | None) -> bool:
    # Rows of a skipped row group were never written (they hold whatever memory held).
    return bool(bad.any() if valid is None else (bad & valid).any())


def _non_finite_rows(values: np.ndarray) -> np.ndarray | None:
    """Which rows of ``[rows, width]`` floats hold NaN or inf; None when none does.

    One matrix-vector product gives every row's sum in a single vectorised pass, as fast as
    reading the values once; a sum is finite when every term is. A sum can also overflow on
    huge finite values, so the rows it flags are confirmed one by one.
    """
    with np.errstate(invalid="ignore", over="ignore"):
        sums = values @ np.ones(values.shape[1], dtype=values.dtype)
    flagged = ~np.isfinite(sums)
    if not flagged.any():
        return None
    flagged[flagged] = ~np.isfinite(values[flagged]).all(axis=1)
    return flagged if flagged.any() else None


def _first_row(unit: PlacedRowGroup) -> int:
    return int(sum(unit.data_file.row_group_rows[: unit.row_group]))
