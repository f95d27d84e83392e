"""A task's tower: its network and the affine map of its logit."""

from __future__ import annotations

import torch
from torch import nn

from projects.home.recap.model.config import AffineMap


class LogitAffineMap(nn.Module):
    """``logit * scale + bias``, both learned and initialised from the config."""

    def __init__(self, config: AffineMap):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor([config.scale]))
        self.bias = nn.Parameter(torch.tensor([config.bias]))

    def forward(self, logit: torch.Tensor) -> torch.Tensor:
        return logit * self.scale + self.bias


class Tower(nn.Module):
    """One task's network (ending in one unit) followed by its optional affine map."""

    def __init__(self, network: nn.Module, affine_map: AffineMap | None):
        super().__init__()
        self.network = network
        self.affine_map = LogitAffineMap(affine_map) if affine_map is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Logits leave the tower in fp32: under bf16 autocast, sigmoid, calibration and the loss
        # need the precision (a report head's logit sits around -7).
        logit = self.network(x).to(torch.float32)
        return self.affine_map(logit) if self.affine_map is not None else logit
