import math

import numpy as np
import pytest
import torch

from tml.metrics import NRCE, RCE

EPSILON = 1e-7


def reference_cross_entropy(predictions, labels, weights):
    predictions = np.clip(predictions.astype(np.float64), EPSILON, 1 - EPSILON)
    per_example = -(labels * np.log(predictions) + (1 - labels) * np.log(1 - predictions))
    return np.sum(weights * per_example) / np.sum(weights)


def reference_rce(predictions, labels, weights):
    mean_label = np.sum(weights * labels) / np.sum(weights)
    entropy = -(mean_label * math.log(mean_label) + (1 - mean_label) * math.log(1 - mean_label))
    return 100 * (1 - reference_cross_entropy(predictions, labels, weights) / entropy)


def reference_nrce(predictions, labels, weights):
    mean_label = np.sum(weights * labels) / np.sum(weights)
    mean_prediction = np.sum(weights * predictions.astype(np.float64)) / np.sum(weights)
    return reference_rce(predictions * (mean_label / mean_prediction), labels, weights)


def compute(metric, predictions, labels, weights=None, batches=1):
    for chunk in np.array_split(np.arange(len(predictions)), batches):
        metric.update(
            torch.as_tensor(predictions[chunk]),
            torch.as_tensor(labels[chunk]),
            None if weights is None else torch.as_tensor(weights[chunk]),
        )
    return metric.compute().item()


@pytest.fixture
def data():
    generator = np.random.default_rng(0)
    size = 5000
    truth = generator.beta(1, 20, size)  # mean ~5 %
    labels = (generator.random(size) < truth).astype(np.int64)
    # A noisy, overconfident model; 2 % of its predictions saturate at exactly 0 or 1.
    predictions = np.clip(truth * generator.lognormal(0.3, 0.5, size), 0, 1)
    saturated = generator.random(size) < 0.02
    predictions[saturated] = labels[saturated] ^ (generator.random(saturated.sum()) < 0.5)
    weights = generator.uniform(0.5, 3.0, size)
    return predictions.astype(np.float32), labels, weights.astype(np.float32)


def test_rce_matches_reference_with_weights(data):
    predictions, labels, weights = data
    expected = reference_rce(predictions, labels, weights.astype(np.float64))
    assert compute(RCE(), predictions, labels, weights, batches=4) == pytest.approx(expected, 1e-9)


def test_rce_matches_reference_without_weights(data):
    predictions, labels, _ = data
    expected = reference_rce(predictions, labels, np.ones(len(labels)))
    assert compute(RCE(), predictions, labels) == pytest.approx(expected, rel=1e-9)


def test_rce_of_the_constant_mean_label_predictor_is_zero():
    labels = np.array([1, 0, 0, 0, 1, 0, 0, 0])
    predictions = np.full(8, 0.25, dtype=np.float64)
    assert compute(RCE(), predictions, labels) == pytest.approx(0.0, abs=1e-12)


def test_rce_of_a_perfect_model_is_nearly_100():
    labels = np.array([1, 0, 0, 1])
    assert compute(RCE(), labels.astype(np.float32), labels) == pytest.approx(100, abs=1e-4)


def test_rce_is_weighted_like_repetition():
    predictions = np.array([0.1, 0.6, 0.3, 0.8], dtype=np.float32)
    labels = np.array([0, 1, 1, 0])
    weights = np.array([1, 3, 0, 2], dtype=np.float32)
    repeated = np.repeat(np.arange(4), weights.astype(int))
    assert compute(RCE(), predictions, labels, weights) == pytest.approx(
        compute(RCE(), predictions[repeated], labels[repeated]), rel=1e-12
    )


def test_rce_uses_the_configured_epsilon():
    predictions, labels = np.array([0.0, 0.5], dtype=np.float32), np.array([1, 0])
    loose = compute(RCE(epsilon=1e-3), predictions, labels)
    assert loose == pytest.approx(
        100 * (1 - (-math.log(1e-3) - math.log(0.5)) / 2 / math.log(2)), rel=1e-9
    )
    assert compute(RCE(), predictions, labels) < loose


def test_rce_at_a_positive_rate_of_one_in_a_thousand():
    generator = np.random.default_rng(5)
    size = 50_000
    truth = np.full(size, 1e-3)
    truth[: size // 10] = 5e-3
    labels = (generator.random(size) < truth).astype(np.int64)
    predictions = (truth * generator.uniform(0.8, 1.2, size)).astype(np.float32)
    expected = reference_rce(predictions, labels, np.ones(size))
    assert compute(RCE(), predictions, labels, batches=10) == pytest.approx(expected, rel=1e-9)


def test_nrce_matches_reference(data):
    predictions, labels, weights = data
    expected = reference_nrce(predictions, labels, weights.astype(np.float64))
    assert compute(NRCE(), predictions, labels, weights, batches=3) == pytest.approx(expected, 1e-9)


def test_nrce_undoes_a_global_scale_of_the_predictions(data):
    _, labels, weights = data
    calibrated = np.full(len(labels), np.sum(weights * labels) / np.sum(weights))
    calibrated[::2] *= 1.5
    calibrated[1::2] *= 0.5
    scaled = (calibrated * 0.3).astype(np.float32)
    nrce = compute(NRCE(), scaled, labels, weights)
    assert nrce == pytest.approx(compute(NRCE(), calibrated, labels, weights), rel=1e-6)
    assert compute(RCE(), scaled, labels, weights) < nrce


def test_nrce_equals_rce_for_a_model_whose_mean_matches_the_labels():
    labels = np.array([1, 0, 0, 1, 0, 0, 0, 0])
    predictions = np.array([0.5, 0.1, 0.2, 0.4, 0.3, 0.1, 0.2, 0.2])  # mean 0.25 = mean label
    assert compute(NRCE(), predictions, labels) == pytest.approx(
        compute(RCE(), predictions, labels), rel=1e-6
    )


@pytest.mark.parametrize("metric_class", [RCE, NRCE])
@pytest.mark.parametrize(
    ("predictions", "labels", "weights"),
    [
        pytest.param([0.2, 0.7], [0, 0], None, id="no-positive"),
        pytest.param([0.2, 0.7], [1, 1], None, id="no-negative"),
        pytest.param([0.2, 0.7], [1, 0], [0.0, 0.0], id="zero-weights"),
        pytest.param([], [], None, id="no-examples"),
    ],
)
def test_undefined_is_nan(metric_class, predictions, labels, weights):
    predictions = np.array(predictions, dtype=np.float32)
    weights = None if weights is None else np.array(weights, dtype=np.float32)
    assert math.isnan(compute(metric_class(), predictions, np.array(labels), weights))


def test_nrce_is_nan_when_every_prediction_is_zero():
    assert math.isnan(compute(NRCE(), np.zeros(4, np.float32), np.array([1, 0, 0, 0])))


@pytest.mark.parametrize("metric_class", [RCE, NRCE])
def test_epsilon_must_be_a_small_positive_number(metric_class):
    with pytest.raises(ValueError, match="epsilon"):
        metric_class(epsilon=0.0)
