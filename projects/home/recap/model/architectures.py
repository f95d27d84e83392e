"""The table from each ``TaskModel`` architecture variant to its builder."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from projects.home.recap.model.config import TaskModel
from projects.home.recap.model.dcn import build_dcn
from projects.home.recap.model.dlrm import build_dlrm
from projects.home.recap.model.errors import ModelInputError
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

    Raises:
        ModelInputError: the chosen variant has no builder in :data:`ARCHITECTURES`.
    """
    variant, config = task_model.architecture()
    builder = ARCHITECTURES.get(variant)
    if builder is None:
        raise ModelInputError(
            f"architecture '{variant}' has no builder; add it to ARCHITECTURES in "
            f"{__name__} (known: {sorted(ARCHITECTURES)})"
        )
    return builder(config, layout)
