"""MaskNet (Wang et al. 2021, arXiv 2102.07619): feature-wise masks from the raw input."""

from __future__ import annotations

import torch
from torch import nn

from projects.home.recap.model.config import MaskBlockConfig, MaskNetConfig
from projects.home.recap.model.errors import ModelInputError
from projects.home.recap.model.input_layout import InputLayout
from projects.home.recap.model.mlp import Mlp, xavier_linear


def aggregation_width(config: MaskBlockConfig, mask_in_features: int) -> int:
    """Hidden width of a block's mask network: given, or a fraction of the mask input."""
    if config.aggregation_size is not None:
        return config.aggregation_size
    assert config.reduction_factor is not None  # the one-of group guarantees one of them
    width = int(mask_in_features * config.reduction_factor)
    if width < 1:
        raise ModelInputError(
            f"reduction_factor {config.reduction_factor} x mask input width {mask_in_features} "
            "leaves no hidden unit in the mask network; raise it or set aggregation_size"
        )
    return width


class MaskBlock(nn.Module):
    """``LayerNorm(Linear(net * mask(mask_input)))``, with an optional LayerNorm on ``net`` first.

    The mask is ``Linear -> ReLU -> Linear`` back to the width of ``net``: an instance-guided,
    feature-wise gate computed from the raw input.
    """

    def __init__(self, config: MaskBlockConfig, in_features: int, mask_in_features: int):
        super().__init__()
        hidden = aggregation_width(config, mask_in_features)
        self.input_layer_norm = nn.LayerNorm(in_features) if config.input_layer_norm else None
        self.mask = nn.Sequential(
            xavier_linear(mask_in_features, hidden), nn.ReLU(), xavier_linear(hidden, in_features)
        )
        self.hidden = xavier_linear(in_features, config.output_size)
        self.layer_norm = nn.LayerNorm(config.output_size)
        self.out_features = config.output_size

    def forward(self, net: torch.Tensor, mask_input: torch.Tensor) -> torch.Tensor:
        if self.input_layer_norm is not None:
            net = self.input_layer_norm(net)
        return self.layer_norm(self.hidden(net * self.mask(mask_input)))


class MaskNet(nn.Module):
    """Mask blocks in parallel (outputs concatenated) or in series, then an optional MLP.

    In series, block ``i``'s output is block ``i + 1``'s ``net``; every block's mask still reads
    the raw input.

    Attributes:
        out_features: Output width.
        shared_size: Width of the shared layer (the blocks' output, before the MLP).
    """

    def __init__(self, config: MaskNetConfig, in_features: int):
        super().__init__()
        self.parallel = config.use_parallel
        blocks = []
        width = in_features
        for block_config in config.mask_blocks:
            net_width = in_features if self.parallel else width
            blocks.append(MaskBlock(block_config, net_width, in_features))
            width = block_config.output_size
        self.blocks = nn.ModuleList(blocks)
        self.shared_size = (
            sum(block.out_features for block in blocks)
            if self.parallel
            else blocks[-1].out_features
        )
        self.mlp = Mlp(self.shared_size, config.mlp) if config.mlp is not None else None
        self.out_features = self.mlp.out_features if self.mlp is not None else self.shared_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_shared_layer(x)[0]

    def forward_with_shared_layer(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The output and the blocks' output (the MLP's input)."""
        if self.parallel:
            shared = torch.cat([block(x, x) for block in self.blocks], dim=1)
        else:
            shared = x
            for block in self.blocks:
                shared = block(shared, x)
        output = self.mlp(shared) if self.mlp is not None else shared
        return output, shared


def build_mask_net(config: MaskNetConfig, layout: InputLayout) -> MaskNet:
    """Builds a MaskNet over the input described by ``layout``."""
    return MaskNet(config, layout.width)
