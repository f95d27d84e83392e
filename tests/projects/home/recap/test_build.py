"""What the builders choose from the job's device (the GPU side runs only with CUDA)."""

from pathlib import Path

import pytest
import torch

from projects.home.recap.build import build_train_data
from projects.home.recap.tools.generate_random_data import generate_dataset
from tests.projects.home.recap.distributed_jobs import tiny_config
from tml.distributed import DistributedEnvironment


def environment(device: str) -> DistributedEnvironment:
    backend = "cpu:gloo,cuda:nccl" if device == "cuda" else "gloo"
    return DistributedEnvironment(
        rank=0,
        world_size=1,
        local_rank=0,
        local_world_size=1,
        device=torch.device(device, 0) if device == "cuda" else torch.device(device),
        backend=backend,
    )


@pytest.mark.parametrize(("device", "pinned"), [("cuda", True), ("cpu", False)])
def test_the_loader_pins_batches_only_for_a_gpu_job(tmp_path: Path, device, pinned):
    # Built, not iterated: pinning itself needs CUDA.
    config = tiny_config(tmp_path, f"train_data.inputs={tmp_path}/data/*.parquet")
    generate_dataset(config.train_data, str(tmp_path / "data"), num_examples=32, progress=False)
    dataset = build_train_data(config, environment(device))
    assert dataset.options.pin_memory is pinned
    assert dataset.options.shuffle and dataset.options.repeat  # the rest of training's options


@pytest.mark.gpu
def test_a_gpu_jobs_batches_arrive_pinned(tmp_path: Path):
    config = tiny_config(tmp_path, f"train_data.inputs={tmp_path}/data/*.parquet")
    generate_dataset(config.train_data, str(tmp_path / "data"), num_examples=32, progress=False)
    batch = next(iter(build_train_data(config, environment("cuda"))))
    tensors = [*batch.inputs.present().values(), batch.labels, batch.weights]
    tensors += [batch.sparse_features.values(), batch.sparse_features.lengths()]
    assert all(tensor.is_pinned() for tensor in tensors)
