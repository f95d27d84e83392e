import numpy as np
import pytest
import torch

from tml.metrics import AUROC


def reference_auroc(predictions, labels, weights=None):
    """Pairwise Mann-Whitney count over every (positive mass, negative mass) pair."""
    predictions = np.asarray(predictions, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.float64)
    weights = np.ones_like(predictions) if weights is None else np.asarray(weights, np.float64)
    positive, negative = weights * labels, weights * (1 - labels)
    keep_i, keep_j = positive > 0, negative > 0
    above = predictions[keep_i, None] > predictions[None, keep_j]
    tied = predictions[keep_i, None] == predictions[None, keep_j]
    pairs = positive[keep_i, None] * negative[None, keep_j] * (above + 0.5 * tied)
    return pairs.sum() / (positive.sum() * negative.sum())


def auroc(predictions, labels, weights=None, batches=1):
    metric = AUROC()
    predictions, labels = torch.as_tensor(predictions), torch.as_tensor(labels)
    weights = None if weights is None else torch.as_tensor(weights)
    for chunk in np.array_split(np.arange(len(predictions)), batches):
        chunk = torch.as_tensor(chunk, dtype=torch.long)
        metric.update(
            predictions[chunk], labels[chunk], None if weights is None else weights[chunk]
        )
    return metric.compute().item()


def test_hand_computed_value():
    # Positive 0.35 beats only the negative 0.1; positive 0.8 beats both: 3 of 4 pairs.
    assert auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == 0.75


def test_ties_count_one_half():
    assert auroc([0.5, 0.5], [1, 0]) == 0.5
    # Positive at 0.5 ties one negative and beats the other: (1 + 0.5) / 2.
    assert auroc([0.5, 0.5, 0.2], [1, 0, 0]) == 0.75
    assert auroc([0.3] * 6, [1, 0, 1, 0, 0, 0]) == 0.5


def test_random_data_with_ties_and_weights_matches_reference():
    generator = np.random.default_rng(0)
    # Rounded so that many positives and negatives share a prediction.
    predictions = np.round(generator.random(3000), 2).astype(np.float32)
    labels = (generator.random(3000) < predictions).astype(np.int64)
    weights = generator.uniform(0.0, 5.0, 3000).astype(np.float32)
    expected = reference_auroc(predictions, labels, weights)
    assert auroc(predictions, labels, weights, batches=7) == pytest.approx(expected, abs=1e-12)
    assert auroc(predictions, labels, batches=3) == pytest.approx(
        reference_auroc(predictions, labels), abs=1e-12
    )


def test_integer_weights_equal_repeating_examples():
    generator = np.random.default_rng(1)
    predictions = generator.random(200).astype(np.float32)
    labels = (generator.random(200) < 0.3).astype(np.int64)
    weights = generator.integers(0, 4, 200)
    repeated = np.repeat(np.arange(200), weights)
    assert auroc(predictions, labels, weights.astype(np.float32)) == pytest.approx(
        auroc(predictions[repeated], labels[repeated]), abs=1e-12
    )


def test_exact_at_a_positive_rate_of_one_in_a_thousand():
    generator = np.random.default_rng(2)
    size = 20_000
    labels = np.zeros(size, dtype=np.int64)
    labels[generator.choice(size, 20, replace=False)] = 1
    # Tiny, crowded predictions (float32 steps of 1e-7), positives slightly higher on average.
    predictions = (generator.integers(1, 60, size) + 8 * labels) * np.float32(1e-7)
    predictions = predictions.astype(np.float32)
    weights = np.where(labels == 1, 1.0, 100.0).astype(np.float32)  # downsampled negatives
    expected = reference_auroc(predictions, labels, weights)
    assert 0.6 < expected < 0.95
    assert auroc(predictions, labels, weights, batches=5) == pytest.approx(expected, abs=1e-12)


def test_soft_labels_count_as_partial_positives():
    predictions = np.array([0.2, 0.6, 0.9], dtype=np.float32)
    labels = np.array([0.0, 0.5, 1.0], dtype=np.float32)
    assert auroc(predictions, labels) == pytest.approx(reference_auroc(predictions, labels))


def test_matches_torchmetrics_exact_auroc_without_weights():
    from torchmetrics.functional.classification import binary_auroc

    generator = np.random.default_rng(3)
    predictions = torch.as_tensor(generator.random(500), dtype=torch.float32)
    labels = torch.as_tensor(generator.random(500) < 0.2, dtype=torch.long)
    expected = binary_auroc(predictions, labels, thresholds=None).item()
    assert auroc(predictions, labels) == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize(
    ("predictions", "labels", "weights"),
    [
        pytest.param([0.2, 0.7], [0, 0], None, id="no-positive"),
        pytest.param([0.2, 0.7], [1, 1], None, id="no-negative"),
        pytest.param([0.2, 0.7], [1, 0], [0.0, 1.0], id="zero-positive-weight"),
    ],
)
def test_absent_class_gives_nan(predictions, labels, weights):
    assert np.isnan(auroc(predictions, labels, weights))


def test_no_examples_give_nan():
    metric = AUROC()
    metric.update(torch.zeros(0), torch.zeros(0))
    assert np.isnan(metric.compute().item())


def test_reset_forgets_examples():
    metric = AUROC()
    metric.update(torch.tensor([0.9, 0.1]), torch.tensor([0, 1]))
    assert metric.compute().item() == 0.0
    metric.reset()
    metric.update(torch.tensor([0.9, 0.1]), torch.tensor([1, 0]))
    assert metric.compute().item() == 1.0
