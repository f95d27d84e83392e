"""Deep & Cross Network (DCN-V2, Wang et al. 2020, arXiv 2008.13535): explicit feature crosses."""

from __future__ import annotations

import torch
from torch import nn

from projects.home.recap.model.config import DcnConfig
from projects.home.recap.model.input_layout import InputLayout
from projects.home.recap.model.mlp import Mlp, xavier_linear


class CrossLayer(nn.Module):
    """``x0 * (W x + b) + x``; with a projection dimension ``W = U V^T`` (low rank).

    Each layer raises the polynomial degree of the crosses by one while the residual keeps the
    lower-degree terms.
    """

    def __init__(self, width: int, projection_dim: int | None):
        super().__init__()
        if projection_dim is None:
            self.transform: nn.Module = xavier_linear(width, width)
        else:
            down = nn.Linear(width, projection_dim, bias=False)
            nn.init.xavier_uniform_(down.weight)
            self.transform = nn.Sequential(down, xavier_linear(projection_dim, width))

    def forward(self, x0: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return x0 * self.transform(x) + x


class Dcn(nn.Module):
    """``poly_degree`` cross layers, an optional MLP beside or on top, an optional output MLP.

    With ``use_parallel`` the MLP reads the input and its output is concatenated after the cross
    network's; otherwise the MLP reads the cross network's output.

    Attributes:
        out_features: Output width.
    """

    def __init__(self, config: DcnConfig, in_features: int):
        super().__init__()
        self.cross_layers = nn.ModuleList(
            CrossLayer(in_features, config.projection_dim) for _ in range(config.poly_degree)
        )
        self.parallel = config.use_parallel
        width = in_features
        self.mlp = None
        if config.parallel_mlp is not None:
            # Stacked or beside, the MLP's input is as wide as the cross network's (= input).
            self.mlp = Mlp(in_features, config.parallel_mlp)
            width = in_features + self.mlp.out_features if self.parallel else self.mlp.out_features
        self.output_mlp = Mlp(width, config.output_mlp) if config.output_mlp is not None else None
        self.out_features = self.output_mlp.out_features if self.output_mlp is not None else width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cross = x
        for layer in self.cross_layers:
            cross = layer(x, cross)
        if self.mlp is None:
            net = cross
        elif self.parallel:
            net = torch.cat([cross, self.mlp(x)], dim=1)
        else:
            net = self.mlp(cross)
        return self.output_mlp(net) if self.output_mlp is not None else net


def build_dcn(config: DcnConfig, layout: InputLayout) -> Dcn:
    """Builds a DCN over the input described by ``layout``."""
    return Dcn(config, layout.width)
