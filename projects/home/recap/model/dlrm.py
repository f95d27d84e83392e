"""DLRM (Naumov et al. 2019, arXiv 1906.00091): dense MLP, pairwise dot interaction, top MLP."""

from __future__ import annotations

import torch
from torch import nn

from projects.home.recap.model.config import DlrmConfig
from projects.home.recap.model.errors import ModelInputError
from projects.home.recap.model.input_layout import InputLayout
from projects.home.recap.model.mlp import Mlp


class Dlrm(nn.Module):
    """Bottom MLP over the dense columns; dot products of every pair among its output and the
    embedding vectors; top MLP over the bottom output ++ those dot products.

    The dense columns are everything in the input that is not a learned embedding vector
    (featurized continuous and binary features, TwHIN embeddings, a backbone's output).

    Attributes:
        out_features: Output width.
    """

    def __init__(self, config: DlrmConfig, layout: InputLayout):
        super().__init__()
        dim = config.bottom_mlp.layer_sizes[-1]
        if not layout.embedding_segments:
            raise ModelInputError(
                "DLRM needs embedding vectors to interact: configure large_embeddings, "
                "small_embeddings or position_debias_config"
            )
        widths = sorted({width for _, width in layout.embedding_segments})
        if widths != [dim]:
            raise ModelInputError(
                f"DLRM's bottom_mlp ends in {dim} units but the embedding vectors are {widths} wide"
            )
        self.dense_segments = layout.dense_segments()
        self.embedding_segments = layout.embedding_segments
        dense_width = sum(width for _, width in self.dense_segments)
        if dense_width == 0:
            raise ModelInputError("DLRM's bottom MLP has no dense feature to read")
        self.bottom_mlp = Mlp(dense_width, config.bottom_mlp)
        count = 1 + len(self.embedding_segments)
        rows, columns = torch.triu_indices(count, count, offset=1)
        # Index of each distinct pair (i < j) in the flattened [count, count] dot-product matrix.
        self.register_buffer("pair_index", rows * count + columns, persistent=False)
        self.top_mlp = Mlp(dim + len(rows), config.top_mlp)
        self.out_features = self.top_mlp.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dense = torch.cat([x[:, start : start + width] for start, width in self.dense_segments], 1)
        bottom = self.bottom_mlp(dense)
        vectors = torch.stack(
            [bottom] + [x[:, start : start + width] for start, width in self.embedding_segments],
            dim=1,
        )
        dots = torch.bmm(vectors, vectors.transpose(1, 2)).flatten(1)
        return self.top_mlp(torch.cat([bottom, dots[:, self.pair_index]], dim=1))


def build_dlrm(config: DlrmConfig, layout: InputLayout) -> Dlrm:
    """Builds a DLRM over the input described by ``layout``."""
    return Dlrm(config, layout)
