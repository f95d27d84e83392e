"""The table from each ``TaskModel`` architecture variant to its builder."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from projects.home.recap.model.config import TaskModel
from projects.home.recap.model.dcn import build_dcn
from projects.home.recap.model.dlrm import build_dlrm
from projects.home.recap.model.input_layout import InputLayout
from projects.home.recap.model.mask_net import build_mask_net
from projects.home.recap.model.mlp import build_mlp

# Keyed by the TaskModel field of the "architecture" one-of group. Every builder returns a
# module mapping [batch, layout.width] to [batch, module.out_features].
ARCHITECTURES: dict[str, Callable[[Any, InputLayout], nn.Module]] = {
    "mlp_config": lambda config, layout: build_mlp(config, layout.width),
    "mask_net_config": build_mask_net,
    "dcn_config": build_dcn,
    "dlrm_config": build_dlrm,
}


def build_task_network(task_model: TaskModel, layout: InputLayout) -> nn.Module:
    """Builds the network a ``TaskModel`` describes (a tower or the backbone).

    Args:
        task_model: The architecture config; exactly one variant is set.
        layout: The network's input.

    Returns:
        A module with an ``out_features`` attribute.
    """
    variant = task_model.chosen("architecture")
    assert variant is not None  # the one-of group guarantees a variant
    return ARCHITECTURES[variant](getattr(task_model, variant), layout)
