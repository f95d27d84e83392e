import math

import pytest
import torch

from projects.home.recap.model.loss import MultiTaskLoss


def test_loss_by_hand():
    # Task 0 (pos_weight 3): example 0 positive at logit 0, weight 2 -> 2 * 3 * log 2;
    #                        example 1 negative at logit 0, weight 1 -> log 2.
    # Task 1 (pos_weight 1): example 0 negative at logit 2 -> log(1 + e^2);
    #                        example 1 positive at logit 2, weight 0 -> 0.
    logits = torch.tensor([[0.0, 2.0], [0.0, 2.0]])
    labels = torch.tensor([[1, 0], [0, 1]])
    weights = torch.tensor([[2.0, 1.0], [1.0, 0.0]])
    loss, task_losses = MultiTaskLoss([3.0, 1.0])(logits, labels, weights)
    expected = torch.tensor([(6 * math.log(2) + math.log(2)) / 2, math.log(1 + math.e**2) / 2])
    torch.testing.assert_close(task_losses, expected)
    torch.testing.assert_close(loss, expected.mean())


def test_labels_must_have_one_column_per_model_task():
    with pytest.raises(ValueError, match=r"labels should be \[batch, 2\]"):
        MultiTaskLoss([1.0, 1.0])(torch.zeros(3, 2), torch.zeros(3, 4), torch.ones(3, 2))
