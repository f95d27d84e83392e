"""The base of every metric over binary-task predictions: input checks shared by all of them.

Each metric takes ``predictions`` (probabilities), ``labels`` in [0, 1] (usually 0 or 1; a soft
label y counts as y positive and 1 - y negative) and optional non-negative per-example
``weights``, all of the same shape. Shapes are checked at every update. Value ranges are checked
at compute instead: checking them per batch would force a device-to-host copy on every update,
whereas their running bounds are a few numbers that sync with the other states.

A result that is undefined on the data seen (no examples, all weights zero, a class absent, a
zero denominator) is NaN, never a made-up value such as 0 or 0.5.
"""

from __future__ import annotations

import abc
import math
from typing import Any

import torch
import torchmetrics

# Accumulators are float64: a float32 sum of millions of per-example terms loses the digits that
# separate two models, especially at positive rates of 0.1 %.
ACCUMULATOR_DTYPE = torch.float64

# Positions in the ``bounds`` state. Minima are stored negated so that one elementwise max
# reduces all of them across ranks in a single collective.
_MAX_PREDICTION, _NEG_MIN_PREDICTION, _MAX_LABEL, _NEG_MIN_LABEL, _NEG_MIN_WEIGHT = range(5)


class BinaryMetric(torchmetrics.Metric, abc.ABC):
    """A torchmetrics ``Metric`` over (predictions, labels, weights) of one binary task.

    Subclasses implement :meth:`_accumulate` (add a batch to their states) and :meth:`_value`
    (the result from the synced states).

    Args:
        **kwargs: Passed to ``torchmetrics.Metric`` (e.g. ``process_group``, ``compute_on_cpu``).
    """

    is_differentiable = False
    full_state_update = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state(
            "bounds",
            torch.full((5,), -math.inf, dtype=ACCUMULATOR_DTYPE),
            dist_reduce_fx="max",
        )

    def update(
        self,
        predictions: torch.Tensor,
        labels: torch.Tensor,
        weights: torch.Tensor | None = None,
    ) -> None:
        """Adds a batch.

        Args:
            predictions: Probabilities, any shape.
            labels: Labels in [0, 1] (bool, integer or floating), the shape of ``predictions``.
            weights: Non-negative example weights, the shape of ``predictions``; None means 1.

        Raises:
            ValueError: if the shapes differ or the predictions are not floating point.
        """
        predictions, labels, weights = _flatten_inputs(
            type(self).__name__, predictions, labels, weights
        )
        if predictions.numel() > 0:
            batch_bounds = torch.stack(
                [
                    predictions.max(),
                    -predictions.min(),
                    labels.max(),
                    -labels.min(),
                    -weights.min(),
                ]
            )
            self.bounds = torch.maximum(self.bounds, batch_bounds)
        self._accumulate(predictions, labels, weights)

    def compute(self) -> torch.Tensor:
        """The metric over every example seen (on every rank), as a 0-dim float64 tensor.

        Raises:
            ValueError: if a prediction was outside [0, 1] or NaN, a label outside [0, 1], or a
                weight negative.
        """
        self._check_bounds()
        return self._value()

    @abc.abstractmethod
    def _accumulate(
        self, predictions: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor
    ) -> None:
        """Adds a batch of flat float64 tensors of equal length to the states."""

    @abc.abstractmethod
    def _value(self) -> torch.Tensor:
        """The result from the (synced) states."""

    def _check_bounds(self) -> None:
        bounds = self.bounds.tolist()
        if bounds[_MAX_PREDICTION] == -math.inf:
            return  # No example seen: nothing to check.
        name = type(self).__name__
        low, high = -bounds[_NEG_MIN_PREDICTION], bounds[_MAX_PREDICTION]
        # Written as "not inside" so that NaN, which fails every comparison, is caught too.
        if not (low >= 0.0 and high <= 1.0):
            raise ValueError(
                f"{name}: predictions must be probabilities in [0, 1], but they ranged over "
                f"[{low}, {high}] (logits passed instead of probabilities?)"
            )
        low, high = -bounds[_NEG_MIN_LABEL], bounds[_MAX_LABEL]
        if not (low >= 0.0 and high <= 1.0):
            raise ValueError(
                f"{name}: labels must lie in [0, 1], but they ranged over [{low}, {high}]"
            )
        lowest_weight = -bounds[_NEG_MIN_WEIGHT]
        if not lowest_weight >= 0.0:
            raise ValueError(f"{name}: weights must be non-negative, but one was {lowest_weight}")


def _flatten_inputs(
    metric: str,
    predictions: torch.Tensor,
    labels: torch.Tensor,
    weights: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if not torch.is_floating_point(predictions):
        raise ValueError(
            f"{metric}: predictions must be a floating-point tensor of probabilities, got "
            f"{predictions.dtype}"
        )
    if labels.shape != predictions.shape:
        raise ValueError(
            f"{metric}: labels and predictions must have the same shape, got labels "
            f"{tuple(labels.shape)} and predictions {tuple(predictions.shape)}"
        )
    if weights is None:
        weights = torch.ones_like(predictions, dtype=ACCUMULATOR_DTYPE)
    elif weights.shape != predictions.shape:
        raise ValueError(
            f"{metric}: weights and predictions must have the same shape, got weights "
            f"{tuple(weights.shape)} and predictions {tuple(predictions.shape)}"
        )
    return (
        predictions.detach().reshape(-1).to(ACCUMULATOR_DTYPE),
        labels.detach().reshape(-1).to(ACCUMULATOR_DTYPE),
        weights.detach().reshape(-1).to(ACCUMULATOR_DTYPE),
    )


def safe_ratio(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    """numerator / denominator, NaN (not inf or an error) when the denominator is 0."""
    nan = torch.full_like(numerator, math.nan)
    return torch.where(denominator > 0, numerator / denominator, nan)
