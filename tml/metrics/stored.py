"""Metrics that keep every example, for results that are not sums of per-example terms.

AUROC depends on the order of all predictions, and NRCE on a rescaling known only once every
example is in, so neither can be accumulated into a few sums without approximating. These
metrics keep each example's prediction, label and weight (float32, 12 bytes per example) and
gather them from every rank at compute. Predictions are stored in float32, which is exact for
model outputs (float32, bfloat16 or float16); float64 inputs are rounded to float32. Pass
``compute_on_cpu=True`` to keep the stored examples in host memory.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torchmetrics.utilities.distributed import gather_all_tensors

from tml.metrics.binary import ACCUMULATOR_DTYPE, BinaryMetric

_STORAGE_DTYPE = torch.float32
_STORED_STATES = ("stored_predictions", "stored_labels", "stored_weights")


class StoredExamplesMetric(BinaryMetric):
    """A :class:`BinaryMetric` that keeps every example, gathered across ranks at compute."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        for name in _STORED_STATES:
            self.add_state(name, [], dist_reduce_fx="cat")

    def _accumulate(
        self, predictions: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor
    ) -> None:
        self.stored_predictions.append(predictions.to(_STORAGE_DTYPE))
        self.stored_labels.append(labels.to(_STORAGE_DTYPE))
        self.stored_weights.append(weights.to(_STORAGE_DTYPE))

    def stored_examples(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Predictions, labels and weights seen so far (all ranks' inside compute), as float64."""
        predictions, labels, weights = (
            _concatenate(getattr(self, name), self.device) for name in _STORED_STATES
        )
        return predictions, labels, weights

    def _sync_dist(
        self, dist_sync_fn: Callable = gather_all_tensors, process_group: Any = None
    ) -> None:
        # torchmetrics gathers every tensor of a list state with its own collective, so a rank
        # that saw no batch (an uneven split of an evaluation set) would join fewer collectives
        # than the others and hang them all. Give it one empty tensor to contribute instead.
        for name in _STORED_STATES:
            if isinstance(getattr(self, name), list) and not getattr(self, name):
                setattr(self, name, [torch.empty(0, dtype=_STORAGE_DTYPE, device=self.device)])
        super()._sync_dist(dist_sync_fn, process_group)


def _concatenate(state: torch.Tensor | list[torch.Tensor], device: torch.device) -> torch.Tensor:
    # After a sync the state is one gathered tensor; before, a list of per-batch tensors.
    if isinstance(state, torch.Tensor):
        return state.to(ACCUMULATOR_DTYPE)
    if not state:
        return torch.empty(0, dtype=ACCUMULATOR_DTYPE, device=device)
    return torch.cat(state).to(ACCUMULATOR_DTYPE)
