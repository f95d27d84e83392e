"""Which schema features a data config reads, under which names, and what the model is told.

Every name the config uses is checked against the schema here, once, when a dataset is built,
so that a typo fails before any file is opened, with an error naming the schema file and the
config field. The same plan yields the :class:`InputSpec` the model is built from, so the
widths the model expects and the arrays the loader yields come from one reading of the schema
and mask files.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import torch

from projects.home.recap.data.config import DataType, RecapDataConfig, RectifyLabels
from projects.home.recap.data.preprocess import TORCH_DTYPES, TruncateAndSliceStep
from projects.home.recap.data.reader import FeatureRead
from projects.home.recap.data.schema import (
    FeatureDtype,
    FeatureSpec,
    SchemaError,
    SegDenseSchema,
    load_schema,
)
from projects.home.recap.embedding.config import LargeEmbeddingsConfig
from projects.home.recap.inputs import (
    ContinuousSource,
    DenseInputs,
    InputSpec,
    InputWidths,
    TaskSampling,
    ValueKind,
)

# The types a feature may be cast to: floats stay floats; integers (flags, counts, ids) may also
# become bool or uint8 where their values fit.
_FLOATS = frozenset({DataType.BFLOAT16, DataType.FLOAT16, DataType.FLOAT32})
DOWNCASTS: dict[FeatureDtype, frozenset[DataType]] = {
    FeatureDtype.FLOAT_LIST: _FLOATS,
    FeatureDtype.INT64_LIST: _FLOATS | {DataType.BOOL, DataType.UINT8},
    FeatureDtype.BYTES_LIST: frozenset(),
}


@dataclasses.dataclass(frozen=True)
class DenseInput:
    """How a renamed feature becomes one field of :class:`DenseInputs`.

    Attributes:
        field: The :class:`DenseInputs` field it fills.
        schema_dtype: The schema dtype the feature must have.
        dtype: The tensor type the loader yields for it (before ``preprocess.downcast``).
        optional: True: the field is None when the config does not rename the feature; False:
            it has zero columns then (the model always receives it).
    """

    field: str
    schema_dtype: FeatureDtype
    dtype: torch.dtype
    optional: bool


# What the schema must hold, and what the loader yields, for each kind of dense input.
_SCHEMA_DTYPES = {
    ValueKind.FLOAT: FeatureDtype.FLOAT_LIST,
    ValueKind.INTEGER: FeatureDtype.INT64_LIST,
}
_TORCH_DTYPES = {ValueKind.FLOAT: torch.float32, ValueKind.INTEGER: torch.int64}

# Renamed feature -> its place in DenseInputs, derived from the fields' own declarations in
# inputs.py: the one table the loader, the input spec and the schema checks read.
DENSE_INPUTS: dict[str, DenseInput] = {
    source.feature: DenseInput(
        field,
        _SCHEMA_DTYPES[source.kind],
        _TORCH_DTYPES[source.kind],
        optional=not source.always_present,
    )
    for field, source in DenseInputs.sources().items()
}


@dataclasses.dataclass(frozen=True)
class FeaturePlan:
    """What a dataset reads from disk and how it names it.

    Attributes:
        schema: The schema the config names.
        reads: Schema features read, with the columns kept (truncate_and_slice pushed down).
        names: Schema feature -> the names it is exposed under in ``Rows.features``.
        labels: Label features read (schema names, which are the task names).
        extras: Names that end up in ``RecapBatch.extra_features``.
        sparse_tables: Large embedding tables, in config order; each reads the renamed feature
            of its name.
        lengths: Full length of every exposed feature, by exposed name.
        spec: What the model is built for: widths after preprocessing, the sampling of the
            model's tasks, where the continuous columns come from.
    """

    schema: SegDenseSchema
    reads: tuple[FeatureRead, ...]
    names: dict[str, tuple[str, ...]]
    labels: tuple[str, ...]
    extras: tuple[str, ...]
    sparse_tables: tuple[str, ...]
    lengths: dict[str, int]
    spec: InputSpec


def _check_dense(spec: FeatureSpec, where: str, schema: SegDenseSchema) -> None:
    if not spec.is_fixed_numeric:
        kind = "variable-length" if spec.dtype != FeatureDtype.BYTES_LIST else "bytes"
        raise SchemaError(
            f"{where}: feature '{spec.name}' in schema file {schema.path} is {kind}; only "
            "fixed-length int64_list and float_list features can be read into tensors"
        )


def _check_dtype(
    spec: FeatureSpec, dtype: FeatureDtype, where: str, schema: SegDenseSchema
) -> None:
    if spec.dtype != dtype:
        raise SchemaError(
            f"{where}: feature '{spec.name}' in schema file {schema.path} is {spec.dtype}, "
            f"expected {dtype}"
        )


class _Planner:
    """Collects the features a config reads, checking each name once."""

    def __init__(self, config: RecapDataConfig, schema: SegDenseSchema):
        self.config = config
        self.schema = schema
        self.steps = config.preprocess
        # Schema feature -> spec, for everything read; schema feature -> names it is exposed as.
        self.specs: dict[str, FeatureSpec] = {}
        self.names: dict[str, list[str]] = {}
        # Exposed name -> spec.
        self.exposed: dict[str, FeatureSpec] = {}

    def expose(self, schema_name: str, name: str, where: str) -> FeatureSpec:
        spec = self.schema.get(schema_name, where=where)
        _check_dense(spec, where, self.schema)
        if name in self.exposed and self.exposed[name].name != schema_name:
            raise SchemaError(f"{where}: the name '{name}' is already used for another feature")
        self.specs[schema_name] = spec
        self.exposed[name] = spec
        if name not in self.names.setdefault(schema_name, []):
            self.names[schema_name].append(name)
        return spec

    def expose_configured(self) -> None:
        dense = self.config.seg_dense_schema
        for name, schema_name in dense.renamed_features.items():
            where = f"seg_dense_schema.renamed_features.{name}"
            spec = self.expose(schema_name, name, where)
            if name in DENSE_INPUTS:
                _check_dtype(spec, DENSE_INPUTS[name].schema_dtype, where, self.schema)
        for index, schema_name in enumerate(dense.features):
            self.expose(schema_name, schema_name, f"seg_dense_schema.features[{index}]")
        if not self.exposed:
            raise SchemaError(
                "seg_dense_schema: neither renamed_features nor features names a feature to read"
            )
        for name in dense.mask_mantissa_features:
            where = f"seg_dense_schema.mask_mantissa_features.{name}"
            if name not in self.exposed:
                raise SchemaError(f"{where}: no feature of that name is read")
            _check_dtype(self.exposed[name], FeatureDtype.FLOAT_LIST, where, self.schema)

    def check_large_tables(self, large_embeddings: LargeEmbeddingsConfig | None) -> None:
        for table in large_embeddings.tables if large_embeddings else []:
            where = f"model.large_embeddings.tables.{table.name}"
            if table.name not in self.config.seg_dense_schema.renamed_features:
                raise SchemaError(
                    f"{where}: a table reads the renamed feature of its name, which "
                    "seg_dense_schema.renamed_features does not define"
                )
            _check_dtype(self.exposed[table.name], FeatureDtype.INT64_LIST, where, self.schema)

    def labels(self, tasks: Sequence[str], with_labels: bool) -> list[str]:
        """The labels read: the model's, and those the label steps name (none at inference)."""
        for task in tasks:
            if task not in self.config.tasks:
                raise SchemaError(f"tasks: model task '{task}' is not among this dataset's tasks")
        if not with_labels:
            return []
        labels = list(tasks)
        if self.steps is not None and self.steps.downsample_negatives is not None:
            step = self.steps.downsample_negatives
            if step.num_engagements != len(tasks):
                raise SchemaError(
                    f"preprocess.downsample_negatives.num_engagements: {step.num_engagements}, "
                    f"but the model trains {len(tasks)} tasks"
                )
            labels += step.engagements_list
        if self.steps is not None and self.steps.rectify_labels is not None:
            labels += list(self.steps.rectify_labels.label_to_engaged_timestamp_field)
            self._expose_timestamps(self.steps.rectify_labels)
        labels = list(dict.fromkeys(labels))
        for label in labels:
            spec = self.schema.get(label, where=f"tasks.{label}")
            _check_dense(spec, f"tasks.{label}", self.schema)
            if spec.length != 1:
                raise SchemaError(
                    f"tasks.{label}: a label holds one value; '{label}' has length {spec.length} "
                    f"in schema file {self.schema.path}"
                )
            self.specs[label] = spec
        return labels

    def _expose_timestamps(self, step: RectifyLabels) -> None:
        fields = {
            "served_timestamp_field": step.served_timestamp_field,
            "impressed_timestamp_field": step.impressed_timestamp_field,
            **{
                f"label_to_engaged_timestamp_field.{label}": field
                for label, field in step.label_to_engaged_timestamp_field.items()
            },
        }
        for key, field in fields.items():
            if field not in self.exposed:
                self.expose(field, field, f"preprocess.rectify_labels.{key}")
            if self.exposed[field].length != 1:
                raise SchemaError(
                    f"preprocess.rectify_labels.{key}: '{field}' must hold one timestamp, it "
                    f"has length {self.exposed[field].length}"
                )

    def truncation(self) -> tuple[dict[str, int], dict[str, np.ndarray]]:
        """Widths after truncate_and_slice by exposed name, and the kept columns by schema
        feature."""
        widths = {name: spec.length for name, spec in self.exposed.items()}
        if self.steps is None or self.steps.truncate_and_slice is None:
            return widths, {}
        truncate = TruncateAndSliceStep(self.steps.truncate_and_slice, dict(widths))
        selections = {}
        for name in TruncateAndSliceStep.FIELDS:
            selection = truncate.selection(name)
            if selection is None:
                continue
            schema_name = self.exposed[name].name
            if len(self.names[schema_name]) > 1:
                raise SchemaError(
                    f"seg_dense_schema: '{schema_name}' is read as {self.names[schema_name]}; a "
                    "truncated feature must be read under one name"
                )
            widths[name] = len(selection)
            selections[schema_name] = selection
        return widths, selections

    def check_downcast(self, large_embeddings: LargeEmbeddingsConfig | None) -> None:
        if self.steps is None or self.steps.downcast is None:
            return
        tables = {table.name for table in large_embeddings.tables} if large_embeddings else set()
        for name, kind in self.steps.downcast.features.items():
            where = f"preprocess.downcast.features.{name}"
            if name not in self.exposed:
                raise SchemaError(
                    f"{where}: no feature of that name is read (read: {', '.join(self.exposed)})"
                )
            if name in tables:
                raise SchemaError(
                    f"{where}: '{name}' feeds a large embedding table; its ids must stay int64"
                )
            allowed = DOWNCASTS[self.exposed[name].dtype]
            if kind not in allowed:
                raise SchemaError(
                    f"{where}: {kind.value} cannot hold the values of this "
                    f"{self.exposed[name].dtype.value} feature (choose from "
                    f"{', '.join(sorted(choice.value for choice in allowed))})"
                )

    def extracted(self, widths: dict[str, int], labels: list[str]) -> list[str]:
        """Names extract_features adds, checked against the features read."""
        if self.steps is None or self.steps.extract_features is None:
            return []
        names: list[str] = []
        for index, row in enumerate(self.steps.extract_features.extract_feature_table):
            where = f"preprocess.extract_features.extract_feature_table[{index}]"
            if row.source_tensor not in self.exposed:
                raise SchemaError(
                    f"{where}.source_tensor: no feature '{row.source_tensor}' is read"
                )
            if row.index >= widths[row.source_tensor]:
                raise SchemaError(
                    f"{where}.index: {row.index} is past the {widths[row.source_tensor]} columns "
                    f"of '{row.source_tensor}' after truncate_and_slice"
                )
            if row.name in self.exposed or row.name in names or row.name in labels:
                raise SchemaError(f"{where}.name: '{row.name}' is already a feature name")
            names.append(row.name)
        return names


