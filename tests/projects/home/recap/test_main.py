"""End to end through the real command line: generate, train (torchrun, 2 ranks), evaluate while
a separate evaluator follows the checkpoints, predict, export; and two torchrun agents as one job.
"""

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from projects.home.recap.config import RecapConfig
from projects.home.recap.data.dataset import ReadOptions, build_dataset
from projects.home.recap.job_folder import JobFolder, MetricStream
from projects.home.recap.main import build_argument_parser
from projects.home.recap.model.servable import servable_inputs
from tests.helpers.multiprocess import free_port
from tests.projects.home.recap.tiny_job import (
    CONFIG,
    MAIN,
    PASSTHROUGH,
    REPO,
    SCORE,
    TORCHRUN,
    environment,
    generate,
    run,
)
from tml.checkpoint import checkpoint_folder, complete_steps
from tml.core.cli import parse_command_line
from tml.core.config import load_config_from_yaml
from tml.observability.metric_json import metrics_from_json

pytestmark = pytest.mark.slow

TASKS = [
    "recap.engagement.is_favorited",
    "recap.engagement.is_replied",
    "recap.engagement.is_video_playback_50",
]


def config_for(run_dir: Path, *overrides: str) -> RecapConfig:
    os.environ["TML_TEST_RUN"] = str(run_dir)
    try:
        return load_config_from_yaml(RecapConfig, CONFIG, overrides)
    finally:
        del os.environ["TML_TEST_RUN"]


def records(path: Path) -> list[dict]:
    return [metrics_from_json(json.loads(line)) for line in path.read_text().splitlines()]


def by_step(path: Path) -> dict[int, dict]:
    """Records of a metrics file merged per step (each partition logs its own record)."""
    merged: dict[int, dict] = {}
    for record in records(path):
        merged.setdefault(record["step"], {}).update(record)
    return merged


@pytest.fixture(scope="module")
def job(tiny_job) -> Path:
    """The session's tiny job: trained with an evaluator started before training began, then
    inference, scoring and export."""
    return tiny_job


def job_folder(run_dir: Path) -> JobFolder:
    return JobFolder(config_for(run_dir).training.save_dir)


def test_training_logs_every_interval_and_checkpoints(job):
    folder = job_folder(job)
    train = records(folder.metrics_file(MetricStream.TRAIN))
    assert [r["step"] for r in train] == [2, 4, 6]
    assert all(r["loss"] > 0 for r in train)
    assert train[0]["examples_per_second"] == pytest.approx(
        2 * train[0]["examples_per_second_per_worker"]
    )
    assert complete_steps(folder.checkpoints) == [3, 6]
    assert list(folder.tensorboard_dir(MetricStream.TRAIN).glob("events.out.tfevents.*"))


def test_partitions_evaluate_their_own_tasks(job):
    evaluations = by_step(job_folder(job).metrics_file(MetricStream.EVAL))
    assert list(evaluations) == [3, 6]
    last = evaluations[6]
    for task in TASKS:
        assert math.isfinite(last[f"all_tasks/auroc/{task}"])
        assert f"all_tasks/rce/{task}/first_column_zero" in last
    assert "favorited_downsampled/auroc/recap.engagement.is_favorited" in last
    assert not any(key.startswith("favorited_downsampled/") and "is_replied" in key for key in last)
    # The whole partition, each row once, although the ranks' shares differ in size.
    assert last["all_tasks/examples"] == 300
    # Downsampled negatives weigh 1 / 0.5: the weighted mean label is lower.
    assert (
        last["favorited_downsampled/mean_label/recap.engagement.is_favorited"]
        < last["all_tasks/mean_label/recap.engagement.is_favorited"]
    )


