"""Relative cross entropy (RCE) and its calibration-blind variant, normalised RCE (NRCE).

With mean label ``m = sum(w * y) / sum(w)`` and the weighted mean binary cross entropy
``CE(p) = sum(w * (-y * log(p) - (1 - y) * log(1 - p))) / sum(w)``::

    RCE = 100 * (1 - CE(model) / CE(constant predictor at m))

where ``CE(constant predictor at m) = -m * log(m) - (1 - m) * log(1 - m)``, the entropy of the
mean label, taken exactly. 0 means no better than always predicting the mean label, 100 a
perfect model, negative worse than the constant (often a miscalibrated model: compare NRCE).

The model's predictions are clamped into ``[epsilon, 1 - epsilon]`` before the logarithms, since
float32 sigmoids reach exactly 0 and 1 and one such confident miss would make CE infinite.
"""

from __future__ import annotations

from typing import Any

import torch

from tml.metrics.binary import ACCUMULATOR_DTYPE, BinaryMetric, safe_ratio
from tml.metrics.stored import StoredExamplesMetric

DEFAULT_EPSILON = 1e-7


def binary_cross_entropy(
    predictions: torch.Tensor, labels: torch.Tensor, epsilon: float
) -> torch.Tensor:
    """Per-example cross entropy of probabilities against labels in [0, 1], clamped by epsilon."""
    predictions = predictions.clamp(epsilon, 1.0 - epsilon)
    return -(labels * torch.log(predictions) + (1.0 - labels) * torch.log1p(-predictions))


def relative_cross_entropy(cross_entropy: torch.Tensor, mean_label: torch.Tensor) -> torch.Tensor:
    """100 * (1 - cross_entropy / entropy(mean_label)); NaN unless 0 < mean_label < 1.

    Both arguments are float64 tensors; a NaN mean label (no examples) gives NaN.
    """
    # xlogy keeps the entropy finite at the ends; safe_ratio then turns 0 entropy into NaN.
    entropy = -(torch.xlogy(mean_label, mean_label) + torch.xlogy(1 - mean_label, 1 - mean_label))
    return 100.0 * (1.0 - safe_ratio(cross_entropy, entropy))


def checked_epsilon(epsilon: float) -> float:
    """The clamping margin of predictions, which must lie in (0, 0.5)."""
    if not 0.0 < epsilon < 0.5:
        raise ValueError(f"epsilon must lie in (0, 0.5), got {epsilon}")
    return epsilon


class RCE(BinaryMetric):
    """Relative cross entropy (see the module docstring), accumulated as three float64 sums.

    Undefined, and NaN: no examples, all weights zero, or a mean label of exactly 0 or 1 (the
    constant predictor is then perfect).

    Args:
        epsilon: Predictions are clamped into ``[epsilon, 1 - epsilon]``.
        **kwargs: Passed to ``torchmetrics.Metric``.
    """

    higher_is_better = True

    def __init__(self, epsilon: float = DEFAULT_EPSILON, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.epsilon = checked_epsilon(epsilon)
        zero = torch.zeros((), dtype=ACCUMULATOR_DTYPE)
        self.add_state("sum_weights", zero.clone(), dist_reduce_fx="sum")
        self.add_state("sum_weighted_labels", zero.clone(), dist_reduce_fx="sum")
        self.add_state("sum_weighted_cross_entropy", zero.clone(), dist_reduce_fx="sum")

    def _accumulate(
        self, predictions: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor
    ) -> None:
        cross_entropy = binary_cross_entropy(predictions, labels, self.epsilon)
        self.sum_weights += weights.sum()
        self.sum_weighted_labels += torch.dot(weights, labels)
        self.sum_weighted_cross_entropy += torch.dot(weights, cross_entropy)

    def _value(self) -> torch.Tensor:
        mean_label = safe_ratio(self.sum_weighted_labels, self.sum_weights)
        cross_entropy = safe_ratio(self.sum_weighted_cross_entropy, self.sum_weights)
        return relative_cross_entropy(cross_entropy, mean_label)


class NRCE(StoredExamplesMetric):
    """RCE of the predictions rescaled so that their weighted mean equals the mean label.

    Normalisation scales the probabilities (not the odds) by one factor over all examples seen,
    on all ranks::

        p_i' = clamp(p_i * m / mean_p, epsilon, 1 - epsilon),  mean_p = sum(w * p) / sum(w)

    so ``sum(w * p') / sum(w) = m`` exactly unless the clamp binds. RCE is then computed on
    ``p'`` as in :class:`RCE`. The factor is taken from the final totals, not from a running
    mean, so the result does not depend on batch order; that requires keeping every example.
    NRCE ignores a miscalibration of the overall rate: a large gap between NRCE and RCE points
    to a badly calibrated model.

    Undefined, and NaN: as for :class:`RCE`, and when every prediction is 0 (no scale fits).

    Args:
        epsilon: Rescaled predictions are clamped into ``[epsilon, 1 - epsilon]``.
        **kwargs: Passed to ``torchmetrics.Metric``.
    """

    higher_is_better = True

    def __init__(self, epsilon: float = DEFAULT_EPSILON, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.epsilon = checked_epsilon(epsilon)

    def _value(self) -> torch.Tensor:
        predictions, labels, weights = self.stored_examples()
        sum_weights = weights.sum()
        mean_label = safe_ratio(torch.dot(weights, labels), sum_weights)
        mean_prediction = safe_ratio(torch.dot(weights, predictions), sum_weights)
        scale = safe_ratio(mean_label, mean_prediction)
        cross_entropy = binary_cross_entropy(predictions * scale, labels, self.epsilon)
        return relative_cross_entropy(
            safe_ratio(torch.dot(weights, cross_entropy), sum_weights), mean_label
        )
