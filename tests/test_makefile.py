"""The Makefile's install flavour: the GPU build where nvidia-smi lists a GPU, else the CPU build.

Run with make's dry run (``-n``, nothing installed) and a PATH holding only the tools the
detection calls, so a fake ``nvidia-smi`` decides what this machine looks like.
"""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# What nvidia-smi -L prints on a machine with two GPUs.
TWO_GPUS = (
    "GPU 0: NVIDIA H200 (UUID: GPU-00000000-0000-0000-0000-000000000000)\n"
    "GPU 1: NVIDIA H200 (UUID: GPU-11111111-1111-1111-1111-111111111111)\n"
)


def tools(tmp_path: Path, nvidia_smi: str | None) -> Path:
    """A PATH folder with the commands the Makefile's detection runs, and ``nvidia_smi`` as
    the script of a fake nvidia-smi (None: no nvidia-smi at all, as on a CPU machine)."""
    folder = tmp_path / "bin"
    folder.mkdir()
    for name in ("wc", "nproc"):
        (folder / name).symlink_to(shutil.which(name))
    if nvidia_smi is not None:
        fake = folder / "nvidia-smi"
        fake.write_text(f"#!/bin/bash\n{nvidia_smi}\n")
        fake.chmod(0o755)
    return folder


def make(path: Path, *arguments: str) -> str:
    """make's output in the checkout, with only ``path`` on PATH (dry runs: nothing runs)."""
    result = subprocess.run(
        [shutil.which("make"), "--no-print-directory", "-C", str(REPO), *arguments],
        env={"PATH": str(path), "HOME": os.environ.get("HOME", "/tmp")},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return result.stdout


def test_a_listed_gpu_picks_the_cuda_build_and_one_rank_per_gpu(tmp_path):
    path = tools(tmp_path, f"printf '{TWO_GPUS}'")
    assert make(path, "-s", "flavour").strip() == "gpu"
    setup = make(path, "-n", "-B", "setup")
    assert "-e '.[gpu,dev]'" in setup
    assert "torch==2.13.0" not in setup and "fbgemm" not in setup  # pinned by the gpu extra
    assert "NPROC_PER_NODE=2 " in make(path, "-n", "-B", "run")


@pytest.mark.parametrize(
    "nvidia_smi",
    [
        None,  # no driver installed
        "echo 'No devices were found'; exit 6",  # a driver, but no GPU visible
        "echo 'NVIDIA-SMI has failed because it could not communicate with the driver'; exit 9",
    ],
    ids=["no-nvidia-smi", "no-device", "no-driver"],
)
def test_without_a_listed_gpu_the_cpu_build_is_installed(tmp_path, nvidia_smi):
    path = tools(tmp_path, nvidia_smi)
    assert make(path, "-s", "flavour").strip() == "cpu"
    setup = make(path, "-n", "-B", "setup")
    assert "torch==2.13.0" in setup and "-e '.[cpu,dev]'" in setup
    assert "--no-deps torchrec==1.8.0" in setup
    assert "NPROC_PER_NODE=2 " in make(path, "-n", "-B", "run")


def test_flavour_on_the_command_line_overrides_the_detection(tmp_path):
    path = tools(tmp_path, f"printf '{TWO_GPUS}'")
    assert make(path, "-s", "flavour", "FLAVOUR=cpu").strip() == "cpu"
    assert "-e '.[cpu,dev]'" in make(path, "-n", "-B", "setup", "FLAVOUR=cpu")


@pytest.mark.gpu
def test_this_gpu_machine_gets_the_cuda_build():
    # The real nvidia-smi on the PATH the machine gives.
    if shutil.which("make") is None:
        pytest.skip("no make on this machine")
    result = subprocess.run(
        ["make", "--no-print-directory", "-s", "-C", str(REPO), "flavour"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert result.stdout.strip() == "gpu"
