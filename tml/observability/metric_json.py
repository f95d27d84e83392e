"""Metrics as strict JSON, the one encoding of every metrics file tml writes.

JSON has no NaN or infinity, and a metric can be either (e.g. precision with no positive
prediction). Python's ``json`` would write the bare tokens ``NaN``/``Infinity``, which other JSON
readers (jq, JavaScript, most dashboards) reject, so they are written as the strings ``"nan"``,
``"inf"`` and ``"-inf"``, which ``float()`` reads back.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any


def to_json_value(value: Any) -> Any:
    """``value`` with a non-finite float replaced by its name; anything else unchanged."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def metrics_to_json(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """A metrics mapping that ``json.dumps(..., allow_nan=False)`` accepts."""
    return {name: to_json_value(value) for name, value in metrics.items()}


def metrics_from_json(record: Mapping[str, Any]) -> dict[str, Any]:
    """The inverse of :func:`metrics_to_json`: ``"nan"``, ``"inf"``, ``"-inf"`` become floats."""
    return {
        name: float(value) if value in ("nan", "inf", "-inf") else value
        for name, value in record.items()
    }
