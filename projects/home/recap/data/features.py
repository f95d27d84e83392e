"""Which schema features a data config reads, under which names, and their widths.

Every name the config uses is checked against the schema here, once, when a dataset is built,
so that a typo fails before any file is opened, with an error naming the schema file and the
config field.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from projects.home.recap.data.batch import TWHIN_EMBEDDINGS, FeatureWidths
from projects.home.recap.data.config import RecapDataConfig
from projects.home.recap.data.parquet_format import FeatureRead
from projects.home.recap.data.preprocess import TruncateAndSliceStep
from projects.home.recap.data.schema import (
    FeatureDtype,
    FeatureSpec,
    SchemaError,
    SegDenseSchema,
    load_schema,
)
from projects.home.recap.embedding.config import LargeEmbeddingsConfig

# Renamed features with a fixed place in RecapBatch -> the schema dtype they need.
DENSE_FEATURES: dict[str, FeatureDtype] = {
    "continuous": FeatureDtype.FLOAT_LIST,
    "binary": FeatureDtype.INT64_LIST,
    "discrete": FeatureDtype.INT64_LIST,
    **{name: FeatureDtype.FLOAT_LIST for name in TWHIN_EMBEDDINGS},
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
        widths: The model's input widths.
    """

    schema: SegDenseSchema
    reads: tuple[FeatureRead, ...]
    names: dict[str, tuple[str, ...]]
    labels: tuple[str, ...]
    extras: tuple[str, ...]
    sparse_tables: tuple[str, ...]
    lengths: dict[str, int]
    widths: FeatureWidths


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
    dense = config.seg_dense_schema
    schema = schema or load_schema(dense.schema_path)
    specs: dict[str, FeatureSpec] = {}
    names: dict[str, list[str]] = {}
    exposed: dict[str, FeatureSpec] = {}

    def expose(schema_name: str, name: str, where: str) -> FeatureSpec:
        spec = schema.get(schema_name, where=where)
        _check_dense(spec, where, schema)
        if name in exposed and exposed[name].name != schema_name:
            raise SchemaError(f"{where}: the name '{name}' is already used for another feature")
        specs[schema_name] = spec
        exposed[name] = spec
        if name not in names.setdefault(schema_name, []):
            names[schema_name].append(name)
        return spec

    for name, schema_name in dense.renamed_features.items():
        where = f"seg_dense_schema.renamed_features.{name}"
        spec = expose(schema_name, name, where)
        if name in DENSE_FEATURES:
            _check_dtype(spec, DENSE_FEATURES[name], where, schema)
    for index, schema_name in enumerate(dense.features):
        expose(schema_name, schema_name, f"seg_dense_schema.features[{index}]")

    for table in large_embeddings.tables if large_embeddings else []:
        where = f"model.large_embeddings.tables.{table.name}"
        if table.name not in dense.renamed_features:
            raise SchemaError(
                f"{where}: a table reads the renamed feature of its name, which "
                "seg_dense_schema.renamed_features does not define"
            )
        _check_dtype(exposed[table.name], FeatureDtype.INT64_LIST, where, schema)

    for task in tasks:
        if task not in config.tasks:
            raise SchemaError(f"tasks: model task '{task}' is not among this dataset's tasks")
    preprocess = config.preprocess
    labels: list[str] = []
    if with_labels:
        labels = list(tasks)
        if preprocess is not None and preprocess.downsample_negatives is not None:
            step = preprocess.downsample_negatives
            if step.num_engagements != len(tasks):
                raise SchemaError(
                    f"preprocess.downsample_negatives.num_engagements: {step.num_engagements}, "
                    f"but the model trains {len(tasks)} tasks"
                )
            labels += step.engagements_list
        if preprocess is not None and preprocess.rectify_labels is not None:
            step_config = preprocess.rectify_labels
            labels += list(step_config.label_to_engaged_timestamp_field)
            fields = {
                "served_timestamp_field": step_config.served_timestamp_field,
                "impressed_timestamp_field": step_config.impressed_timestamp_field,
                **{
                    f"label_to_engaged_timestamp_field.{label}": field
                    for label, field in step_config.label_to_engaged_timestamp_field.items()
                },
            }
            for key, field in fields.items():
                if field not in exposed:
                    expose(field, field, f"preprocess.rectify_labels.{key}")
                if exposed[field].length != 1:
                    raise SchemaError(
                        f"preprocess.rectify_labels.{key}: '{field}' must hold one timestamp, "
                        f"it has length {exposed[field].length}"
                    )
        labels = list(dict.fromkeys(labels))
        for label in labels:
            spec = schema.get(label, where=f"tasks.{label}")
            _check_dense(spec, f"tasks.{label}", schema)
            if spec.length != 1:
                raise SchemaError(
                    f"tasks.{label}: a label holds one value; '{label}' has length {spec.length} "
                    f"in schema file {schema.path}"
                )
            specs[label] = spec

    for name in dense.mask_mantissa_features:
        where = f"seg_dense_schema.mask_mantissa_features.{name}"
        if name not in exposed:
            raise SchemaError(f"{where}: no feature of that name is read")
        _check_dtype(exposed[name], FeatureDtype.FLOAT_LIST, where, schema)

    if not exposed:
        raise SchemaError(
            "seg_dense_schema: neither renamed_features nor features names a feature to read"
        )
    lengths = {name: spec.length for name, spec in exposed.items()}
    truncate = (
        TruncateAndSliceStep(preprocess.truncate_and_slice, lengths)
        if preprocess is not None and preprocess.truncate_and_slice is not None
        else None
    )
    widths = dict(lengths)
    selections = {}
    for name in TruncateAndSliceStep.FIELDS:
        selection = truncate.selection(name) if truncate is not None else None
        if selection is not None:
            widths[name] = len(selection)
            selections[exposed[name].name] = selection

    if preprocess is not None and preprocess.downcast is not None:
        for name in preprocess.downcast.features:
            if name not in exposed:
                raise SchemaError(
                    f"preprocess.downcast.features.{name}: no feature of that name is read "
                    f"(read: {', '.join(exposed)})"
                )
    extracted: list[str] = []
    if preprocess is not None and preprocess.extract_features is not None:
        for index, row in enumerate(preprocess.extract_features.extract_feature_table):
            where = f"preprocess.extract_features.extract_feature_table[{index}]"
            if row.source_tensor not in exposed:
                raise SchemaError(
                    f"{where}.source_tensor: no feature '{row.source_tensor}' is read"
                )
            if row.index >= widths[row.source_tensor]:
                raise SchemaError(
                    f"{where}.index: {row.index} is past the {widths[row.source_tensor]} columns "
                    f"of '{row.source_tensor}' after truncate_and_slice"
                )
            if row.name in exposed or row.name in extracted or row.name in labels:
                raise SchemaError(f"{where}.name: '{row.name}' is already a feature name")
            extracted.append(row.name)

    reads = []
    for schema_name, spec in specs.items():
        if schema_name in names and schema_name in selections:
            # Only a schema feature exposed under one name can be read narrowed.
            if len(names[schema_name]) > 1:
                raise SchemaError(
                    f"seg_dense_schema: '{schema_name}' is read as {names[schema_name]}; a "
                    "truncated feature must be read under one name"
                )
            reads.append(FeatureRead(spec, selections[schema_name]))
        else:
            reads.append(FeatureRead(spec))
    extras = [name for name in exposed if name not in DENSE_FEATURES] + extracted
    feature_widths = FeatureWidths(
        continuous=widths.get("continuous", 0),
        binary=widths.get("binary", 0),
        discrete=widths.get("discrete", 0),
        embeddings={name: widths[name] for name in TWHIN_EMBEDDINGS if name in widths},
    )
    return FeaturePlan(
        schema=schema,
        reads=tuple(reads),
        names={key: tuple(value) for key, value in names.items()},
        labels=tuple(labels),
        extras=tuple(extras),
        sparse_tables=tuple(
            table.name for table in (large_embeddings.tables if large_embeddings else [])
        ),
        lengths=lengths,
        widths=feature_widths,
    )


def feature_widths(config: RecapDataConfig) -> FeatureWidths:
    """The model's input widths after preprocessing (reads the schema and any mask files).

    Raises:
        SchemaError, PreprocessError: as :func:`plan_features`.
    """
    return plan_features(config, tasks=[], with_labels=False).widths
