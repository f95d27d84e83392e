"""The multi-layer perceptron, and the Linear initialisation every architecture shares."""

from __future__ import annotations

import torch
from torch import nn

from projects.home.recap.model.config import MlpConfig
from projects.home.recap.model.norms import build_batch_norm


def xavier_linear(in_features: int, out_features: int) -> nn.Linear:
    """A Linear layer with Xavier-uniform weights and a zero bias (the original's initialiser)."""
    linear = nn.Linear(in_features, out_features)
    nn.init.xavier_uniform_(linear.weight)
    nn.init.zeros_(linear.bias)
    return linear


class Mlp(nn.Module):
    """Linear -> [BatchNorm1d] -> ReLU -> [Dropout] per hidden layer, a last Linear, [ReLU].

    Attributes:
        in_features: Input width.
        out_features: Output width (the last layer size).
        shared_size: Width of the shared layer (see :meth:`forward_with_shared_layer`).
    """

    def __init__(self, in_features: int, config: MlpConfig):
        super().__init__()
        blocks: list[list[nn.Module]] = []
        width = in_features
        for size in config.layer_sizes[:-1]:
            block: list[nn.Module] = [xavier_linear(width, size)]
            if config.batch_norm is not None:
                block.append(build_batch_norm(size, config.batch_norm))
            block.append(nn.ReLU())
            if config.dropout is not None:
                block.append(nn.Dropout(config.dropout.rate))
            blocks.append(block)
            width = size
        last: list[nn.Module] = [xavier_linear(width, config.layer_sizes[-1])]
        if config.final_layer_activation:
            last.append(nn.ReLU())
        layers = [layer for block in blocks for layer in block] + last
        # The shared layer ends after the first hidden block, or is the output without one.
        self._shared_end = len(blocks[0]) if blocks else len(layers)
        self.layers = nn.Sequential(*layers)
        self.in_features = in_features
        self.out_features = config.layer_sizes[-1]
        self.shared_size = config.layer_sizes[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)

    def forward_with_shared_layer(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The output and the shared layer: the first hidden block's activations (the output
        itself when there is no hidden layer), for heads that want a wide intermediate."""
        shared = x
        for index, layer in enumerate(self.layers):
            x = layer(x)
            if index + 1 == self._shared_end:
                shared = x
        return x, shared


def build_mlp(config: MlpConfig, in_features: int) -> Mlp:
    """Builds an MLP over ``in_features`` inputs."""
    return Mlp(in_features, config)
