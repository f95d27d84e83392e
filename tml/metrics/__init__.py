"""Metrics of binary-task predictions, as torchmetrics ``Metric`` subclasses that sync across ranks.

Every metric is updated with ``(predictions, labels, weights=None)`` and computes a 0-dim float64
tensor, NaN where the data leaves it undefined. ``METRICS`` maps each metric's name to its class.
"""

from tml.metrics.auroc import AUROC
from tml.metrics.binary import BinaryMetric
from tml.metrics.cross_entropy import NRCE, RCE
from tml.metrics.mean import MeanLabel, MeanPrediction
from tml.metrics.precision_recall import Precision, Recall

METRICS: dict[str, type[BinaryMetric]] = {
    "auroc": AUROC,
    "rce": RCE,
    "nrce": NRCE,
    "mean_label": MeanLabel,
    "mean_prediction": MeanPrediction,
    "precision": Precision,
    "recall": Recall,
}

__all__ = [
    "AUROC",
    "METRICS",
    "NRCE",
    "RCE",
    "BinaryMetric",
    "MeanLabel",
    "MeanPrediction",
    "Precision",
    "Recall",
]
