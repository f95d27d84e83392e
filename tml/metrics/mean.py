"""Weighted means of the labels (CTR) and of the predictions (pCTR)."""

from __future__ import annotations

import abc
from typing import Any

import torch

from tml.metrics.binary import ACCUMULATOR_DTYPE, BinaryMetric, safe_ratio


class _WeightedMean(BinaryMetric):
    """sum(w * x) / sum(w) over every example, for the x that :meth:`_values` picks.

    Undefined, and NaN: no examples or all weights zero.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        zero = torch.zeros((), dtype=ACCUMULATOR_DTYPE)
        self.add_state("sum_weights", zero.clone(), dist_reduce_fx="sum")
        self.add_state("sum_weighted_values", zero.clone(), dist_reduce_fx="sum")

    @abc.abstractmethod
    def _values(self, predictions: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The per-example quantity averaged."""

    def _accumulate(
        self, predictions: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor
    ) -> None:
        self.sum_weights += weights.sum()
        self.sum_weighted_values += torch.dot(weights, self._values(predictions, labels))

    def _value(self) -> torch.Tensor:
        return safe_ratio(self.sum_weighted_values, self.sum_weights)


class MeanLabel(_WeightedMean):
    """Weighted mean label, the observed engagement rate (CTR): sum(w * y) / sum(w)."""

    higher_is_better = None

    def _values(self, predictions: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return labels


class MeanPrediction(_WeightedMean):
    """Weighted mean prediction, the predicted engagement rate (pCTR): sum(w * p) / sum(w)."""

    higher_is_better = None

    def _values(self, predictions: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return predictions
