"""The preprocess steps, applied to every batch in the reference's fixed order.

Order: (mask_mantissa, example weights,) downsample_negatives, truncate_and_slice, downcast,
rectify_labels, extract_features. Steps that need labels (weights, downsample_negatives,
rectify_labels) run at train and evaluation time only; the feature steps run in every mode,
inference included, so a model sees the same inputs it was trained on.

``truncate_and_slice`` only selects columns; the loader pushes that selection down into the
Parquet reader (:meth:`TruncateAndSliceStep.selection`) so the dropped columns are never decoded.
Calling the step on full-width tensors gives the same result.
"""

from __future__ import annotations

import dataclasses
import io
import logging
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch

from projects.home.recap.data.config import (
    DataType,
    DownCast,
    DownsampleNegatives,
    ExtractFeatures,
    Preprocess,
    RectifyLabels,
    TaskData,
    TruncateAndSlice,
)
from tml.core.errors import UserInputError
from tml.storage import as_path

logger = logging.getLogger(__name__)

_MILLISECONDS_PER_HOUR = 3600 * 1000

TORCH_DTYPES: dict[DataType, torch.dtype] = {
    DataType.BFLOAT16: torch.bfloat16,
    DataType.BOOL: torch.bool,
    DataType.FLOAT32: torch.float32,
    DataType.FLOAT16: torch.float16,
    DataType.UINT8: torch.uint8,
}


class PreprocessError(UserInputError):
    """A preprocess step is configured wrongly for the data; the message names the field."""


@dataclasses.dataclass
class Rows:
    """A batch on its way through the steps.

    Attributes:
        features: Name (renamed, or schema name for ``seg_dense_schema.features``) ->
            ``[rows, width]`` tensor.
        labels: Label (task) name -> ``[rows]`` float32 tensor; empty at inference.
        weights: ``[rows, tasks]`` float32 per-task example weights in the model's task order,
            or None before they are computed (and at inference).
    """

    features: dict[str, torch.Tensor]
    labels: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)
    weights: torch.Tensor | None = None

    @property
    def num_rows(self) -> int:
        return next(iter(self.features.values())).shape[0]

    def take(self, index: torch.Tensor) -> Rows:
        """The rows at ``index`` (a long tensor), in that order."""
        return Rows(
            features={name: value[index] for name, value in self.features.items()},
            labels={name: value[index] for name, value in self.labels.items()},
            weights=None if self.weights is None else self.weights[index],
        )


Step = Callable[[Rows], Rows]


class MaskMantissaStep:
    """Zeroes low mantissa bits of float32 features, to emulate lower-precision data."""

    def __init__(self, bits: Mapping[str, int]):
        self._masks = {name: np.int32(-(1 << count)) for name, count in bits.items()}

    def __call__(self, rows: Rows) -> Rows:
        for name, mask in self._masks.items():
            value = rows.features[name]
            integers = value.contiguous().view(torch.int32) & int(mask)
            rows.features[name] = integers.view(torch.float32)
        return rows


class ExampleWeightsStep:
    """Per-task weight ``label / pos_rate + (1 - label) / neg_rate`` undoing write-time sampling.

    A task without rates (or with every rate 1) gets weight 1.
    """

    def __init__(self, tasks: Sequence[str], rates: Mapping[str, TaskData]):
        self._tasks = list(tasks)
        unsampled = TaskData()
        task_rates = [rates.get(task, unsampled) for task in tasks]
        self._positive = torch.tensor([1.0 / rate.pos_downsampling_rate for rate in task_rates])
        self._negative = torch.tensor([1.0 / rate.neg_downsampling_rate for rate in task_rates])

    def __call__(self, rows: Rows) -> Rows:
        if not self._tasks:
            rows.weights = torch.ones(rows.num_rows, 0)
            return rows
        labels = torch.stack([rows.labels[task] for task in self._tasks], dim=1)
        rows.weights = labels * self._positive + (1.0 - labels) * self._negative
        return rows


