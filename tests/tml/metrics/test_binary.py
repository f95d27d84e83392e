"""Input checks shared by every metric."""

import math

import pytest
import torch

from tml.metrics import METRICS

ALL = pytest.mark.parametrize("name", sorted(METRICS))


@ALL
def test_shape_mismatch_names_the_tensors(name):
    metric = METRICS[name]()
    with pytest.raises(ValueError, match=r"labels and predictions .* labels \(3,\) .* \(4,\)"):
        metric.update(torch.rand(4), torch.ones(3))
    with pytest.raises(ValueError, match=r"weights and predictions .* weights \(4, 1\)"):
        metric.update(torch.rand(4), torch.ones(4), torch.ones(4, 1))


@ALL
def test_integer_predictions_are_refused(name):
    with pytest.raises(ValueError, match="floating-point"):
        METRICS[name]().update(torch.tensor([0, 1]), torch.tensor([0, 1]))


@ALL
def test_logits_are_refused_at_compute(name):
    metric = METRICS[name]()
    metric.update(torch.tensor([-2.0, 3.0]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"probabilities in \[0, 1\].*\[-2.0, 3.0\].*logits"):
        metric.compute()


@ALL
def test_nan_predictions_are_refused_at_compute(name):
    metric = METRICS[name]()
    metric.update(torch.tensor([0.5, math.nan]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="predictions must be probabilities"):
        metric.compute()


@ALL
def test_labels_outside_zero_one_are_refused_at_compute(name):
    metric = METRICS[name]()
    metric.update(torch.tensor([0.5, 0.5, 0.5]), torch.tensor([0, 1, -1]))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 1\].*\[-1.0, 1.0\]"):
        metric.compute()


@ALL
def test_negative_weights_are_refused_at_compute(name):
    metric = METRICS[name]()
    metric.update(torch.tensor([0.5, 0.2]), torch.tensor([0, 1]), torch.tensor([1.0, -0.5]))
    with pytest.raises(ValueError, match=r"non-negative.*-0\.5"):
        metric.compute()


@ALL
def test_inputs_of_any_shape_and_dtype_are_flattened(name):
    predictions = torch.tensor([[0.9, 0.2], [0.6, 0.1]], dtype=torch.bfloat16)
    labels = torch.tensor([[True, False], [False, True]])
    flat = METRICS[name]()
    flat.update(predictions.float().reshape(-1), labels.float().reshape(-1))
    shaped = METRICS[name]()
    shaped.update(predictions, labels, torch.ones(2, 2, dtype=torch.float16))
    torch.testing.assert_close(shaped.compute(), flat.compute(), equal_nan=True)
    assert shaped.compute().dtype == torch.float64
