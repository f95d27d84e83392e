import math

import pytest

from projects.home.recap.evaluation.report import latest_results
from projects.home.recap.job_folder import JobFolder, MetricStream
from tml.core.errors import UserInputError
from tml.observability.metric_loggers import build_metric_loggers


def log_evaluations(job: JobFolder, stream: MetricStream, records: list[tuple[int, dict]]) -> None:
    loggers = build_metric_loggers(
        name=stream.value,
        jsonl_path=job.metrics_file(stream),
        tensorboard_dir=job.root / "tensorboard",
        backends=("jsonl",),
    )
    for step, metrics in records:
        loggers.log(step, metrics)
    loggers.close()


def test_the_newest_step_merges_every_partitions_record_and_reads_nan_back(tmp_path):
    job = JobFolder(tmp_path)
    log_evaluations(
        job,
        MetricStream.EVAL,
        [
            (10, {"all_tasks/auroc/fav": 0.6}),
            (10, {"recent/auroc/fav": 0.55}),
            (20, {"all_tasks/auroc/fav": 0.7, "all_tasks/precision/fav": math.nan}),
            (20, {"recent/auroc/fav": 0.65}),
        ],
    )
    step, metrics = latest_results(job)
    assert step == 20
    assert math.isnan(metrics.pop("all_tasks/precision/fav"))
    assert metrics == {"all_tasks/auroc/fav": 0.7, "recent/auroc/fav": 0.65}


def test_a_job_without_evaluations_is_a_clear_error(tmp_path):
    with pytest.raises(UserInputError, match="no evaluation results in"):
        latest_results(JobFolder(tmp_path))