def plan_features(
    config: RecapDataConfig,
    *,
    tasks: Sequence[str],
    with_labels: bool,
    large_embeddings: LargeEmbeddingsConfig | None = None,
    schema: SegDenseSchema | None = None,
) -> FeaturePlan:
    """Resolves the features ``config`` reads against its schema.

    Args:
        config: The data config.
        tasks: The model's tasks in order (labels and weights follow it).
        with_labels: False at inference: labels and the label steps' inputs are not read.
        large_embeddings: The model's large tables; each reads the renamed feature of its name.
        schema: The schema, when already loaded (default: read ``schema_path``).

    Raises:
        SchemaError: naming the schema file and the config field for any unknown or unusable
            feature.
        PreprocessError: for a preprocess step that does not fit the features.
    """
    planner = _Planner(config, schema or load_schema(config.seg_dense_schema.schema_path))
    planner.expose_configured()
    planner.check_large_tables(large_embeddings)
    labels = planner.labels(tasks, with_labels)
    lengths = {name: spec.length for name, spec in planner.exposed.items()}
    widths, selections = planner.truncation()
    planner.check_downcast(large_embeddings)
    extracted = planner.extracted(widths, labels)
    reads = [FeatureRead(spec, selections.get(name)) for name, spec in planner.specs.items()]
    return FeaturePlan(
        schema=planner.schema,
        reads=tuple(reads),
        names={key: tuple(value) for key, value in planner.names.items()},
        labels=tuple(labels),
        extras=tuple([name for name in planner.exposed if name not in DENSE_INPUTS] + extracted),
        sparse_tables=tuple(table.name for table in large_embeddings.tables)
        if large_embeddings
        else (),
        lengths=lengths,
        spec=InputSpec(
            widths=InputWidths.from_features(widths),
            task_sampling={
                task: TaskSampling(
                    pos_downsampling_rate=config.tasks[task].pos_downsampling_rate,
                    neg_downsampling_rate=config.tasks[task].neg_downsampling_rate,
                )
                for task in tasks
            },
            continuous_source=_continuous_source(planner, selections),
            dtypes=_dense_dtypes(config, widths),
        ),
    )