def test_evaluator_followed_checkpoints_written_after_it_started(job):
    log = (job / "evaluator.log").read_text()
    assert "the final step 6 is evaluated: stopping" in log
    folder = job_folder(job)
    for step in (3, 6):
        checkpoint = checkpoint_folder(folder.checkpoints, step)
        for partition in ("all_tasks", "favorited_downsampled"):
            results = folder.evaluation_results(checkpoint, partition)
            assert json.loads(results.read_text())["step"] == step
    followed = by_step(folder.metrics_file(MetricStream.EVALUATOR))
    trained = by_step(folder.metrics_file(MetricStream.EVAL))
    assert list(followed) == [3, 6]
    # The model has batch norm: the checkpoint holds the statistics the ranks evaluated with.
    for step in (3, 6):
        metrics = [key for key in trained[step] if "/" in key and not key.endswith("/seconds")]
        assert "all_tasks/auroc/recap.engagement.is_favorited" in metrics
        for key in metrics:
            expected = pytest.approx(trained[step][key], abs=1e-6, nan_ok=True)
            assert followed[step][key] == expected, key
    # Restarted after the job is done, it has nothing to wait for.
    started = time.monotonic()
    again = run([sys.executable, *MAIN, "--mode", "evaluate"], job)
    assert "the final step 6 is evaluated: stopping" in again.stderr
    assert time.monotonic() - started < 60


def test_inference_writes_every_input_row_exactly_once(job):
    folder = job_folder(job)
    files = folder.predictions_files(
        folder.predictions_dir(checkpoint_folder(folder.checkpoints, 6))
    )
    assert [f.name for f in files] == ["predictions-0-of-2.parquet", "predictions-1-of-2.parquet"]
    marker = json.loads(folder.predictions_marker(files[0].parent).read_text())
    assert marker["rows"] == 300 and marker["files"] == 2
    assert not folder.partial_predictions_files(files[0].parent)
    predicted = pq.read_table(files)
    sources = sorted((job / "data" / "validation").glob("*.parquet"))
    assert predicted.num_rows == 300
    # Every (file, row) exactly once, with that row's ids, labels and passthrough feature.
    files, rows_in_file = predicted["source_file"].to_pylist(), predicted["source_row"].to_pylist()
    places = list(zip(files, rows_in_file, strict=True))
    assert len(set(places)) == 300
    rows = {str(path): pq.read_table(path).to_pylist() for path in sources}
    assert sorted(places) == sorted((path, row) for path in rows for row in range(len(rows[path])))

    def value(row: dict, name: str):
        data = row[name]
        return data[0] if isinstance(data, list) else data

    for prediction in predicted.to_pylist():
        source = rows[prediction["source_file"]][prediction["source_row"]]
        assert prediction["tweet_id"] == value(source, "meta.tweet_id")
        assert prediction[PASSTHROUGH] == value(source, PASSTHROUGH)
        for task in TASKS:
            assert prediction[f"label/{task}"] == value(source, task)
            assert prediction[f"weight/{task}"] == 1.0  # all_tasks is not downsampled

    def column(name: str):
        return predicted.column(name).to_numpy()

    # The published weights of the model's tasks.
    expected = (
        0.5 * column("calibrated_probability/recap.engagement.is_favorited")
        + 13.5 * column("calibrated_probability/recap.engagement.is_replied")
        + 0.005 * column("calibrated_probability/recap.engagement.is_video_playback_50")
    )
    assert column("score") == pytest.approx(expected, rel=1e-6)


def test_scoring_the_predictions_reproduces_the_in_training_metrics(job):
    scored = metrics_from_json(json.loads((job / "scored.json").read_text()))
    trained = by_step(job_folder(job).metrics_file(MetricStream.EVAL))[6]
    prefix = "all_tasks/"
    expected = {
        key.removeprefix(prefix): value
        for key, value in trained.items()
        if key.startswith(prefix) and not key.endswith("/seconds") and key != f"{prefix}loss"
    }
    assert "auroc/recap.engagement.is_favorited/first_column_zero" in expected
    assert scored.keys() == expected.keys()
    # Inference reads in file order, evaluation shuffled: a row's float32 forward can round
    # differently beside other rows (~1e-8 relatively). RCE = 100 (1 - CE / CE_0) magnifies that
    # by 100 CE / |CE_0 - CE| (~100x for this barely trained model), so RCE and NRCE agree to
    # 1e-5 relatively; every other metric to 1e-6.
    for key, value in expected.items():
        if math.isnan(value):  # e.g. precision with no positive prediction
            assert math.isnan(scored[key]), key
            continue
        magnified = key.startswith(("rce/", "nrce/"))
        tolerance = {"rel": 1e-5} if magnified else {"abs": 1e-6}
        assert scored[key] == pytest.approx(value, **tolerance), key


