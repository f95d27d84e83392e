"""The warning for bf16 autocast on a CPU without bf16 units."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from tml.training.bf16_support import cpu_flags, has_native_bf16, warn_if_bf16_is_emulated

AVX2_EPYC = "processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu sse sse2 avx avx2 fma\n"
SAPPHIRE_RAPIDS = "flags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n"
NEOVERSE_V1 = "processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\n"


@pytest.mark.parametrize(
    ("cpuinfo", "native"), [(AVX2_EPYC, False), (SAPPHIRE_RAPIDS, True), (NEOVERSE_V1, True)]
)
def test_flags_are_read_from_cpuinfo(tmp_path: Path, cpuinfo: str, native: bool):
    path = tmp_path / "cpuinfo"
    path.write_text(cpuinfo)
    assert has_native_bf16(cpu_flags(path)) is native


def test_unknown_flags_are_not_judged(tmp_path: Path):
    assert cpu_flags(tmp_path / "missing") is None
    assert has_native_bf16(None) is None


def test_warns_only_for_a_cpu_without_bf16(caplog: pytest.LogCaptureFixture):
    cpu = torch.device("cpu")
    with caplog.at_level(logging.WARNING, logger="tml.training.bf16_support"):
        assert warn_if_bf16_is_emulated(cpu, {"avx2", "fma"})
        assert "training.bf16_autocast: false" in caplog.text
        caplog.clear()
        assert not warn_if_bf16_is_emulated(cpu, {"avx2", "avx512_bf16"})
        assert not warn_if_bf16_is_emulated(torch.device("meta"), {"avx2"})
        assert caplog.text == ""
