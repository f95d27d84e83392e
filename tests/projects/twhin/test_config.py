"""The original TwHIN config loads unchanged; the checker prints it or one error line."""

from __future__ import annotations

from pathlib import Path

import pytest

from projects.twhin.config import TwhinConfig, main
from projects.twhin.model.config import Operator
from tml.core.config import ConfigError, load_config_from_yaml

REPO = Path(__file__).resolve().parents[3]
ORIGINAL = REPO / "projects/twhin/config/local.yaml"
TINY = REPO / "projects/twhin/config/tiny_cpu.yaml"


def test_the_original_local_config_loads_unchanged():
    config = load_config_from_yaml(TwhinConfig, ORIGINAL)
    assert config.training.num_epochs == 5
    assert config.model.table_rows() == {"user": 424_241, "tweet": 72_543}
    assert [r.name for r in config.model.relations] == ["fav", "reply", "retweet", "magic_recs"]
    assert all(r.operator == Operator.TRANSLATION for r in config.model.relations)
    assert config.model.embeddings.tables[1].optimizer.sgd.lr == 0.005
    assert config.validation_data.offset == 9990 and config.train_data.in_batch_negatives == 10


def test_the_shipped_cpu_config_loads(monkeypatch, tmp_path):
    monkeypatch.setenv("TML_RUN_DIR", str(tmp_path))
    config = load_config_from_yaml(TwhinConfig, TINY)
    assert config.train_data.data_root.startswith(str(tmp_path))


def test_checker_prints_the_config_or_one_line(capsys):
    assert main(["--config_path", str(ORIGINAL)]) == 0
    assert "magic_recs" in capsys.readouterr().out
    assert main(["--config_path", str(ORIGINAL), "model.relations.0.lhs=author"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "'author' is not a table" in error


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.embeddings.tables.1.embedding_dim=8", "every entity type needs the same width"),
        ("model.embeddings.tables.0.optimizer.adam={'lr': 0.1}", "exactly one of"),
        ("model.embeddings.tables.0.sharding_types=['data_parallel']", "no fused optimizer"),
    ],
)
def test_bad_configs_are_rejected_at_load(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config_from_yaml(TwhinConfig, ORIGINAL, [override])
