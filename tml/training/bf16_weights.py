"""Persistent bf16 copies of Linear weights for training under bf16 autocast.

Autocast casts every fp32 weight to bf16 again in every forward, into freshly allocated memory:
on CPU, one pass over all weights plus a page fault per fresh page, every step. Here each
``nn.Linear`` keeps a bf16 copy of its weight and bias in buffers allocated once, refreshed in
one fused pass (``torch._foreach_copy_``) after each optimizer step. Under bf16 autocast the
layer hands autocast its copy (already bf16, so autocast leaves it alone); the backward casts the
gradient to the master's dtype exactly as autocast's own cast would. The arithmetic is therefore
autocast's, bit for bit, while the masters, their gradients and the optimizer state stay fp32.

A copy is refreshed by :meth:`Bf16WeightCopies.refresh` (the trainer calls it after every
optimizer step and after loading weights) and, as a safety net, before a forward that finds its
master changed by an in-place write that bumped the master's version counter (``copy_``,
``load_state_dict``, most optimizers; fbgemm-style fused ones do not bump it, hence the explicit
refresh).
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import nn


class _CachedCast(torch.autograd.Function):
    """Forward: the cached low-precision copy. Backward: the gradient cast to the master's dtype
    (what autocast's ``master.to(bf16)`` would give back)."""

    @staticmethod
    def forward(ctx: Any, master: torch.Tensor, copy: torch.Tensor) -> torch.Tensor:
        ctx.master_dtype = master.dtype
        return copy.view_as(copy)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad.to(ctx.master_dtype), None


class _LinearCopy:
    """One layer's copies and the master versions they were taken at."""

    def __init__(self, linear: nn.Linear, dtype: torch.dtype) -> None:
        self.linear = linear
        self.masters = [p for p in (linear.weight, linear.bias) if p is not None]
        self.copies = [torch.empty_like(p, dtype=dtype) for p in self.masters]
        self.versions = [-1] * len(self.masters)

    def mark_fresh(self) -> None:
        self.versions = [master._version for master in self.masters]

    def stale(self) -> bool:
        return any(
            master._version != version
            for master, version in zip(self.masters, self.versions, strict=True)
        )


class Bf16WeightCopies:
    """Gives every fp32 ``nn.Linear`` under ``module`` a persistent bf16 copy for autocast.

    Outside bf16 autocast (evaluation in fp32, export) the layers run their own forward on the
    fp32 weights. The copies are not parameters or buffers: state dicts and checkpoints are
    unchanged.

    Args:
        module: The model; its Linear layers are found at any depth (inside DDP or
            DistributedModelParallel wrappers too).
        dtype: The autocast dtype the copies serve.
    """

    def __init__(self, module: nn.Module, dtype: torch.dtype = torch.bfloat16) -> None:
        self.dtype = dtype
        self._layers = [
            _LinearCopy(linear, dtype)
            for linear in module.modules()
            if isinstance(linear, nn.Linear) and linear.weight.dtype == torch.float32
        ]
        for layer in self._layers:
            layer.linear.forward = functools.partial(self._forward, layer)  # type: ignore[method-assign]
        self.refresh()

    @property
    def num_layers(self) -> int:
        return len(self._layers)

    def refresh(self) -> None:
        """Copies every master into its bf16 copy, in one fused pass."""
        if not self._layers:
            return
        copies = [copy for layer in self._layers for copy in layer.copies]
        masters = [master.detach() for layer in self._layers for master in layer.masters]
        with torch.no_grad():
            torch._foreach_copy_(copies, masters)
        for layer in self._layers:
            layer.mark_fresh()

    def remove(self) -> None:
        """Gives the layers their own forward back and frees the copies."""
        for layer in self._layers:
            del layer.linear.forward
        self._layers = []

    def _forward(self, layer: _LinearCopy, input: torch.Tensor) -> torch.Tensor:
        linear = layer.linear
        device_type = linear.weight.device.type
        if not (
            torch.is_autocast_enabled(device_type)
            and torch.get_autocast_dtype(device_type) == self.dtype
        ):
            return nn.Linear.forward(linear, input)
        if layer.stale():
            with torch.no_grad():
                torch._foreach_copy_(layer.copies, [m.detach() for m in layer.masters])
            layer.mark_fresh()
        weight = _CachedCast.apply(linear.weight, layer.copies[0])
        bias = _CachedCast.apply(linear.bias, layer.copies[1]) if linear.bias is not None else None
        return nn.functional.linear(input, weight, bias)
