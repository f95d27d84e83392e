"""Named sets of evaluation metrics, chosen by ``which_metrics`` in the job config."""

from __future__ import annotations

import enum


class MetricSet(enum.StrEnum):
    """Named sets of evaluation metrics, chosen by ``RecapConfig.which_metrics``."""

    ALL = "all"
    AUROC_RCE = "auroc_rce"
    CALIBRATION = "calibration"
    CONSTANT_MEMORY = "constant_memory"


# The metrics (names of tml.metrics.METRICS) each set computes for every evaluated task.
# constant_memory leaves out AUROC and NRCE, which keep every evaluated example.
METRICS_OF_SET: dict[MetricSet, tuple[str, ...]] = {
    MetricSet.ALL: (
        "auroc",
        "rce",
        "nrce",
        "mean_label",
        "mean_prediction",
        "precision",
        "recall",
    ),
    MetricSet.AUROC_RCE: ("auroc", "rce"),
    MetricSet.CALIBRATION: ("rce", "nrce", "mean_label", "mean_prediction"),
    MetricSet.CONSTANT_MEMORY: ("rce", "mean_label", "mean_prediction", "precision", "recall"),
}
