import json
import math

from tml.observability.metric_json import metrics_from_json, metrics_to_json


def test_non_finite_metrics_round_trip_through_strict_json():
    metrics = {"auroc": 0.75, "precision": math.nan, "rce": -math.inf, "ratio": math.inf, "n": 3}
    text = json.dumps(metrics_to_json(metrics), allow_nan=False)
    assert json.loads(text) == {
        "auroc": 0.75,
        "precision": "nan",
        "rce": "-inf",
        "ratio": "inf",
        "n": 3,
    }
    back = metrics_from_json(json.loads(text))
    assert math.isnan(back.pop("precision"))
    assert back == {"auroc": 0.75, "rce": -math.inf, "ratio": math.inf, "n": 3}


def test_other_strings_stay_strings():
    assert metrics_from_json({"name": "recap", "note": "nanometre"}) == {
        "name": "recap",
        "note": "nanometre",
    }
