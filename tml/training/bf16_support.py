"""Whether this CPU computes in bfloat16 natively, and a warning for a run that would not.

oneDNN runs bf16 matrix multiplies on AVX512-BF16 or AMX units. Without them (an AVX2-only
CPU, say) it falls back to slow code paths: on an AVX2 AMD EPYC a bf16 training step of the
production-shaped ranker took ~84 s where fp32 took ~2.6 s (docs/model.md). A run asking for
bf16 autocast there is almost surely a mistake, so the trainer says so at start; it still runs
as configured.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

# /proc/cpuinfo flags of bf16 arithmetic: x86 (AVX512-BF16, AMX) and Arm (FEAT_BF16).
NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})
CPUINFO = Path("/proc/cpuinfo")


def cpu_flags(cpuinfo: Path = CPUINFO) -> set[str] | None:
    """The CPU's feature flags (x86 ``flags``, Arm ``Features``); None where unreadable."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name.strip() in ("flags", "Features"):
            return set(value.split())
    return None


def has_native_bf16(flags: Iterable[str] | None) -> bool | None:
    """Whether the flags include bf16 arithmetic; None when the flags are unknown."""
    if flags is None:
        return None
    return not NATIVE_BF16_FLAGS.isdisjoint(flags)


def warn_if_bf16_is_emulated(device: torch.device, flags: Iterable[str] | None = None) -> bool:
    """Logs a warning when bf16 autocast would run on a CPU without bf16 units; returns whether
    it warned. ``flags`` defaults to this machine's."""
    if device.type != "cpu":
        return False
    if flags is None:
        flags = cpu_flags()
    if has_native_bf16(flags) is not False:
        return False
    logger.warning(
        "training.bf16_autocast is on, but this CPU has no bf16 arithmetic (no avx512_bf16, "
        "amx_bf16 or bf16 flag in /proc/cpuinfo): its bf16 matrix multiplies are emulated, "
        "which made a training step ~30x slower than fp32 on an AVX2-only CPU (docs/model.md). "
        "Set training.bf16_autocast: false to train in fp32."
    )
    return True
