"""The predictions files: their columns, written by inference and read by ``tml-recap-score``.

See :mod:`projects.home.recap.inference` for what each column holds.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pyarrow as pa
import torch

from projects.home.recap.config import RecapConfig
from projects.home.recap.data.config import RecapDataConfig
from projects.home.recap.data.reading import ROW_FILE, ROW_IN_FILE
from projects.home.recap.data.schema import FeatureDtype, SegDenseSchema
from projects.home.recap.inference_config import ID_COLUMN_NAMES
from projects.home.recap.inputs import RecapBatch
from projects.home.recap.model.config import StratifierConfig
from tml.core.errors import UserInputError

# Output column -> renamed feature holding it.
ID_COLUMNS = dict(
    zip(ID_COLUMN_NAMES, ("meta__user_id", "meta__author_id", "meta__tweet_id"), strict=True)
)
SOURCE_FILE = "source_file"
SOURCE_ROW = "source_row"


def label_column(task: str) -> str:
    """The predictions column of a task's label."""
    return f"label/{task}"


def weight_column(task: str) -> str:
    """The predictions column of a task's example weight."""
    return f"weight/{task}"


def stratifier_column(name: str) -> str:
    """The predictions column of a stratifier's feature value."""
    return f"stratifier/{name}"


@dataclasses.dataclass(frozen=True)
class PredictionColumns:
    """What the predictions files of a job hold besides the probabilities and the score."""

    tasks: list[str]
    ids: list[str]
    passthrough: dict[str, pa.DataType]
    stratifiers: list[StratifierConfig]

    def schema(self) -> pa.Schema:
        fields = [pa.field(SOURCE_FILE, pa.string()), pa.field(SOURCE_ROW, pa.int64())]
        fields += [pa.field(column, pa.int64()) for column in self.ids]
        fields += [pa.field(name, kind) for name, kind in self.passthrough.items()]
        for task in self.tasks:
            fields.append(pa.field(label_column(task), pa.float32()))
            fields.append(pa.field(weight_column(task), pa.float32()))
        fields += [pa.field(stratifier_column(s.name), pa.int64()) for s in self.stratifiers]
        for task in self.tasks:
            fields.append(pa.field(f"probability/{task}", pa.float32()))
            fields.append(pa.field(f"calibrated_probability/{task}", pa.float32()))
        fields.append(pa.field("score", pa.float64()))
        return pa.schema(fields)


def prediction_columns(
    config: RecapConfig, data_config: RecapDataConfig, schema: SegDenseSchema
) -> PredictionColumns:
    """The columns of ``config``'s predictions of ``data_config``, whose features ``schema``
    describes (passthrough features are checked against it)."""
    renamed = data_config.seg_dense_schema.renamed_features
    passthrough: dict[str, pa.DataType] = {}
    for name in config.inference.passthrough_features:
        spec = schema.get(name, where="inference.passthrough_features")
        kind = _ARROW_TYPES.get(spec.dtype)
        if kind is None:
            raise UserInputError(
                f"inference.passthrough_features: '{name}' is {spec.dtype.value}; only numeric "
                f"features can be passed through ({', '.join(_ARROW_TYPES)})"
            )
        passthrough[name] = kind if spec.length == 1 else pa.list_(kind)
    return PredictionColumns(
        tasks=list(config.model.tasks),
        ids=[column for column, feature in ID_COLUMNS.items() if feature in renamed],
        passthrough=passthrough,
        stratifiers=list(config.model.stratifiers or []),
    )


_ARROW_TYPES = {FeatureDtype.INT64_LIST: pa.int64(), FeatureDtype.FLOAT_LIST: pa.float32()}


def prediction_table(
    batch: RecapBatch,
    outputs: dict[str, torch.Tensor],
    columns: PredictionColumns,
    weights: dict[str, float],
    file_paths: list[str],
) -> pa.Table:
    """One batch's predictions as rows of ``columns``; ``file_paths`` are the rank's files,
    which the batch's row ids index."""
    schema = columns.schema()
    values: dict[str, Any] = {}
    files = batch.extra_features[ROW_FILE].cpu().numpy()
    values[SOURCE_FILE] = pa.DictionaryArray.from_arrays(files, file_paths).cast(pa.string())
    values[SOURCE_ROW] = batch.extra_features[ROW_IN_FILE].cpu().numpy()
    for column in columns.ids:
        values[column] = batch.extra_features[ID_COLUMNS[column]].reshape(-1).cpu().numpy()
    for name, kind in columns.passthrough.items():
        feature = batch.extra_features[name].cpu().numpy()
        values[name] = feature[:, 0] if not pa.types.is_list(kind) else list(feature)
    labels = batch.labels.float().cpu()
    example_weights = batch.weights.float().cpu()
    for index, task in enumerate(columns.tasks):
        values[label_column(task)] = labels[:, index].numpy()
        values[weight_column(task)] = example_weights[:, index].numpy()
    discrete = batch.inputs.discrete_features
    for stratifier in columns.stratifiers:
        values[stratifier_column(stratifier.name)] = (
            discrete[:, stratifier.index].long().cpu().numpy()
        )
    probabilities = outputs["probabilities"].float().cpu()
    calibrated = outputs["calibrated_probabilities"].float().cpu()
    for index, task in enumerate(columns.tasks):
        values[f"probability/{task}"] = probabilities[:, index].numpy()
        values[f"calibrated_probability/{task}"] = calibrated[:, index].numpy()
    tasks = columns.tasks
    task_weights = torch.tensor([weights.get(task, 0.0) for task in tasks], dtype=torch.float64)
    values["score"] = (calibrated.double() @ task_weights).numpy()
    return pa.table(values, schema=schema)


def with_passthrough(config: RecapConfig, partition: str) -> RecapConfig:
    """``config`` whose ``partition`` also reads the passthrough features."""
    names = config.inference.passthrough_features
    if not names:
        return config
    data_config = config.validation_data[partition]
    features = list(dict.fromkeys([*data_config.seg_dense_schema.features, *names]))
    seg_dense_schema = data_config.seg_dense_schema.model_copy(update={"features": features})
    validation_data = dict(config.validation_data)
    validation_data[partition] = data_config.model_copy(
        update={"seg_dense_schema": seg_dense_schema}
    )
    return config.model_copy(update={"validation_data": validation_data})
