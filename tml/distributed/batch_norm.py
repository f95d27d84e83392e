"""Batch norm running statistics made identical on every data-parallel rank.

torchrec's ``DistributedModelParallel`` wraps the dense part in DDP with
``broadcast_buffers=False``, so each rank's BatchNorm layers track the statistics of that rank's
own batches. Left alone, the ranks drift apart: each evaluates its share of the data with other
statistics, and a checkpoint holds whichever copy its writer picked. The trainer averages the
running statistics over the ranks after every optimizer step, which gives every rank, every
checkpoint and every way of evaluating it the same statistics. (The running statistics are
moving averages, so averaging them every step gives, up to rounding, what averaging them once at
the end would; doing it every step keeps a checkpoint written at any step exactly what an
uninterrupted run holds at that step.)
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch.nn.modules.batchnorm import _BatchNorm


def running_statistics(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``<layer>.running_mean`` / ``<layer>.running_var`` of every BatchNorm layer tracking them."""
    statistics: dict[str, torch.Tensor] = {}
    for name, layer in module.named_modules():
        if isinstance(layer, _BatchNorm) and layer.track_running_stats:
            statistics[f"{name}.running_mean"] = layer.running_mean
            statistics[f"{name}.running_var"] = layer.running_var
    return statistics


def average_running_statistics(
    module: torch.nn.Module, group: dist.ProcessGroup | None = None
) -> int:
    """Replaces every BatchNorm layer's running mean and variance by their mean over the ranks.

    A collective: every rank of ``group`` must call it with the same model. The mean of the
    ranks' variances is not the variance of the global batch, but it is one answer that every
    rank and every checkpoint share. ``num_batches_tracked`` is the same on every rank already.

    Returns:
        The number of tensors averaged (0 without BatchNorm layers or without other ranks).
    """
    tensors = list(running_statistics(module).values())
    if not tensors or not dist.is_initialized() or dist.get_world_size(group) == 1:
        return 0
    # One all-reduce for all layers, in float64 so that the average does not depend on the
    # order in which the backend sums.
    flat = torch.cat([tensor.detach().reshape(-1).double() for tensor in tensors])
    dist.all_reduce(flat, group=group)
    flat /= dist.get_world_size(group)
    start = 0
    with torch.no_grad():
        for tensor in tensors:
            count = tensor.numel()
            tensor.copy_(flat[start : start + count].view_as(tensor))
            start += count
    return len(tensors)