def _dense_dtypes(config: RecapDataConfig, widths: dict[str, int]) -> dict[str, torch.dtype]:
    """The type of every dense input the loader yields, after ``preprocess.downcast`` (export
    traces the model with inputs of exactly these types)."""
    steps = config.preprocess
    downcast = steps.downcast.features if steps and steps.downcast else {}
    return {
        dense.field: TORCH_DTYPES[downcast[name]] if name in downcast else dense.dtype
        for name, dense in DENSE_INPUTS.items()
        if not dense.optional or name in widths
    }


def _continuous_source(
    planner: _Planner, selections: dict[str, np.ndarray]
) -> ContinuousSource | None:
    """Where ``continuous`` comes from: statistics computed on the raw schema feature (z-score)
    must be cut to the columns the reader keeps."""
    if "continuous" not in planner.exposed:
        return None
    spec = planner.exposed["continuous"]
    kept = selections.get(spec.name)
    return ContinuousSource(
        feature=spec.name,
        raw_width=spec.length,
        kept_columns=None if kept is None else tuple(int(column) for column in kept),
    )


def build_input_spec(config: RecapDataConfig, tasks: Sequence[str]) -> InputSpec:
    """What the model is built for, without reading any data (reads the schema and any mask
    files once).

    A dataset built from the same config holds the same spec as ``RecapDataset.input_spec``;
    this is for the modes that build a model without a loader (export, a config check).

    Args:
        config: The data config the model is trained on.
        tasks: The model's tasks in order; each must be one of ``config.tasks``.

    Raises:
        SchemaError, PreprocessError: as :func:`plan_features`.
    """
    return plan_features(config, tasks=tasks, with_labels=False).spec
