"""Position debias: a learned embedding of the position a candidate was served at."""

from __future__ import annotations

import torch
from torch import nn

from projects.home.recap.model.config import PositionDebiasConfig
from projects.home.recap.model.embeddings import init_embedding_


class PositionDebias(nn.Module):
    """Embeds the served position read from a discrete column.

    Rows ``0 .. max_position - 1`` are positions, row ``max_position`` is shared by every position
    at or past it, and the last row is the null position: negative (unknown) positions, and, while
    training, a random ``drop_probability`` share of examples. The model thus learns to score
    without a position too; serve with a negative position to get that null embedding.

    Attributes:
        out_features: Width of the embedding.
    """

    def __init__(self, config: PositionDebiasConfig):
        super().__init__()
        self.column = config.position_feature_index
        self.max_position = config.max_position
        self.null_row = config.max_position + 1
        self.drop_probability = config.drop_probability
        self.embedding = nn.Embedding(config.max_position + 2, config.num_dims)
        init_embedding_(self.embedding.weight)
        self.out_features = config.num_dims

    def forward(self, discrete_features: torch.Tensor) -> torch.Tensor:
        position = discrete_features[:, self.column].long()
        row = torch.clamp(position, max=self.max_position)
        null = position < 0
        if self.training and self.drop_probability > 0:
            null = null | (
                torch.rand(position.shape, device=position.device) < self.drop_probability
            )
        return self.embedding(torch.where(null, self.null_row, row))
