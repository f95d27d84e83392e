import json
import logging
import math

from tml.observability.metric_loggers import build_metric_loggers


def test_main_rank_writes_jsonl_tensorboard_and_console(tmp_path, caplog):
    loggers = build_metric_loggers(
        name="train",
        jsonl_path=tmp_path / "train.jsonl",
        tensorboard_dir=tmp_path / "tensorboard" / "train",
    )
    with caplog.at_level(logging.INFO):
        loggers.log(10, {"loss": 0.5, "lr/backbone": 1e-3, "auroc": math.nan})
        loggers.log(20, {"loss": 0.25})
    loggers.close()
    lines = [json.loads(line) for line in (tmp_path / "train.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [10, 20]
    assert lines[0]["loss"] == 0.5 and lines[0]["auroc"] == "nan"
    assert list((tmp_path / "tensorboard" / "train").glob("events.out.tfevents.*"))
    assert "[train] step 10 | loss 0.5 | lr/backbone 0.001" in caplog.text


def test_other_ranks_write_nothing(tmp_path):
    loggers = build_metric_loggers(
        name="train", jsonl_path=tmp_path / "a.jsonl", tensorboard_dir=tmp_path, is_main=False
    )
    loggers.log(1, {"loss": 1.0})
    loggers.close()
    assert list(tmp_path.iterdir()) == []
