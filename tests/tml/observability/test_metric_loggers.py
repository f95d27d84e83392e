import json
import logging
import math

import pytest

from tml.observability.metric_loggers import build_metric_loggers
from tml.storage import as_path


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


@pytest.mark.parametrize("where", ["local", "bucket"])
def test_a_resumed_job_logs_each_step_once(where, tmp_path, request):
    root = as_path(request.getfixturevalue("s3_bucket")) if where == "bucket" else tmp_path
    jsonl = root / "train.jsonl"

    def open_loggers():
        return build_metric_loggers(
            name="train", jsonl_path=jsonl, tensorboard_dir=tmp_path / "tensorboard"
        )

    killed = open_loggers()
    for step in (10, 20, 30):
        killed.log(step, {"loss": 1.0})
    killed.close()
    if where == "local":  # a kill while writing cuts the last record short
        with open(jsonl, "a") as file:
            file.write('{"step": 40, "lo')
    resumed = open_loggers()  # from the checkpoint at step 20
    resumed.discard_after(20)
    resumed.log(30, {"loss": 0.5})
    resumed.close()
    records = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert [(record["step"], record["loss"]) for record in records] == [
        (10, 1.0),
        (20, 1.0),
        (30, 0.5),
    ]
