"""The planner on the real device: the job's topology is this GPU's memory, and a table larger
than the GPU goes to UVM while a small one stays in HBM.

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
    RESERVED_MEMORY,
    TablePlanner,
    attach_table_optimizer,
    build_topology,
    table_constraints,
)
from tml.core.config import load_config_from_yaml
from tml.distributed import DistributedEnvironment, init_distributed, shutdown_distributed

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


def test_a_table_larger_than_the_gpu_is_planned_in_host_memory(gpu_process_group):
    topology = build_topology(gpu_process_group)
    storage = topology.devices[0].storage
    dim = 128
    # The weights alone are 1.2 x the GPU's memory; the other table is small.
    rows = int(1.2 * storage.hbm / (dim * 4))
    if rows * dim * 4 > (1 - RESERVED_MEMORY) * storage.ddr / 2:
        pytest.skip(f"the host shows only {storage.ddr / 2**30:.0f} GiB for a table in UVM")
    config = load_config_from_yaml(
        RecapConfig,
        PROD_SCALE,
        [
            f"model.large_embeddings.tables.0.num_embeddings={rows}",
            "model.large_embeddings.tables.1.num_embeddings=1000000",
        ],
    )
    with torch.device("meta"):
        model = build_model_and_loss(config.model, model_input_spec(config))
    constraints = table_constraints(config.model.large_embeddings, "cuda")
    attach_table_optimizer(model, config.model.large_embeddings)
    planner = TablePlanner(topology, 4096, constraints, log_stats=False)
    plan = planner.plan(model, get_default_sharders(), dist.GroupMember.WORLD)
    kernels = {
        table: sharding.compute_kernel
        for module_plan in plan.plan.values()
        for table, sharding in module_plan.items()
    }
    assert kernels["meta__user_id"] in {"fused_uvm", "fused_uvm_caching"}
    assert kernels["meta__author_id"] == "fused"
