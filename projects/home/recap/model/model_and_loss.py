"""The training wrapper: batch in, ``(loss, detached outputs)`` out, as torchrec expects."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from projects.home.recap.inputs import InputSpec, RecapBatch
from projects.home.recap.model.config import ModelConfig, StratifierConfig
from projects.home.recap.model.embeddings import LargeEmbeddings
from projects.home.recap.model.loss import MultiTaskLoss, build_loss
from projects.home.recap.model.ranking_model import (
    MultiTaskRankingModel,
    ParameterGroups,
    build_ranking_model,
)


class ModelAndLoss(nn.Module):
    """Runs the ranker on a :class:`RecapBatch` and computes the loss.

    ``forward(batch)`` returns ``(loss, outputs)``; ``outputs`` holds, detached: ``logits``,
    ``probabilities``, ``calibrated_probabilities`` (``[batch, tasks]``, model task order),
    ``backbone`` when the model returns it, ``labels``, ``weights``, ``loss``, ``task_losses``
    (``[tasks]``) and, when stratifiers are given, ``stratifiers`` (``[batch, n]`` int64: the
    discrete column of each stratifier, in config order).
    """

    def __init__(
        self,
        model: MultiTaskRankingModel,
        loss: MultiTaskLoss,
        stratifiers: Sequence[StratifierConfig] = (),
    ):
        super().__init__()
        self.model = model
        self.loss = loss
        self.has_stratifiers = bool(stratifiers)
        self.register_buffer(
            "stratifier_columns",
            torch.tensor([stratifier.index for stratifier in stratifiers], dtype=torch.long),
            persistent=False,
        )

    def predict(self, batch: RecapBatch) -> dict[str, torch.Tensor]:
        """The model's outputs for a batch, without the loss (labels may be absent)."""
        # Traced by torchrec's pipelines: batch.sparse_features must reach the EBC unchanged,
        # and the output dict is read by known keys (a traced dict cannot be iterated).
        return self.model(batch.inputs, sparse_features=batch.sparse_features)

    def forward(self, batch: RecapBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        predictions = self.predict(batch)
        loss, task_losses = self.loss(predictions["logits"], batch.labels, batch.weights)
        outputs = {name: predictions[name].detach() for name in self.model.output_names}
        outputs["labels"] = batch.labels.detach()
        outputs["weights"] = batch.weights.detach()
        outputs["loss"] = loss.detach()
        outputs["task_losses"] = task_losses.detach()
        if self.has_stratifiers:
            outputs["stratifiers"] = batch.inputs.discrete_features[
                :, self.stratifier_columns
            ].long()
        return loss, outputs

    def parameter_groups(self) -> ParameterGroups:
        """The ranker's trainable parameters by owner (the loss has none); see
        :meth:`MultiTaskRankingModel.parameter_groups`."""
        return self.model.parameter_groups()

    @property
    def large_embeddings(self) -> LargeEmbeddings | None:
        """The ranker's large tables (sharded in place once the model is), or None."""
        return self.model.large_embeddings


def build_model_and_loss(
    model_config: ModelConfig,
    spec: InputSpec,
    *,
    large_embedding_device: torch.device = torch.device("meta"),  # noqa: B008 - immutable
    return_backbone: bool = False,
) -> ModelAndLoss:
    """:func:`build_ranking_model` wrapped with the config's loss and stratifiers."""
    model = build_ranking_model(
        model_config,
        spec,
        large_embedding_device=large_embedding_device,
        return_backbone=return_backbone,
    )
    return ModelAndLoss(model, build_loss(model_config), model_config.stratifiers or ())
