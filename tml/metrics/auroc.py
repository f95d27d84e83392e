"""Exact weighted AUROC in the Mann-Whitney form."""

from __future__ import annotations

import torch

from tml.metrics.binary import safe_ratio
from tml.metrics.stored import StoredExamplesMetric


class AUROC(StoredExamplesMetric):
    """Area under the ROC curve: the weighted probability that a positive outranks a negative.

    With positive mass ``a_i = w_i * y_i`` and negative mass ``b_i = w_i * (1 - y_i)`` per
    example (for 0/1 labels: the weight of the positives, resp. negatives)::

        AUROC = sum_{i,j} a_i * b_j * ([p_i > p_j] + 0.5 * [p_i == p_j]) / (sum a * sum b)

    i.e. a tied (positive, negative) pair counts one half. It is computed exactly from every
    stored example — one sort, then float64 cumulative sums over groups of equal predictions —
    with no thresholds or bins, so it stays exact when predictions crowd near 0 at positive
    rates of 0.1 % and below.

    Undefined, and NaN: no examples, or no positive (or no negative) weight.
    """

    higher_is_better = True

    def _value(self) -> torch.Tensor:
        predictions, labels, weights = self.stored_examples()
        positive = weights * labels
        negative = weights - positive
        order = torch.argsort(predictions)
        predictions = predictions[order]
        positive_below = torch.cumsum(positive[order], dim=0)
        negative_below = torch.cumsum(negative[order], dim=0)
        # Each run of equal predictions is one group; its masses are the differences of the
        # cumulative sums at the runs' last positions (deterministic, unlike scatter-adds).
        is_last = torch.ones_like(predictions, dtype=torch.bool)
        is_last[:-1] = predictions[1:] != predictions[:-1]
        group_positive = torch.diff(positive_below[is_last], prepend=positive_below.new_zeros(1))
        cumulative_negative = negative_below[is_last]
        group_negative = torch.diff(cumulative_negative, prepend=negative_below.new_zeros(1))
        negative_strictly_below = cumulative_negative - group_negative
        concordant = torch.sum(group_positive * (negative_strictly_below + 0.5 * group_negative))
        total_positive = positive.sum()
        total_negative = negative.sum()
        return safe_ratio(concordant, total_positive * total_negative)
