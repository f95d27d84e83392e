"""Training on one GPU: NCCL, fbgemm's CUDA kernels, TrainPipelineSparseDist's CUDA streams,
checkpoints of CUDA tables, bf16, and the shipped configs under torchrun.

Skipped without CUDA (tests/conftest.py); benchmarks/gpu_check.sh runs them. The CPU runs they
compare with are the ones tests/projects/home/recap/test_training.py checks on every machine.
"""

from pathlib import Path

import pytest
import torch

from tests.helpers.multiprocess import run_on_ranks
from tests.projects.home.recap.distributed_jobs import (
    TASKS,
    full_parameters,
    tiny_config,
    train_job,
)
from tests.projects.home.recap.gpu_jobs import CONFIGS, generate, logged, losses, torchrun
from tml.checkpoint import checkpoint_folder, is_complete

pytestmark = [pytest.mark.gpu, pytest.mark.slow]

# TF32 matmuls (on for GPU training) keep 10 bits of mantissa: a GPU run follows the CPU's
# float32 run to about 1e-3.
CPU_TOLERANCE = {"rtol": 2e-3, "atol": 2e-4}
FROZEN = [
    "optimizer.multi_task_learning_rates.backbone_learning_rate={constant: 0.0}",
    *(
        f"optimizer.multi_task_learning_rates.tower_learning_rates.{task}={{constant: 0.0}}"
        for task in TASKS
    ),
    "model.large_embeddings.optimizer.learning_rate={constant: 0.0}",
]


def assert_close_parameters(first: dict, second: dict, **tolerance: float) -> None:
    assert first.keys() == second.keys()
    for name in first:
        torch.testing.assert_close(first[name], second[name], **tolerance, msg=name)


@pytest.fixture(scope="module")
def initial_weights(tmp_path_factory) -> Path:
    """Freshly initialised weights (one step at learning rate 0), written from the GPU."""
    save_dir = tmp_path_factory.mktemp("initial")
    config = tiny_config(save_dir, "training.num_train_steps=1", *FROZEN)
    run_on_ranks(train_job, 1, config, "cuda", workdir=save_dir)
    return save_dir


@pytest.fixture(scope="module")
def trained_on_cpu(initial_weights, tmp_path_factory) -> tuple[list[float], dict]:
    """The reference: the same 4 steps from the same weights on the CPU (losses, parameters)."""
    save_dir = tmp_path_factory.mktemp("cpu")
    config = tiny_config(save_dir, f"training.initial_checkpoint_dir={initial_weights}")
    assert run_on_ranks(train_job, 1, config, "cpu", workdir=save_dir) == [4]
    return losses(save_dir), full_parameters(config, 4)


# Every kernel of fbgemm's that one device runs, on table_wise tables, and row-wise sharding
# (one shard here) on the plain fused kernel.
PLACEMENTS = [
    ("table_wise", "fused"),
    ("table_wise", "fused_uvm"),
    ("table_wise", "fused_uvm_caching"),
    ("row_wise", "fused"),
]


@pytest.mark.parametrize(("sharding", "kernel"), PLACEMENTS)
def test_each_single_device_table_kernel_trains_like_the_cpu(
    tmp_path, initial_weights, trained_on_cpu, sharding, kernel
):
    placement = [
        f"model.large_embeddings.tables.{index}.{field}=[{value}]"
        for index in range(2)
        for field, value in (("sharding_types", sharding), ("compute_kernels", kernel))
    ]
    start = f"training.initial_checkpoint_dir={initial_weights}"
    config = tiny_config(tmp_path / "gpu", start, *placement)
    assert run_on_ranks(train_job, 1, config, "cuda", workdir=tmp_path) == [4]
    cpu_losses, cpu_parameters = trained_on_cpu
    assert losses(tmp_path / "gpu") == pytest.approx(cpu_losses, rel=2e-3)
    assert_close_parameters(full_parameters(config, 4), cpu_parameters, **CPU_TOLERANCE)


def test_stop_and_resume_on_the_gpu_equals_straight_through(tmp_path, initial_weights):
    start = f"training.initial_checkpoint_dir={initial_weights}"
    length = ("training.num_train_steps=8", "training.checkpoint_every_n=3")
    straight = tiny_config(tmp_path / "straight", start, *length)
    run_on_ranks(train_job, 1, straight, "cuda", workdir=tmp_path)
    stopped = tiny_config(tmp_path / "stopped", start, *length, "training.num_train_steps=5")
    assert run_on_ranks(train_job, 1, stopped, "cuda", workdir=tmp_path) == [5]
    resumed = tiny_config(tmp_path / "stopped", start, *length)
    assert run_on_ranks(train_job, 1, resumed, "cuda", workdir=tmp_path) == [8]
    assert [r["step"] for r in logged(tmp_path / "stopped")] == list(range(1, 9))
    # The same kernels on the same device in the same order: equal, not merely close.
    assert losses(tmp_path / "stopped") == pytest.approx(losses(tmp_path / "straight"), rel=1e-6)
    assert_close_parameters(
        full_parameters(resumed, 8), full_parameters(straight, 8), rtol=1e-6, atol=1e-7
    )


def test_bf16_autocast_on_the_gpu_trains_close_to_fp32(tmp_path, initial_weights):
    start = f"training.initial_checkpoint_dir={initial_weights}"
    fp32 = tiny_config(tmp_path / "fp32", start)
    bf16 = tiny_config(tmp_path / "bf16", start, "training.bf16_autocast=true")
    run_on_ranks(train_job, 1, fp32, "cuda", workdir=tmp_path)
    run_on_ranks(train_job, 1, bf16, "cuda", workdir=tmp_path)
    assert losses(tmp_path / "bf16") == pytest.approx(losses(tmp_path / "fp32"), rel=0.02)
    assert losses(tmp_path / "bf16") != losses(tmp_path / "fp32")
    assert all(p.dtype == torch.float32 for p in full_parameters(bf16, 4).values())


# The shipped configs under torchrun on one GPU ----------------------------------------------


def test_local_prod_yaml_with_large_tables_trains_in_bf16_on_one_gpu(tmp_path):
    # Production-shaped dense part, plus two tables (over the ids the config already reads)
    # that the planner places on this GPU by itself.
    config = CONFIGS / "local_prod.yaml"
    generate(config, tmp_path, 8192)
    tables = (
        "model.large_embeddings={tables: ["
        "{name: meta__user_id, num_embeddings: 2000000, embedding_dim: 64}, "
        "{name: meta__author_id, num_embeddings: 500000, embedding_dim: 64}], "
        "optimizer: {init_learning_rate: 0.01}}"
    )
    log = torchrun(
        config,
        tmp_path,
        tables,
        "train_data.global_batch_size=2048",
        "training.num_train_steps=12",
        "training.checkpoint_every_n=6",
        "training.train_log_every_n=4",
        "training.eval_log_every_n=12",
        "training.num_eval_steps=2",
        "training.bf16_autocast=true",
    )
    assert "meta__user_id" in log  # the plan rank 0 logs
    save_dir = tmp_path / "local_prod" / "model"
    records = logged(save_dir)
    assert [r["step"] for r in records] == [4, 8, 12]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in records)
    assert is_complete(checkpoint_folder(save_dir / "checkpoints", 12))
