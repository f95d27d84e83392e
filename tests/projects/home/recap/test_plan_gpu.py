"""The planner on the real device: the job's topology is this GPU's memory; a UVM-caching table
keeps its rows in host memory and a small table stays in the GPU's.

Skipped without CUDA (tests/conftest.py); benchmarks/gpu_check.sh runs them.
"""

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torchrec.distributed.sharding_plan import get_default_sharders

from projects.home.recap.build import model_input_spec
from projects.home.recap.config import RecapConfig
from projects.home.recap.model.model_and_loss import build_model_and_loss
from projects.home.recap.sharding import (
    TablePlanner,
    attach_table_optimizer,
    build_topology,
    table_constraints,
)
from tml.core.config import load_config_from_yaml
from tml.distributed import DistributedEnvironment, init_distributed, shutdown_distributed
from tml.sharding.planner import RESERVED_MEMORY

pytestmark = pytest.mark.gpu

PROD_SCALE = Path(__file__).resolve().parents[4] / "projects/home/recap/config/prod_scale.yaml"


@pytest.fixture
def gpu_process_group(monkeypatch) -> DistributedEnvironment:
    """A one-member group on this GPU (NCCL for CUDA tensors), as a job without torchrun gets."""
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    environment = init_distributed("cuda")
    yield environment
    shutdown_distributed()


def test_one_process_on_a_gpu_speaks_nccl_for_device_tensors(gpu_process_group):
    assert gpu_process_group.device == torch.device("cuda", 0)
    assert gpu_process_group.backend == "cpu:gloo,cuda:nccl"
    on_device = torch.ones(3, device="cuda")
    on_host = torch.ones(3)
    dist.all_reduce(on_device)
    dist.all_reduce(on_host)
    dist.barrier()
    assert on_device.tolist() == on_host.tolist() == [1.0, 1.0, 1.0]


def test_the_jobs_topology_is_this_gpus_memory(gpu_process_group):
    topology = build_topology(gpu_process_group)
    assert topology.compute_device == "cuda" and len(topology.devices) == 1
    total = torch.cuda.get_device_properties(0).total_memory
    assert topology.devices[0].storage.hbm == total


def test_a_uvm_caching_table_keeps_only_its_cache_on_the_gpu(gpu_process_group):
    # The device machine's host memory (128 GiB) is smaller than its GPU's, so a table larger
    # than the GPU cannot be planned there at all; a UVM-caching table of 25.6 GB can.
    topology = build_topology(gpu_process_group)
    storage = topology.devices[0].storage
    rows, dim = 50_000_000, 128
    table_bytes = rows * dim * 4
    if table_bytes > (1 - RESERVED_MEMORY) * storage.ddr / 2:
        pytest.skip(f"the host shows only {storage.ddr / 2**30:.0f} GiB for a table in UVM")
    config = load_config_from_yaml(
        RecapConfig,
        PROD_SCALE,
        [
            f"model.large_embeddings.tables.0.num_embeddings={rows}",
            "model.large_embeddings.tables.0.compute_kernels=[fused_uvm_caching]",
            "model.large_embeddings.tables.1.num_embeddings=1000000",
        ],
    )
    with torch.device("meta"):
        model = build_model_and_loss(config.model, model_input_spec(config))
    constraints = table_constraints(config.model.large_embeddings, "cuda")
    attach_table_optimizer(model, config.model.large_embeddings)
    planner = TablePlanner(topology, 4096, constraints, log_stats=False)
    planner.plan(model, get_default_sharders(), dist.GroupMember.WORLD)
    chosen = {option.name: option for option in planner.chosen}
    user, author = chosen["meta__user_id"], chosen["meta__author_id"]
    assert user.compute_kernel == "fused_uvm_caching"
    assert sum(shard.storage.ddr for shard in user.shards) >= table_bytes
    assert sum(shard.storage.hbm for shard in user.shards) < table_bytes / 2
    assert author.compute_kernel == "fused"  # small enough for the GPU's memory