class DownsampleNegativesStep:
    """Keeps a read batch's positives and fills the rest of the output batch with negatives.

    The loader reads ``batch_multiplier`` times the batch size. An example is positive when any
    listed engagement is. Kept negatives stand for all negatives read, so their weights (every
    task) are scaled by ``(read - positives) / (kept - positives)``. When there are more
    positives than the batch holds, the surplus positives are dropped (and counted).
    """

    def __init__(self, config: DownsampleNegatives, engagements: Sequence[str]):
        self.batch_multiplier = config.batch_multiplier
        self._engagements = list(engagements)
        self.dropped_positives = 0

    def output_rows(self, read_rows: int) -> int:
        """Rows kept out of ``read_rows`` (the batch size for a full read)."""
        return -(-read_rows // self.batch_multiplier)

    def __call__(self, rows: Rows) -> Rows:
        read = rows.num_rows
        kept = self.output_rows(read)
        positive = torch.zeros(read, dtype=torch.bool)
        for name in self._engagements:
            positive |= rows.labels[name] > 0
        positives = int(positive.sum())
        if positives > kept:
            self.dropped_positives += positives - kept
            logger.warning(
                "downsample_negatives: %d positives in a batch of %d; %d dropped (%d so far)",
                positives,
                kept,
                positives - kept,
                self.dropped_positives,
            )
        scale = (read - positives) / (kept - positives) if kept > positives else 0.0
        weights = rows.weights if rows.weights is not None else torch.ones(read, 0)
        rows.weights = weights * torch.where(positive, 1.0, scale).unsqueeze(1)
        # Positives first, both groups in read order; then cut to the output size.
        order = torch.argsort((~positive).to(torch.int8), stable=True)[:kept]
        return rows.take(order)


class TruncateAndSliceStep:
    """Keeps the first N continuous / binary columns, then those a saved mask selects."""

    # Renamed feature -> (truncation field, mask field) of the config.
    FIELDS = {
        "continuous": ("continuous_feature_truncation", "continuous_feature_mask_path"),
        "binary": ("binary_feature_truncation", "binary_feature_mask_path"),
    }

    def __init__(self, config: TruncateAndSlice, lengths: Mapping[str, int]):
        """Resolves the kept columns.

        Args:
            config: The step's config.
            lengths: Full length of each renamed feature the step applies to.

        Raises:
            PreprocessError: naming the field when a truncation exceeds the feature's length or
                a mask cannot be read or does not fit.
        """
        self._selections: dict[str, np.ndarray] = {}
        for name, (truncation_field, mask_field) in self.FIELDS.items():
            truncation = getattr(config, truncation_field)
            mask_path = getattr(config, mask_field)
            if truncation is None and mask_path is None:
                continue
            where = f"preprocess.truncate_and_slice.{truncation_field}"
            if name not in lengths:
                raise PreprocessError(
                    f"{where}: seg_dense_schema.renamed_features does not define '{name}'"
                )
            width = lengths[name]
            if truncation is not None:
                if truncation > width:
                    raise PreprocessError(
                        f"{where}: {truncation} is more than the {width} values of '{name}'"
                    )
                width = truncation
            indices = np.arange(width)
            if mask_path is not None:
                indices = indices[
                    _load_mask(mask_path, width, f"preprocess.truncate_and_slice.{mask_field}")
                ]
            self._selections[name] = indices

    def selection(self, name: str) -> np.ndarray | None:
        """Columns of feature ``name`` kept, sorted; None when the step leaves it whole."""
        return self._selections.get(name)

    def __call__(self, rows: Rows) -> Rows:
        for name, indices in self._selections.items():
            rows.features[name] = rows.features[name][:, torch.from_numpy(indices)]
        return rows


def _load_mask(path: str, width: int, where: str) -> np.ndarray:
    try:
        # Read whole first: np.load needs a seekable file, which a remote object is not cheaply.
        mask = np.load(io.BytesIO(as_path(path).read_bytes()), allow_pickle=False)
    except (OSError, ValueError) as error:
        raise PreprocessError(f"{where}: cannot read mask file {path}: {error}") from None
    if mask.ndim != 1 or len(mask) != width:
        raise PreprocessError(
            f"{where}: mask file {path} has shape {list(mask.shape)}, expected [{width}] (one "
            "entry per column kept by the truncation)"
        )
    keep = mask != 0
    if not keep.any():
        raise PreprocessError(f"{where}: mask file {path} keeps no column")
    return keep


class DownCastStep:
    """Casts features to narrower types (before the batch is moved to the device)."""

    def __init__(self, config: DownCast):
        self._types = {name: TORCH_DTYPES[kind] for name, kind in config.features.items()}

    def __call__(self, rows: Rows) -> Rows:
        for name, dtype in self._types.items():
            rows.features[name] = rows.features[name].to(dtype)
        return rows


class RectifyLabelsStep:
    """Zeroes a positive label whose impression or engagement came later than the window after
    serving (all timestamps in milliseconds)."""

    def __init__(self, config: RectifyLabels):
        self._window = int(config.label_rectification_window_in_hours * _MILLISECONDS_PER_HOUR)
        self._served = config.served_timestamp_field
        self._impressed = config.impressed_timestamp_field
        self._engaged = dict(config.label_to_engaged_timestamp_field)

    def __call__(self, rows: Rows) -> Rows:
        served = rows.features[self._served][:, 0]
        impressed_in_time = rows.features[self._impressed][:, 0] - served < self._window
        for label, engaged_field in self._engaged.items():
            engaged_in_time = rows.features[engaged_field][:, 0] - served < self._window
            keep = (rows.labels[label] > 0) & impressed_in_time & engaged_in_time
            rows.labels[label] = torch.where(keep, rows.labels[label], 0.0)
        return rows


class ExtractFeaturesStep:
    """Exposes single columns of dense features as ``[rows, 1]`` features of their own."""

    def __init__(self, config: ExtractFeatures):
        self._table = [
            (row.name, row.source_tensor, row.index) for row in config.extract_feature_table
        ]

    def __call__(self, rows: Rows) -> Rows:
        for name, source, index in self._table:
            rows.features[name] = rows.features[source][:, index : index + 1]
        return rows


@dataclasses.dataclass
class Preprocessor:
    """The steps of one dataset in order; ``truncate`` is applied by the reader."""

    steps: list[Step]
    truncate: TruncateAndSliceStep | None
    downsample: DownsampleNegativesStep | None

    @property
    def batch_multiplier(self) -> int:
        return 1 if self.downsample is None else self.downsample.batch_multiplier

    def __call__(self, rows: Rows) -> Rows:
        for step in self.steps:
            rows = step(rows)
        return rows


def build_preprocessor(
    config: Preprocess | None,
    *,
    tasks: Sequence[str],
    rates: Mapping[str, TaskData],
    lengths: Mapping[str, int],
    mask_mantissa: Mapping[str, int],
    with_labels: bool,
    truncate_in_reader: bool = True,
    keep_every_row: bool = False,
) -> Preprocessor:
    """The steps a dataset applies, in the reference's order.

    Args:
        config: The data config's ``preprocess`` (None: no optional step).
        tasks: The model's tasks, in order: the columns of the weights.
        rates: Sampling rates whose inverse weighs examples (tasks left out weigh 1).
        lengths: Full length of each renamed dense feature (to resolve truncation).
        mask_mantissa: Renamed float feature -> mantissa bits zeroed.
        with_labels: False at inference: the label steps are left out.
        truncate_in_reader: Leave truncate_and_slice out of the steps because the reader
            applies its selection (the default); True only for full-width inputs.
        keep_every_row: Leave downsample_negatives out, so that no row is dropped.
    """
    config = config or Preprocess()
    steps: list[Step] = []
    if mask_mantissa:
        steps.append(MaskMantissaStep(mask_mantissa))
    if with_labels:
        steps.append(ExampleWeightsStep(tasks, rates))
    downsample = None
    if with_labels and not keep_every_row and config.downsample_negatives is not None:
        engagements = config.downsample_negatives.engagements_list or list(tasks)
        downsample = DownsampleNegativesStep(config.downsample_negatives, engagements)
        steps.append(downsample)
    truncate = None
    if config.truncate_and_slice is not None:
        truncate = TruncateAndSliceStep(config.truncate_and_slice, lengths)
        if not truncate_in_reader:
            steps.append(truncate)
    if config.downcast is not None:
        steps.append(DownCastStep(config.downcast))
    if with_labels and config.rectify_labels is not None:
        steps.append(RectifyLabelsStep(config.rectify_labels))
    if config.extract_features is not None:
        steps.append(ExtractFeaturesStep(config.extract_features))
    return Preprocessor(steps=steps, truncate=truncate, downsample=downsample)
