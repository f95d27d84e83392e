"""Docker cannot run here: check that the images agree with pyproject.toml and main.py."""

import re
import subprocess
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
# Prints the command line it was given, one argument a line, and the rendezvous-store switch.
FAKE_TORCHRUN = (
    "#!/usr/bin/env bash\n"
    'printf "%s\\n" "$@"\n'
    'echo "shared-store-off=${TORCH_DISABLE_SHARE_RDZV_TCP_STORE:-}" >&2\n'
)


def pyproject_pins() -> dict[str, str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        requirements.extend(extra)
    pins = {}
    for requirement in requirements:
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)==([0-9][^;\s]*)", requirement.strip())
        if match:
            pins[match.group(1).lower()] = match.group(2)
    return pins


@pytest.mark.parametrize("image", ["gpu.Dockerfile", "cpu.Dockerfile"])
def test_every_pin_in_an_image_matches_pyproject(image):
    text = (DOCKER / image).read_text()
    pins = pyproject_pins()
    found = re.findall(r"([A-Za-z0-9_.-]+)==([0-9][0-9A-Za-z.+]*)", text)
    for name, version in found:
        assert pins.get(name.lower()) == version, f"{image} pins {name}=={version}"
    assert "python3.11" in text or "python:3.11" in text


def test_gpu_image_installs_the_gpu_extra_and_cpu_image_the_cpu_one():
    gpu = (DOCKER / "gpu.Dockerfile").read_text()
    cpu = (DOCKER / "cpu.Dockerfile").read_text()
    assert 'pip install ".[gpu]"' in gpu and "FROM nvidia/cuda" in gpu
    assert 'pip install ".[cpu]"' in cpu and "--no-deps torchrec==" in cpu
    assert "download.pytorch.org/whl/cpu torch==" in cpu
    pins = pyproject_pins()
    assert pins["torchrec"] == "1.8.0" and pins["fbgemm-gpu"] == pins["fbgemm-gpu-cpu"] == "1.8.0"


@pytest.mark.parametrize("image", ["gpu.Dockerfile", "cpu.Dockerfile"])
def test_entrypoint_is_the_torchrun_launcher(image):
    text = (DOCKER / image).read_text()
    assert 'ENTRYPOINT ["tml-entrypoint"]' in text
    assert "COPY docker/entrypoint.sh /usr/local/bin/tml-entrypoint" in text


def test_entrypoint_launches_main_with_flags_main_accepts(tmp_path):
    script = (DOCKER / "entrypoint.sh").read_text()
    assert "-m projects.home.recap.main" in script
    # Run the launcher with a fake torchrun to see the command line it builds.
    fake = tmp_path / "torchrun"
    fake.write_text(FAKE_TORCHRUN)
    fake.chmod(0o755)
    env = {
        "PATH": f"{tmp_path}:/usr/bin:/bin",
        "NNODES": "2",
        "NPROC_PER_NODE": "4",
        "RDZV_ENDPOINT": "node0:29400",
        "RDZV_ID": "job7",
    }
    result = subprocess.run(
        ["bash", str(DOCKER / "entrypoint.sh"), "--config_path", "c.yaml", "training.seed=3"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    arguments = result.stdout.split()
    assert arguments[:10] == [
        "--nnodes",
        "2",
        "--nproc_per_node",
        "4",
        "--rdzv_backend",
        "c10d",
        "--rdzv_endpoint",
        "node0:29400",
        "--rdzv_id",
        "job7",
    ]
    assert arguments[10:12] == ["--max-restarts", "3"]
    assert arguments[12:] == [
        "-m",
        "projects.home.recap.main",
        "--config_path",
        "c.yaml",
        "training.seed=3",
    ]

    from projects.home.recap.main import build_argument_parser

    parsed = build_argument_parser().parse_args(arguments[14:])
    assert parsed.config_path == "c.yaml"
    assert parsed.overrides == ["training.seed=3"]


def test_single_node_launch_is_standalone_and_restarts_with_a_store_per_round(tmp_path):
    fake = tmp_path / "torchrun"
    fake.write_text(FAKE_TORCHRUN)
    fake.chmod(0o755)
    result = subprocess.run(
        ["bash", str(DOCKER / "entrypoint.sh"), "--config_path", "c.yaml"],
        capture_output=True,
        text=True,
        env={"PATH": f"{tmp_path}:/usr/bin:/bin", "MAX_RESTARTS": "5"},
        check=True,
    )
    assert result.stdout.split()[:7] == [
        "--standalone",
        "--nnodes",
        "1",
        "--nproc_per_node",
        "1",
        "--max-restarts",
        "5",
    ]
    # Without it restarted workers hang (pytorch/pytorch#135712; the workers refuse to start).
    assert "shared-store-off=1" in result.stderr


@pytest.mark.parametrize("launcher", ["projects/home/recap/scripts/run_local.sh", "Makefile"])
def test_every_shipped_launch_goes_through_the_entrypoint(launcher):
    text = (REPO / launcher).read_text()
    assert "docker/entrypoint.sh" in text
    assert not re.search(r"^\s*(exec\s+)?\S*torchrun\s", text, re.MULTILINE), launcher
