"""Weighted precision and recall of the decision "positive when prediction >= threshold"."""

from __future__ import annotations

import abc
from typing import Any

import torch

from tml.metrics.binary import ACCUMULATOR_DTYPE, BinaryMetric, safe_ratio

DEFAULT_THRESHOLD = 0.5


class _ThresholdMetric(BinaryMetric):
    """Accumulates weighted true positives, false positives and false negatives.

    An example counts as predicted positive when its prediction is >= ``threshold``. It adds
    ``w * y`` to true positives (or to false negatives when predicted negative) and
    ``w * (1 - y)`` to false positives when predicted positive.

    Args:
        threshold: Decision threshold in [0, 1].
        **kwargs: Passed to ``torchmetrics.Metric``.
    """

    higher_is_better = True

    def __init__(self, threshold: float = DEFAULT_THRESHOLD, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must lie in [0, 1], got {threshold}")
        self.threshold = threshold
        zero = torch.zeros((), dtype=ACCUMULATOR_DTYPE)
        self.add_state("true_positives", zero.clone(), dist_reduce_fx="sum")
        self.add_state("false_positives", zero.clone(), dist_reduce_fx="sum")
        self.add_state("false_negatives", zero.clone(), dist_reduce_fx="sum")

    def _accumulate(
        self, predictions: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor
    ) -> None:
        predicted_positive = (predictions >= self.threshold).to(ACCUMULATOR_DTYPE)
        positive = weights * labels
        negative = weights - positive
        self.true_positives += torch.dot(positive, predicted_positive)
        self.false_positives += torch.dot(negative, predicted_positive)
        self.false_negatives += torch.dot(positive, 1.0 - predicted_positive)

    @abc.abstractmethod
    def _value(self) -> torch.Tensor:
        """The ratio of the accumulated counts."""


class Precision(_ThresholdMetric):
    """Weighted share of the predicted positives that are positive: TP / (TP + FP).

    Undefined, and NaN: nothing predicted positive.
    """

    def _value(self) -> torch.Tensor:
        return safe_ratio(self.true_positives, self.true_positives + self.false_positives)


class Recall(_ThresholdMetric):
    """Weighted share of the positives predicted positive: TP / (TP + FN).

    Undefined, and NaN: no positive weight.
    """

    def _value(self) -> torch.Tensor:
        return safe_ratio(self.true_positives, self.true_positives + self.false_negatives)
