import math

import numpy as np
import pytest
import torch

from tml.metrics import Precision, Recall


def reference(predictions, labels, weights, threshold):
    predicted = predictions >= threshold
    true_positives = np.sum(weights * labels * predicted)
    precision = true_positives / np.sum(weights * predicted)
    recall = true_positives / np.sum(weights * labels)
    return precision, recall


def compute(metric, predictions, labels, weights=None):
    metric.update(
        torch.as_tensor(predictions),
        torch.as_tensor(labels),
        None if weights is None else torch.as_tensor(weights),
    )
    return metric.compute().item()


@pytest.mark.parametrize("threshold", [0.5, 0.2, 0.05])
def test_weighted_precision_and_recall_match_numpy(threshold):
    generator = np.random.default_rng(0)
    predictions = generator.random(2000).astype(np.float32) ** 2
    labels = (generator.random(2000) < predictions).astype(np.int64)
    weights = generator.uniform(0, 4, 2000).astype(np.float32)
    precision, recall = reference(predictions, labels, weights.astype(np.float64), threshold)
    assert compute(Precision(threshold), predictions, labels, weights) == pytest.approx(
        precision, rel=1e-12
    )
    assert compute(Recall(threshold), predictions, labels, weights) == pytest.approx(
        recall, rel=1e-12
    )


def test_hand_computed_values_and_threshold_inclusive():
    predictions = np.array([0.9, 0.5, 0.4, 0.1], dtype=np.float32)
    labels = np.array([1, 0, 1, 0])
    # Predicted positive: 0.9 and 0.5 (>= 0.5). TP = 1, FP = 1, FN = 1.
    assert compute(Precision(), predictions, labels) == 0.5
    assert compute(Recall(), predictions, labels) == 0.5
    weights = np.array([3.0, 1.0, 1.0, 1.0], dtype=np.float32)
    assert compute(Precision(), predictions, labels, weights) == 0.75
    assert compute(Recall(), predictions, labels, weights) == 0.75


def test_nothing_predicted_positive_gives_nan_precision():
    predictions, labels = np.array([0.1, 0.2], dtype=np.float32), np.array([1, 0])
    assert math.isnan(compute(Precision(), predictions, labels))
    assert compute(Recall(), predictions, labels) == 0.0


def test_no_positive_gives_nan_recall():
    predictions, labels = np.array([0.9, 0.2], dtype=np.float32), np.array([0, 0])
    assert math.isnan(compute(Recall(), predictions, labels))
    assert compute(Precision(), predictions, labels) == 0.0


@pytest.mark.parametrize("metric_class", [Precision, Recall])
def test_threshold_must_be_a_probability(metric_class):
    with pytest.raises(ValueError, match="threshold"):
        metric_class(threshold=1.5)
