"""The real command line on a job whose data and save_dir are S3 URLs (moto on loopback, see
tests/conftest.py): 2-rank training, the follower, inference and export give the numbers of the
same job on local disk (the session's ``tiny_job``); injected 503s and slow answers are retried;
a missing bucket is one line and exit 2. (Resuming from a bucket: retrain/test_cycle.py.)"""

from __future__ import annotations

import io
import json
import subprocess
import sys

import fsspec
import pyarrow.parquet as pq
import pytest
import torch

from tests.projects.home.recap.test_main import config_for
from tests.projects.home.recap.tiny_job import MAIN, REPO, environment, generate, run_tiny_job

pytestmark = pytest.mark.slow

PARTITIONS = ("all_tasks", "favorited_downsampled")


def data_overrides(root: str) -> list[str]:
    return [
        f"train_data.inputs={root}/data/train/*.parquet",
        *(f"validation_data.{name}.inputs={root}/data/validation/*.parquet" for name in PARTITIONS),
    ]


def read(url_or_path: str) -> bytes:
    with fsspec.open(url_or_path, "rb") as file:
        return file.read()


def metric_records(save_dir: str, stream: str) -> list[dict]:
    lines = read(f"{save_dir}/{stream}.jsonl").decode().splitlines()
    # Timings (time, throughput, wall clock) differ between any two runs; the numbers do not.
    timing = ("time", "per_second", "wall", "seconds")
    return [
        {k: v for k, v in json.loads(line).items() if not any(t in k for t in timing)}
        for line in lines
    ]


@pytest.fixture(scope="module")
def jobs(tiny_job, s3_server) -> tuple[str, str]:
    """The session's tiny job on local disk and the same job on a bucket; (local save_dir,
    remote save_dir)."""
    fs = fsspec.filesystem("s3")
    fs.mkdir("remote-job")
    for part in ("train", "validation"):
        fs.put(str(tiny_job / "data" / part), f"remote-job/data/{part}", recursive=True)
    # A few 503s and slow answers while the bucket job runs: retried, never seen by the job.
    s3_server.faults.fail_next = 6
    s3_server.faults.delay_next, s3_server.faults.delay_seconds = 6, 0.5
    failed = s3_server.faults.failed
    remote = "s3://remote-job/model"
    run_dir = tiny_job / "remote"
    run_dir.mkdir()
    run_tiny_job(run_dir, f"training.save_dir={remote}", *data_overrides("s3://remote-job"))
    assert s3_server.faults.failed == failed + 6
    return str(config_for(tiny_job).training.save_dir), remote


def test_training_on_the_bucket_equals_the_local_job(jobs):
    local, remote = jobs
    assert metric_records(remote, "train") == metric_records(local, "train")
    assert metric_records(remote, "eval") == metric_records(local, "eval")
    fs = fsspec.filesystem("s3")
    assert fs.exists("remote-job/model/checkpoints/step_6/COMPLETE")
    assert fs.exists("remote-job/model/checkpoints/step_3/rank_1.json")
    assert fs.exists("remote-job/model/checkpoints/step_6/evaluated_all_tasks.json")


def test_the_follower_evaluates_the_bucket_checkpoints_like_local_ones(jobs):
    local, remote = jobs
    records = metric_records(remote, "evaluator")
    assert records and records == metric_records(local, "evaluator")
    assert read(f"{remote}/checkpoints/step_6/evaluated_all_tasks.json")


def test_inference_writes_the_local_predictions_to_the_bucket(jobs):
    local, remote = jobs
    for rank in range(2):
        name = f"predictions/step_6/predictions-{rank}-of-2.parquet"
        remote_table = pq.read_table(io.BytesIO(read(f"{remote}/{name}")))
        local_table = pq.read_table(f"{local}/{name}")
        # Rows name the file they came from: the same files, under a bucket or a local folder.
        files = [
            [path.rsplit("/", 1)[-1] for path in table.column("source_file").to_pylist()]
            for table in (remote_table, local_table)
        ]
        assert files[0] == files[1]
        remote_table, local_table = (
            table.drop_columns(["source_file"]) for table in (remote_table, local_table)
        )
        assert remote_table.num_rows > 0 and remote_table.equals(local_table)


def test_export_writes_the_servable_to_the_bucket(jobs):
    local, remote = jobs
    remote_program = torch.export.load(io.BytesIO(read(f"{remote}/exports/step_6.pt2")))
    local_program = torch.export.load(f"{local}/exports/step_6.pt2")
    remote_state, local_state = remote_program.state_dict, local_program.state_dict
    assert remote_state.keys() == local_state.keys()
    for name, value in local_state.items():
        torch.testing.assert_close(remote_state[name], value)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("training.save_dir=s3://no-such-bucket-10/model", "s3://no-such-bucket-10/model"),
        (
            "train_data.inputs=s3://no-such-bucket-10/data/*.parquet",
            "s3://no-such-bucket-10/data/*.parquet: no such bucket",
        ),
    ],
)
def test_a_missing_bucket_is_one_line_and_exit_2(tmp_path, s3_server, override, message):
    generate(tmp_path)
    result = subprocess.run(
        [sys.executable, *MAIN, override],
        cwd=REPO,
        env=environment(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], result.stderr[-2000:]
    assert "no such bucket" in errors[0] and "Traceback" not in result.stderr