def test_scoring_without_predictions_is_one_line(job, tmp_path):
    result = subprocess.run(
        [*SCORE, "--predictions", str(tmp_path)],
        cwd=REPO,
        env=environment(job),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"error: no predictions files (predictions-*-of-*.parquet) in {tmp_path}"
    )


def test_export_reproduces_the_trainers_predictions(job):
    folder = job_folder(job)
    step_6 = checkpoint_folder(folder.checkpoints, 6)
    program = torch.export.load(str(folder.export_file(step_6))).module()
    config = config_for(job)
    tables = [table.name for table in config.model.large_embeddings.tables]
    predicted = pq.read_table(folder.predictions_files(folder.predictions_dir(step_6)))
    by_tweet = {
        tweet: row
        for tweet, row in zip(predicted["tweet_id"].to_pylist(), predicted.to_pylist(), strict=True)
    }
    dataset = build_dataset(
        config.validation_data["all_tasks"],
        options=ReadOptions.inference(),
        tasks=list(config.model.tasks),
        large_embeddings=config.model.large_embeddings,
    )
    batch = next(iter(dataset))
    inputs, sparse_ids = servable_inputs(batch, tables)
    outputs = program(inputs, sparse_ids)
    tweets = batch.extra_features["meta__tweet_id"].reshape(-1).tolist()
    for index, task in enumerate(config.model.tasks):
        trainer = torch.tensor([by_tweet[t][f"probability/{task}"] for t in tweets])
        torch.testing.assert_close(outputs["probabilities"][:, index], trainer, rtol=0, atol=1e-5)


def test_two_torchrun_agents_train_as_one_job(tmp_path):
    generate(tmp_path)
    port = free_port()
    agent = [
        *TORCHRUN,
        "--nnodes",
        "2",
        "--nproc_per_node",
        "1",
        "--rdzv-backend",
        "c10d",
        "--rdzv-endpoint",
        f"127.0.0.1:{port}",
        "--rdzv-id",
        "two-nodes",
        *MAIN,
        "training.num_train_steps=2",
        "training.num_eval_steps=0",
    ]
    agents = [
        subprocess.Popen(
            agent,
            cwd=REPO,
            env=environment(tmp_path),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [process.communicate(timeout=240)[0] for process in agents]
    assert [process.returncode for process in agents] == [0, 0], outputs[0][-3000:]
    logged = records(job_folder(tmp_path).metrics_file(MetricStream.TRAIN))
    assert logged[-1]["step"] == 2
    assert logged[-1]["examples_per_second"] == pytest.approx(
        2 * logged[-1]["examples_per_second_per_worker"]
    )
    plan = "".join(outputs)
    assert "meta__user_id" in plan and "table_wise" in plan


def test_evaluator_stops_when_no_checkpoint_comes(tmp_path):
    generate(tmp_path)
    started = time.monotonic()
    result = run(
        [sys.executable, *MAIN, "--mode", "evaluate", "training.eval_timeout_in_s=2"], tmp_path
    )
    assert "no new checkpoint for 2 s: stopping" in result.stderr
    assert time.monotonic() - started < 60


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["training.num_train_stepz=3"], "training.num_train_stepz: unknown field"),
        (["--mode", "inference"], "no complete checkpoint in"),
        (["--mode", "evaluate"], "validation_data.all_tasks: inputs: no file matches the glob"),
    ],
)
def test_a_mistake_is_one_line_and_exit_2(tmp_path, arguments, message):
    result = subprocess.run(
        [sys.executable, *MAIN, *arguments],
        cwd=REPO,
        env=environment(tmp_path),
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr


def test_overrides_before_and_after_the_mode_reach_the_config(tmp_path, monkeypatch):
    monkeypatch.setenv("TML_TEST_RUN", str(tmp_path))
    args = parse_command_line(
        build_argument_parser(),
        [
            "training.num_train_steps=3",
            "--mode",
            "evaluate",
            "--config_path",
            str(CONFIG),
            "model.large_embeddings.tables[0].embedding_dim=8",
        ],
    )
    assert args.mode == "evaluate"
    config = load_config_from_yaml(RecapConfig, args.config_path, args.overrides)
    assert config.training.num_train_steps == 3
    assert config.model.large_embeddings.tables[0].embedding_dim == 8
