"""The promotion gate: does the candidate replace the promoted model?

Both models' metrics come from the same held-out slice. Each rule gives checks; the candidate
passes when every check does. A non-finite value (NaN, inf) fails its check whoever it belongs to:
a comparison with NaN says nothing, and a promoted model must never be replaced on such grounds.
Without a promoted model the checks only ask for finite values.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

from projects.home.recap.retrain.config import GateConfig, PerTaskRule, WeightedRule


@dataclasses.dataclass(frozen=True)
class Check:
    """One comparison of the gate."""

    name: str  # e.g. "auroc/recap.engagement.is_favorited" or "weighted rce"
    candidate: float
    incumbent: float | None
    threshold: float | None  # the least value the candidate needed (None: only finiteness)
    passed: bool

    def describe(self) -> str:
        if not math.isfinite(self.candidate):
            return f"{self.name}: candidate {self.candidate} is not finite"
        if self.incumbent is not None and not math.isfinite(self.incumbent):
            return f"{self.name}: promoted model's {self.incumbent} is not finite"
        if self.threshold is None:
            return f"{self.name}: {self.candidate:.4f}"
        relation = ">=" if self.passed else "<"
        return (
            f"{self.name}: {self.candidate:.4f} {relation} {self.threshold:.4f} "
            f"(promoted {self.incumbent:.4f})"
        )


@dataclasses.dataclass(frozen=True)
class Verdict:
    """The gate's decision and the checks behind it."""

    passed: bool
    checks: tuple[Check, ...]

    def reason(self) -> str:
        """The failed checks (or, when it passed, how many checks)."""
        failed = [check.describe() for check in self.checks if not check.passed]
        if not failed:
            return f"all {len(self.checks)} checks passed"
        return "; ".join(failed)

    def to_json(self) -> dict[str, Any]:
        # Strict JSON: non-finite values as their names (see tml.observability.metric_json).
        def value(number: float | None) -> float | str | None:
            return number if number is None or math.isfinite(number) else str(number)

        return {
            "passed": self.passed,
            "reason": self.reason(),
            "checks": [
                {
                    "name": check.name,
                    "candidate": value(check.candidate),
                    "incumbent": value(check.incumbent),
                    "threshold": value(check.threshold),
                    "passed": check.passed,
                }
                for check in self.checks
            ],
        }


def _value(metrics: Mapping[str, float], name: str) -> float:
    # A metric the evaluation did not produce cannot pass either.
    value = metrics.get(name, math.nan)
    return float(value) if value is not None else math.nan


def _compare(name: str, candidate: float, incumbent: float | None, allowance: float) -> Check:
    """``candidate >= incumbent - allowance``, with every value finite."""
    if incumbent is None:
        return Check(name, candidate, None, None, math.isfinite(candidate))
    threshold = incumbent - allowance
    finite = math.isfinite(candidate) and math.isfinite(incumbent)
    return Check(name, candidate, incumbent, threshold, finite and candidate >= threshold)


def per_task_checks(
    rule: PerTaskRule,
    tasks: Sequence[str],
    candidate: Mapping[str, float],
    incumbent: Mapping[str, float] | None,
) -> list[Check]:
    """One check per gated task: not worse by more than ``max_drop``."""
    checks = []
    for task in tasks:
        name = f"{rule.metric.value}/{task}"
        theirs = _value(incumbent, name) if incumbent is not None else None
        checks.append(_compare(name, _value(candidate, name), theirs, rule.max_drop))
    return checks


def weighted_mean(metric: str, weights: Mapping[str, float], metrics: Mapping[str, float]) -> float:
    """The mean of ``metric`` over the weighted tasks, weighted by the absolute weights."""
    total = sum(abs(weight) for weight in weights.values())
    if total == 0:
        return math.nan
    return sum(abs(w) * _value(metrics, f"{metric}/{task}") for task, w in weights.items()) / total


def weighted_check(
    rule: WeightedRule,
    weights: Mapping[str, float],
    candidate: Mapping[str, float],
    incumbent: Mapping[str, float] | None,
) -> Check:
    """The weighted mean must gain at least ``min_gain``."""
    name = f"weighted {rule.metric.value}"
    ours = weighted_mean(rule.metric.value, weights, candidate)
    theirs = weighted_mean(rule.metric.value, weights, incumbent) if incumbent is not None else None
    return _compare(name, ours, theirs, -rule.min_gain)


def judge(
    gate: GateConfig,
    *,
    tasks: Sequence[str],
    weights: Mapping[str, float],
    candidate: Mapping[str, float],
    incumbent: Mapping[str, float] | None,
) -> Verdict:
    """The gate's verdict on the candidate's held-out metrics against the promoted model's.

    Args:
        gate: The rules.
        tasks: The tasks of the per-task rule.
        weights: Task -> ranking weight, for the weighted rule.
        candidate: The candidate's metrics (``<metric>/<task>`` names).
        incumbent: The promoted model's metrics on the same slice, or None when none is
            promoted.
    """
    checks: list[Check] = []
    if gate.per_task is not None:
        checks.extend(per_task_checks(gate.per_task, tasks, candidate, incumbent))
    if gate.weighted is not None:
        checks.append(weighted_check(gate.weighted, weights, candidate, incumbent))
    return Verdict(passed=all(check.passed for check in checks), checks=tuple(checks))
