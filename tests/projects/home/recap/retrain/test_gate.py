"""The promotion gate: per-task and weighted rules, and NaN never passes."""

from __future__ import annotations

import math

import pytest

from projects.home.recap.retrain.config import GateConfig, PerTaskRule, WeightedRule
from projects.home.recap.retrain.gate import judge, weighted_mean

TASKS = ["fav", "reply"]
WEIGHTS = {"fav": 0.5, "reply": -13.5}


def metrics(auroc_fav: float, auroc_reply: float, rce_fav: float, rce_reply: float):
    return {
        "auroc/fav": auroc_fav,
        "auroc/reply": auroc_reply,
        "rce/fav": rce_fav,
        "rce/reply": rce_reply,
    }


GATE = GateConfig(
    per_task=PerTaskRule(tasks=TASKS, max_drop=0.01), weighted=WeightedRule(min_gain=0.5)
)
INCUMBENT = metrics(0.70, 0.80, 10.0, 20.0)


def verdict(candidate, incumbent=INCUMBENT, gate=GATE):
    return judge(gate, tasks=TASKS, weights=WEIGHTS, candidate=candidate, incumbent=incumbent)


def test_a_better_candidate_passes_and_a_small_drop_is_allowed():
    result = verdict(metrics(0.695, 0.81, 10.0, 21.0))
    assert result.passed and result.reason() == "all 3 checks passed"


def test_a_drop_beyond_max_drop_fails_naming_the_task():
    result = verdict(metrics(0.68, 0.81, 10.0, 21.0))
    assert not result.passed
    assert result.reason().startswith("auroc/fav: 0.6800 < 0.6900 (promoted 0.7000)")


def test_the_weighted_rule_weighs_by_absolute_ranking_weight():
    # reply's weight (-13.5) dominates: a worse fav and a better reply still gain.
    assert weighted_mean("rce", WEIGHTS, metrics(0, 0, 0.0, 28.0)) == pytest.approx(27.0)
    gained = verdict(metrics(0.70, 0.80, 0.0, 21.0))
    lost = verdict(metrics(0.70, 0.80, 30.0, 19.0))
    assert gained.passed
    assert not lost.passed and "weighted rce" in lost.reason()


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_a_non_finite_candidate_value_never_passes(value):
    # +inf would compare as better; it still fails.
    result = verdict(metrics(value, 0.81, 10.0, 21.0))
    assert not result.passed and "is not finite" in result.reason()


def test_a_non_finite_incumbent_value_never_lets_a_candidate_pass():
    result = verdict(metrics(0.9, 0.9, 30.0, 30.0), incumbent=metrics(math.nan, 0.8, 10.0, 20.0))
    assert not result.passed and "promoted model's nan is not finite" in result.reason()


def test_a_missing_metric_fails():
    candidate = metrics(0.8, 0.9, 11.0, 21.0)
    del candidate["auroc/reply"]
    assert not verdict(candidate).passed


def test_without_an_incumbent_only_finite_values_are_asked_for():
    assert verdict(metrics(0.1, 0.1, -50.0, -50.0), incumbent=None).passed
    assert not verdict(metrics(0.1, math.nan, -50.0, -50.0), incumbent=None).passed


def test_the_verdict_is_strict_json():
    checks = verdict(metrics(math.nan, 0.81, 10.0, 21.0)).to_json()["checks"]
    assert checks[0]["candidate"] == "nan" and checks[1]["candidate"] == 0.81


def test_a_gate_without_rules_is_rejected():
    with pytest.raises(ValueError, match="without rules would promote any candidate"):
        GateConfig(per_task=None, weighted=None)
