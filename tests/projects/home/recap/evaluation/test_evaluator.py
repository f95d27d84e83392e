from projects.home.recap.evaluation.evaluator import format_summary
from projects.home.recap.evaluation.metric_sets import METRICS_OF_SET, MetricSet

TASKS = ["recap.engagement.is_favorited", "recap.engagement.is_replied"]


def test_the_console_table_has_a_column_for_every_metric_of_the_set():
    names = METRICS_OF_SET[MetricSet.ALL]
    metrics = {"loss": 0.3, "examples": 100.0}
    for index, name in enumerate(names):
        for task in TASKS:
            metrics[f"{name}/{task}"] = index / 10
            metrics[f"{name}/{task}/country=1"] = 9.0  # a stratifier slice stays out
    header, first, second = format_summary(metrics, TASKS).splitlines()
    assert header.split() == ["task", *names]
    assert first.split() == [TASKS[0], *(f"{index / 10:.4f}" for index in range(len(names)))]
    assert second.split()[0] == TASKS[1]


def test_a_task_without_metrics_has_no_row_and_a_missing_value_is_a_dash():
    metrics = {f"rce/{TASKS[0]}": 1.5, f"mean_label/{TASKS[1]}": 0.25}
    header, first, second = format_summary(metrics, [*TASKS, "other"]).splitlines()
    assert header.split() == ["task", "rce", "mean_label"]
    assert first.split() == [TASKS[0], "1.5000", "-"]
    assert second.split() == [TASKS[1], "-", "0.2500"]
