"""Numeric calibration: undo the label downsampling of the training data in the probabilities."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from projects.home.recap.inputs import TaskSampling
from projects.home.recap.model.errors import ModelInputError


def calibration_log_ratios(
    tasks: Sequence[str], task_sampling: Mapping[str, TaskSampling]
) -> torch.Tensor:
    """``log(neg_downsampling_rate / pos_downsampling_rate)`` of each task, looked up by name.

    Args:
        tasks: Task names, in the model's order.
        task_sampling: How the training data sampled each label, by task name (it may list
            more tasks, in any order).

    Returns:
        A float32 tensor ``[len(tasks)]``.
    """
    missing = [task for task in tasks if task not in task_sampling]
    if missing:
        raise ModelInputError(f"the input spec has no sampling rates for model tasks {missing}")
    return torch.tensor([task_sampling[task].log_ratio for task in tasks], dtype=torch.float32)


def calibrate(logits: torch.Tensor, log_ratios: torch.Tensor) -> torch.Tensor:
    """Calibrated probabilities ``p r / (1 - p + r p)`` with ``p = sigmoid(logit)``.

    Computed as ``sigmoid(logit + log r)``, the same value without cancellation when ``r`` is
    tiny (report: 1.4e-5) or ``p`` is close to 1.

    Args:
        logits: ``[batch, tasks]``.
        log_ratios: ``[tasks]`` from :func:`calibration_log_ratios`.
    """
    return torch.sigmoid(logits + log_ratios)


class NumericCalibration(nn.Module):
    """:func:`calibrate` with the ratios of the data the model was built for.

    The ratios come from config, not training, so they are not part of the state dict.
    """

    def __init__(self, log_ratios: torch.Tensor):
        super().__init__()
        self.register_buffer("log_ratios", log_ratios, persistent=False)

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        return calibrate(logits, self.log_ratios)
