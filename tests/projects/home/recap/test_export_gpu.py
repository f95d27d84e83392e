"""local_cpu.yaml trained, scored and exported on one GPU: the predictions of inference on the
GPU and of the exported program (on the CPU and moved to the GPU) agree.

Skipped without CUDA (tests/conftest.py); benchmarks/gpu_check.sh runs them.
"""

import math
import os
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from projects.home.recap.config import RecapConfig
from projects.home.recap.data.dataset import ReadOptions, build_dataset
from projects.home.recap.job_folder import JobFolder
from projects.home.recap.model.servable import servable_inputs
from tests.projects.home.recap.gpu_jobs import CONFIGS, generate, logged, run, torchrun
from tml.checkpoint import checkpoint_folder, is_complete
from tml.core.config import load_config_from_yaml

pytestmark = [pytest.mark.gpu, pytest.mark.slow]

CONFIG = CONFIGS / "local_cpu.yaml"
SHORT = (
    "training.num_train_steps=20",
    "training.checkpoint_every_n=10",
    "training.train_log_every_n=5",
)


@pytest.fixture(scope="module")
def job(tmp_path_factory) -> Path:
    """local_cpu.yaml trained 20 steps on one GPU (evaluating at 10 and 20), its predictions at
    step 20 and its export; returns the run folder ($TML_RUN_DIR)."""
    run_dir = tmp_path_factory.mktemp("local_cpu_gpu")
    generate(CONFIG, run_dir, 6000)
    generate(CONFIG, run_dir, 1000, "--partition", "validation")
    log = torchrun(CONFIG, run_dir, *SHORT, "training.eval_log_every_n=10")
    (run_dir / "train.log").write_text(log)
    torchrun(CONFIG, run_dir, *SHORT, "--mode", "inference")
    run([sys.executable, "-m", "projects.home.recap.export", "--config_path", str(CONFIG)], run_dir)
    return run_dir


def config_for(run_dir: Path) -> RecapConfig:
    """The job's config as its processes resolved it (its paths under $TML_RUN_DIR)."""
    saved = os.environ.get("TML_RUN_DIR")
    os.environ["TML_RUN_DIR"] = str(run_dir)
    try:
        return load_config_from_yaml(RecapConfig, CONFIG, list(SHORT))
    finally:
        if saved is None:
            del os.environ["TML_RUN_DIR"]
        else:
            os.environ["TML_RUN_DIR"] = saved


def test_local_cpu_yaml_trains_on_the_gpu_over_nccl(job):
    assert "on cuda:0, backend cpu:gloo,cuda:nccl" in (job / "train.log").read_text()
    save_dir = job / "local_cpu" / "model"
    records = logged(save_dir)
    assert [record["step"] for record in records] == [5, 10, 15, 20]
    assert all(math.isfinite(record["loss"]) for record in records)
    assert is_complete(checkpoint_folder(save_dir / "checkpoints", 20))
    assert {record["step"] for record in logged(save_dir, "eval")} == {10, 20}


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_the_export_reproduces_the_gpu_inference(job, device):
    config = config_for(job)
    folder = JobFolder(config.training.save_dir)
    step_20 = checkpoint_folder(folder.checkpoints, 20)
    program = torch.export.load(str(folder.export_file(step_20))).module().to(device)
    predicted = pq.read_table(folder.predictions_files(folder.predictions_dir(step_20)))
    assert predicted.num_rows == 1000
    by_tweet = dict(zip(predicted["tweet_id"].to_pylist(), predicted.to_pylist(), strict=True))
    dataset = build_dataset(
        config.validation_data["validation"],
        options=ReadOptions.inference(),
        tasks=list(config.model.tasks),
        large_embeddings=config.model.large_embeddings,
    )
    batch = next(iter(dataset))
    tables = [table.name for table in config.model.large_embeddings.tables]
    inputs, sparse_ids = servable_inputs(batch.to(torch.device(device)), tables)
    with torch.no_grad():
        outputs = program(inputs, sparse_ids)
    tweets = batch.extra_features["meta__tweet_id"].reshape(-1).tolist()
    for index, task in enumerate(config.model.tasks):
        served = outputs["probabilities"][:, index].cpu()
        inferred = torch.tensor([by_tweet[t][f"probability/{task}"] for t in tweets])
        torch.testing.assert_close(served, inferred, rtol=0, atol=1e-5, msg=task)
