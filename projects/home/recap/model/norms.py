"""Batch and layer normalisation layers built from their configs."""

from __future__ import annotations

from torch import nn

from projects.home.recap.model.config import BatchNormConfig, LayerNormConfig


def build_batch_norm(width: int, config: BatchNormConfig) -> nn.BatchNorm1d:
    """A BatchNorm1d over ``width`` features (statistics are per rank)."""
    return nn.BatchNorm1d(width, eps=config.epsilon, momentum=config.momentum, affine=config.affine)


def build_layer_norm(width: int, config: LayerNormConfig) -> nn.LayerNorm:
    """A LayerNorm over the last axis; the config guarantees center == scale."""
    return nn.LayerNorm(width, eps=config.epsilon, elementwise_affine=config.center)
