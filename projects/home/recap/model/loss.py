"""The multi-task loss: per-task weighted binary cross-entropy, averaged over tasks."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F  # noqa: N812 - the conventional name
from torch import nn
from torch.fx._symbolic_trace import is_fx_symbolic_tracing

from projects.home.recap.model.config import ModelConfig
from projects.home.recap.model.errors import ModelInputError


class MultiTaskLoss(nn.Module):
    """For each task, ``mean over the batch of weight * BCE-with-logits(logit, label)`` with the
    task's ``pos_weight`` on positive examples; the loss is the mean over tasks.

    ``forward`` returns ``(loss, task_losses)``: a scalar and the ``[tasks]`` vector it averages.
    """

    def __init__(self, pos_weights: Sequence[float]):
        super().__init__()
        self.register_buffer(
            "pos_weight", torch.tensor(list(pos_weights), dtype=torch.float32), persistent=False
        )

    def forward(
        self, logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Args:
        logits: ``[batch, tasks]``.
        labels: ``[batch, tasks]`` in {0, 1}, columns in the model's task order.
        weights: ``[batch, tasks]`` per-example, per-task weights.
        """
        # Skipped while torchrec's pipelines trace the forward (shapes are symbolic then).
        if not is_fx_symbolic_tracing():
            self._check_shapes(logits, labels, weights)
        losses = F.binary_cross_entropy_with_logits(
            logits.to(torch.float32),
            labels.to(torch.float32),
            weight=weights.to(torch.float32),
            pos_weight=self.pos_weight,
            reduction="none",
        )
        task_losses = losses.mean(dim=0)
        return task_losses.mean(), task_losses

    def _check_shapes(
        self, logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor
    ) -> None:
        tasks = self.pos_weight.numel()
        for name, tensor in (("logits", logits), ("labels", labels), ("weights", weights)):
            if tensor.dim() != 2 or tensor.shape[1] != tasks or tensor.shape[0] != logits.shape[0]:
                raise ModelInputError(
                    f"{name} should be [batch, {tasks}] (one column per model task, in model "
                    f"order), got {list(tensor.shape)}"
                )


def build_loss(config: ModelConfig) -> MultiTaskLoss:
    """The loss of the model's tasks, in config order, with their ``pos_weight``."""
    return MultiTaskLoss([tower.pos_weight for tower in config.tasks.values()])
