"""The retraining section of the job config: loaded from the same YAML, checked against the
model's tasks and metric set; configs without it load unchanged."""

from __future__ import annotations

from pathlib import Path

import pytest

from projects.home.recap.config import RecapConfig
from tml.core.config import ConfigError, load_config_from_yaml

CONFIG = Path(__file__).parents[1] / "fixtures" / "retrain.yaml"
SHIPPED = Path(__file__).parents[5] / "projects" / "home" / "recap" / "config"


def load(*overrides: str) -> RecapConfig:
    return load_config_from_yaml(RecapConfig, CONFIG, overrides)


def test_the_section_loads_and_shipped_configs_load_without_it(monkeypatch):
    monkeypatch.setenv("TML_TEST_RUN", "/tmp/run")
    assert load().retraining.launch.nproc_per_node == 2
    assert load_config_from_yaml(RecapConfig, SHIPPED / "local_cpu.yaml").retraining is None


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "retraining.gate.per_task.tasks=[recap.engagement.is_bookmarked]",
            "retraining.gate.per_task.tasks[0]: 'recap.engagement.is_bookmarked' is not a model "
            "task",
        ),
        (
            "retraining.gate.per_task.metric=nrce",
            "retraining.gate.per_task.metric: which_metrics 'auroc_rce' does not compute nrce",
        ),
        ("retraining.holdout_partition=later", "retraining.holdout_partition: 'later' is not"),
        ("retraining.evaluation_batches=0", "0 batches would evaluate nothing"),
        ("retraining.gate.weighted.metric=loss", "retraining.gate.weighted.metric"),
    ],
)
def test_mistakes_are_one_line_naming_the_field(monkeypatch, override, message):
    monkeypatch.setenv("TML_TEST_RUN", "/tmp/run")
    with pytest.raises(ConfigError, match=r"retrain\.yaml: ") as raised:
        load(override)
    assert message in str(raised.value) and "\n" not in str(raised.value)
