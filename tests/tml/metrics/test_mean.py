import math

import numpy as np
import pytest
import torch

from tml.metrics import MeanLabel, MeanPrediction


def compute(metric, predictions, labels, weights=None):
    metric.update(
        torch.as_tensor(predictions),
        torch.as_tensor(labels),
        None if weights is None else torch.as_tensor(weights),
    )
    return metric.compute().item()


def test_weighted_means_match_numpy():
    generator = np.random.default_rng(0)
    predictions = generator.random(1000).astype(np.float32)
    labels = (generator.random(1000) < 0.01).astype(np.int64)
    weights = generator.uniform(0, 10, 1000).astype(np.float32)
    w = weights.astype(np.float64)
    assert compute(MeanLabel(), predictions, labels, weights) == pytest.approx(
        np.sum(w * labels) / np.sum(w), rel=1e-12
    )
    assert compute(MeanPrediction(), predictions, labels, weights) == pytest.approx(
        np.sum(w * predictions) / np.sum(w), rel=1e-12
    )


def test_unweighted_means():
    predictions, labels = np.array([0.2, 0.4, 0.9]), np.array([1, 0, 0])
    assert compute(MeanLabel(), predictions, labels) == pytest.approx(1 / 3)
    assert compute(MeanPrediction(), predictions, labels) == pytest.approx(0.5)


def test_batches_accumulate():
    metric = MeanLabel()
    metric.update(torch.tensor([0.5, 0.5]), torch.tensor([1, 1]), torch.tensor([1.0, 1.0]))
    metric.update(torch.tensor([0.5]), torch.tensor([0]), torch.tensor([6.0]))
    assert metric.compute().item() == pytest.approx(2 / 8)


@pytest.mark.parametrize("metric_class", [MeanLabel, MeanPrediction])
def test_zero_total_weight_gives_nan(metric_class):
    assert math.isnan(compute(metric_class(), [0.5], [1], [0.0]))
    assert math.isnan(compute(metric_class(), np.zeros(0, np.float32), np.zeros(0)))
