"""The ranker's evaluation metrics: every selected metric per task and per stratifier slice.

:func:`build_metrics` makes a :class:`MultiTaskMetrics` for one evaluation (e.g. one validation
partition). It is updated with the model's outputs dict and computes flat names::

    <metric>/<task>                       e.g. auroc/recap.engagement.is_favorited
    <metric>/<task>/<stratifier name>     only examples whose stratifier column equals its value

Every metric syncs across ranks when computed, so every rank must call :meth:`compute`, and all
ranks get the same numbers.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import torch

from projects.home.recap.evaluation.metric_sets import METRICS_OF_SET, MetricSet
from projects.home.recap.model.config import StratifierConfig
from tml.metrics import METRICS, BinaryMetric
from tml.metrics.precision_recall import DEFAULT_THRESHOLD

PredictionKey = Literal["probabilities", "calibrated_probabilities"]
_PREDICTION_KEYS: tuple[str, ...] = ("probabilities", "calibrated_probabilities")


class MultiTaskMetrics(torch.nn.Module):
    """Metrics of several tasks, each also sliced by stratifiers; a module so ``.to()`` works.

    Build it with :func:`build_metrics`.

    Args:
        tasks: The model's tasks, in the column order of its outputs.
        metrics: One factory per metric name, making a fresh metric.
        evaluation_tasks: The tasks evaluated (a subset of ``tasks``).
        stratifiers: Slices evaluated besides all examples, one per column of
            ``outputs["stratifiers"]``, in that order.
        prediction_key: Which outputs entry holds the predictions.
    """

    def __init__(
        self,
        tasks: Sequence[str],
        metrics: Mapping[str, Callable[[], BinaryMetric]],
        evaluation_tasks: Sequence[str],
        stratifiers: Sequence[StratifierConfig],
        prediction_key: PredictionKey,
    ) -> None:
        super().__init__()
        self.tasks = list(tasks)
        self.evaluation_tasks = list(evaluation_tasks)
        self.stratifiers = list(stratifiers)
        self.prediction_key = prediction_key
        self._columns = [self.tasks.index(task) for task in self.evaluation_tasks]
        # Slice 0 is every example; slice s > 0 is stratifier s - 1.
        slice_suffixes = [""] + [f"/{stratifier.name}" for stratifier in self.stratifiers]
        # _slots[slice][task position] lists the metrics updated with that slice of that task.
        self._slots: list[list[list[BinaryMetric]]] = [
            [[] for _ in self.evaluation_tasks] for _ in slice_suffixes
        ]
        # Construction order, identical on every rank, so that the collectives of compute line up.
        self._named: list[tuple[str, BinaryMetric]] = []
        for metric_name, make_metric in metrics.items():
            for position, task in enumerate(self.evaluation_tasks):
                for slice_index, suffix in enumerate(slice_suffixes):
                    metric = make_metric()
                    self._named.append((f"{metric_name}/{task}{suffix}", metric))
                    self._slots[slice_index][position].append(metric)
        self._metrics = torch.nn.ModuleList(metric for _, metric in self._named)

    @property
    def metric_names(self) -> list[str]:
        """The names :meth:`compute` returns, in its order."""
        return [name for name, _ in self._named]

    def update(self, outputs: Mapping[str, torch.Tensor]) -> None:
        """Adds a batch of model outputs.

        Args:
            outputs: The model's outputs: ``outputs[prediction_key]`` and ``labels`` of shape
                [batch, len(tasks)] in the model's task order, optional ``weights`` of that
                shape (absent: 1), and, when stratifiers are configured, ``stratifiers`` of
                shape [batch, len(stratifiers)] with integer values.

        Raises:
            KeyError: if a needed entry is missing.
            ValueError: if a shape or dtype is wrong.
        """
        predictions = self._required(outputs, self.prediction_key)
        labels = self._required(outputs, "labels")
        weights = outputs.get("weights")
        num_tasks = len(self.tasks)
        _check_shape(self.prediction_key, predictions, None, num_tasks, "number of model tasks")
        batch = predictions.shape[0]
        _check_shape("labels", labels, batch, num_tasks, "number of model tasks")
        if weights is None:
            weights = torch.ones_like(predictions)
        _check_shape("weights", weights, batch, num_tasks, "number of model tasks")
        columns = torch.tensor(self._columns, device=predictions.device)
        slices = [(predictions, labels, weights)]
        if self.stratifiers:
            stratifier_values = self._required(outputs, "stratifiers")
            _check_shape(
                "stratifiers",
                stratifier_values,
                batch,
                len(self.stratifiers),
                "number of stratifiers",
            )
            if torch.is_floating_point(stratifier_values):
                raise ValueError(
                    "outputs['stratifiers'] must hold integer feature values, got "
                    f"{stratifier_values.dtype}"
                )
            for index, stratifier in enumerate(self.stratifiers):
                selected = stratifier_values[:, index] == stratifier.value
                slices.append((predictions[selected], labels[selected], weights[selected]))
        for slots, (slice_predictions, slice_labels, slice_weights) in zip(
            self._slots, slices, strict=True
        ):
            slice_predictions = slice_predictions.index_select(1, columns)
            slice_labels = slice_labels.index_select(1, columns)
            slice_weights = slice_weights.index_select(1, columns)
            for position, task_metrics in enumerate(slots):
                for metric in task_metrics:
                    metric.update(
                        slice_predictions[:, position],
                        slice_labels[:, position],
                        slice_weights[:, position],
                    )

    def compute(self) -> dict[str, float]:
        """Every metric over all examples seen on all ranks, by flat name (NaN: undefined).

        A collective operation: every rank must call it, after the same builds.
        """
        return {name: float(metric.compute()) for name, metric in self._named}

    def reset(self) -> None:
        """Forgets every example seen, to evaluate anew."""
        for metric in self._metrics:
            metric.reset()

    @staticmethod
    def _required(outputs: Mapping[str, torch.Tensor], key: str) -> torch.Tensor:
        if key not in outputs:
            raise KeyError(
                f"the model outputs have no '{key}' entry, which the metrics need; they have "
                f"{sorted(outputs)}"
            )
        return outputs[key]


def build_metrics(
    tasks: Sequence[str],
    which_metrics: MetricSet | None = None,
    stratifiers: Sequence[StratifierConfig] | None = None,
    *,
    evaluation_tasks: Sequence[str] | None = None,
    prediction_key: PredictionKey = "probabilities",
    threshold: float = DEFAULT_THRESHOLD,
    **metric_kwargs: Any,
) -> MultiTaskMetrics:
    """Builds the metrics of one evaluation.

    Args:
        tasks: The model's tasks (``model.tasks``), in the column order of its outputs.
        which_metrics: The metric set (``RecapConfig.which_metrics``); None means all metrics.
        stratifiers: ``model.stratifiers``: slices evaluated besides all examples.
        evaluation_tasks: Tasks to evaluate (a partition's ``evaluation_tasks``); None or empty
            means every model task.
        prediction_key: Outputs entry with the predictions: ``probabilities``, or
            ``calibrated_probabilities`` for a partition whose downsampling asks for them.
        threshold: Decision threshold of precision and recall.
        **metric_kwargs: Passed to every ``torchmetrics.Metric`` (e.g. ``compute_on_cpu=True``
            to keep AUROC's and NRCE's stored examples in host memory).

    Raises:
        ValueError: on an unknown task, prediction key or metric set, or duplicate names.
    """
    tasks = list(tasks)
    if not tasks:
        raise ValueError("tasks must name at least one model task")
    _check_unique("tasks", tasks)
    evaluation_tasks = list(evaluation_tasks or tasks)
    _check_unique("evaluation_tasks", evaluation_tasks)
    unknown = [task for task in evaluation_tasks if task not in tasks]
    if unknown:
        raise ValueError(f"evaluation_tasks {unknown} are not model tasks; the tasks are {tasks}")
    stratifiers = list(stratifiers or [])
    _check_unique("stratifier names", [stratifier.name for stratifier in stratifiers])
    if prediction_key not in _PREDICTION_KEYS:
        raise ValueError(
            f"prediction_key must be one of {_PREDICTION_KEYS}, got {prediction_key!r}"
        )
    metric_set = MetricSet(which_metrics) if which_metrics is not None else MetricSet.ALL
    options = {"precision": {"threshold": threshold}, "recall": {"threshold": threshold}}
    factories = {
        name: functools.partial(METRICS[name], **options.get(name, {}), **metric_kwargs)
        for name in METRICS_OF_SET[metric_set]
    }
    return MultiTaskMetrics(tasks, factories, evaluation_tasks, stratifiers, prediction_key)


def _check_shape(
    key: str, tensor: torch.Tensor, batch: int | None, width: int, width_meaning: str
) -> None:
    shape = tuple(tensor.shape)
    if len(shape) != 2 or shape[1] != width or (batch is not None and shape[0] != batch):
        raise ValueError(
            f"outputs['{key}'] must have shape [{'batch' if batch is None else batch}, {width}] "
            f"(batch, {width_meaning}), got {list(shape)}"
        )


def _check_unique(what: str, names: list[str]) -> None:
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"{what} must be unique, repeated: {repeated}")
