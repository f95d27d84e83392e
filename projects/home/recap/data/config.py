"""Where the training and evaluation examples come from and how they are prepared."""

from __future__ import annotations

import enum
from datetime import datetime

import pydantic

from tml.core.config import BaseConfig, ConfigValueError, Field

DATE_FORMAT = "%Y/%m/%d"
DATETIME_FORMAT = "%Y/%m/%d/%H"


class ExplicitDateInputs(BaseConfig):
    """Daily folders ``data_root/YYYY/MM/DD`` for the ``days`` days ending at ``end_date``."""

    data_root: str = Field(description="Folder holding the YYYY/MM/DD sub-folders.")
    end_date: str = Field(description="Last day read, inclusive, as YYYY/MM/DD.")
    days: pydantic.PositiveInt = Field(description="Number of days read.")
    num_missing_days_tol: pydantic.NonNegativeInt = Field(
        0, description="How many missing or empty day folders are tolerated."
    )

    @pydantic.field_validator("end_date")
    @classmethod
    def _check_date(cls, value: str) -> str:
        _parse_time(value, DATE_FORMAT)
        return value


class ExplicitDatetimeInputs(BaseConfig):
    """Hourly folders ``data_root/YYYY/MM/DD/HH`` for ``hours`` hours before ``end_datetime``."""

    data_root: str = Field(description="Folder holding the YYYY/MM/DD/HH sub-folders.")
    end_datetime: str = Field(
        description="End of the window as YYYY/MM/DD/HH; the hours read are end-1h .. end-hours."
    )
    hours: pydantic.PositiveInt = Field(description="Number of hours read.")
    num_missing_hours_tol: pydantic.NonNegativeInt = Field(
        0, description="How many missing or empty hour folders are tolerated."
    )

    @pydantic.field_validator("end_datetime")
    @classmethod
    def _check_datetime(cls, value: str) -> str:
        _parse_time(value, DATETIME_FORMAT)
        return value


class DdsCompressionOption(enum.StrEnum):
    """Compression of a tf.data service stream; kept so original configs load."""

    AUTO = "AUTO"


class TruncateAndSlice(BaseConfig):
    """Keep the first N columns, then the columns a saved mask selects."""

    continuous_feature_truncation: pydantic.PositiveInt | None = Field(
        None, description="Keep the first N continuous columns."
    )
    binary_feature_truncation: pydantic.PositiveInt | None = Field(
        None, description="Keep the first N binary columns."
    )
    continuous_feature_mask_path: str | None = Field(
        None, description=".npy vector; continuous columns (after truncation) where it is non-zero."
    )
    binary_feature_mask_path: str | None = Field(
        None, description=".npy vector; binary columns (after truncation) where it is non-zero."
    )


class DataType(enum.StrEnum):
    """Types a feature can be cast to before it is moved to the device."""

    BFLOAT16 = "bfloat16"
    BOOL = "bool"
    FLOAT32 = "float32"
    FLOAT16 = "float16"
    UINT8 = "uint8"


class DownCast(BaseConfig):
    """Cast selected features to narrower types before transfer."""

    features: dict[str, DataType] = Field(
        description="Renamed feature name (continuous, binary, ...) -> type. Float features "
        "take float types; integer ones also bool and uint8 (which keeps values mod 256); ids "
        "of large tables stay int64."
    )


class RectifyLabels(BaseConfig):
    """Zero positive labels whose impression or engagement came too late after serving."""

    label_rectification_window_in_hours: pydantic.PositiveFloat = Field(
        3.0, description="Window after serving within which engagements count."
    )
    served_timestamp_field: str = Field(description="Feature with the serving time (ms).")
    impressed_timestamp_field: str = Field(description="Feature with the impression time (ms).")
    label_to_engaged_timestamp_field: dict[str, str] = Field(
        description="Label -> feature with its engagement time (ms)."
    )


class ExtractFeaturesRow(BaseConfig):
    """One column of a dense feature exposed as a feature of its own."""

    name: str = Field(description="Name of the new feature.")
    source_tensor: str = Field(description="Renamed dense feature to read from.")
    index: pydantic.NonNegativeInt = Field(description="Column of the source feature.")


class ExtractFeatures(BaseConfig):
    """Expose single columns of dense features as features."""

    extract_feature_table: list[ExtractFeaturesRow] = Field(
        [], description="The columns to extract."
    )


class DownsampleNegatives(BaseConfig):
    """Read a bigger batch and keep its positives plus enough negatives to fill a batch."""

    batch_multiplier: pydantic.PositiveInt = Field(
        description="How many times bigger the batch read is than the batch kept."
    )
    engagements_list: list[str] = Field(
        [], description="Labels whose positives are always kept (empty: every task)."
    )
    num_engagements: pydantic.PositiveInt = Field(
        description="Number of labels the model trains on, including those not listed."
    )


class Preprocess(BaseConfig):
    """Steps applied in this order at train/eval time: downsample_negatives, truncate_and_slice,
    downcast, rectify_labels, extract_features. Feature steps also apply at inference."""

    truncate_and_slice: TruncateAndSlice | None = Field(None, description="Truncate and slice.")
    downcast: DownCast | None = Field(None, description="Down-cast features.")
    rectify_labels: RectifyLabels | None = Field(None, description="Rectify late labels.")
    extract_features: ExtractFeatures | None = Field(
        None, description="Extract columns of dense features."
    )
    downsample_negatives: DownsampleNegatives | None = Field(
        None, description="Downsample negatives."
    )


class TaskData(BaseConfig):
    """How one label was sampled when the dataset was written."""

    pos_downsampling_rate: float = Field(
        1.0, gt=0.0, le=1.0, description="Fraction of positives kept in the data."
    )
    neg_downsampling_rate: float = Field(
        1.0, gt=0.0, le=1.0, description="Fraction of negatives kept in the data."
    )


class SegDenseSchema(BaseConfig):
    """The feature schema file and which of its features to read."""

    schema_path: str = Field(
        description="JSON schema file: {schema: [{feature_name, dtype, length}]}."
    )
    features: list[str] = Field(
        [], description="Schema features to read besides the renamed ones and the labels."
    )
    renamed_features: dict[str, str] = Field(
        {},
        description="Name used by the model (continuous, binary, discrete, user_embedding, "
        "user_eng_embedding, author_embedding, meta__user_id, ...) -> schema feature name.",
    )
    mask_mantissa_features: dict[str, pydantic.NonNegativeInt] = Field(
        {},
        description="Renamed float feature -> number of low mantissa bits zeroed, to simulate "
        "lower-precision data (0-23).",
    )

    @pydantic.field_validator("mask_mantissa_features")
    @classmethod
    def _check_bits(cls, bits: dict[str, int]) -> dict[str, int]:
        for name, count in bits.items():
            if count > 23:
                raise ConfigValueError(f"a float32 has 23 mantissa bits, got {count}", (name,))
        return bits


class RecapDataConfig(BaseConfig):
    """A dataset: files, batch size, labels and preprocessing."""

    inputs: str | None = Field(
        None, description="Glob of Parquet files.", one_of="date_inputs_format"
    )
    explicit_datetime_inputs: ExplicitDatetimeInputs | None = Field(
        None, description="Hourly folders ending at a datetime.", one_of="date_inputs_format"
    )
    explicit_date_inputs: ExplicitDateInputs | None = Field(
        None, description="Daily folders ending at a date.", one_of="date_inputs_format"
    )
    global_batch_size: pydantic.PositiveInt = Field(
        description="Examples per step over all ranks; each rank reads global / world size."
    )
    num_files_to_keep: pydantic.PositiveInt | None = Field(
        None, description="Keep only the first N files (sorted by path)."
    )
    repeat_files: bool = Field(
        True,
        description="Training data always repeats (bound training with num_train_steps) and "
        "evaluation data is read once; only true is accepted.",
    )
    file_batch_size: pydantic.PositiveInt = Field(
        16, description="Number of files whose row groups are interleaved at once."
    )
    cache: bool = Field(
        False, description="Keep the decoded dataset in memory after the first pass."
    )
    data_service_dispatcher: str | None = Field(
        None, description="tf.data service address; not supported (each rank reads Parquet)."
    )
    ignore_data_errors: bool = Field(
        False,
        description="Skip (log and count) unreadable or non-conforming files and row groups "
        "instead of failing.",
    )
    dataset_service_compression: DdsCompressionOption | None = Field(
        None,
        description="Compression of a tf.data service stream; without a dispatcher it has no "
        "effect and is accepted only so original configs load.",
    )
    examples_shuffle_buffer_size: pydantic.NonNegativeInt = Field(
        1024,
        description="Examples shuffled together: consecutive row groups are gathered until they "
        "hold at least this many rows, which are then permuted (0: no example shuffling).",
    )
    map_num_parallel_calls: pydantic.PositiveInt | None = Field(
        None,
        description="Threads turning decoded rows into batches (preprocess steps, embedding ids) "
        "ahead of the trainer (default: 1).",
    )
    interleave_num_parallel_calls: pydantic.PositiveInt | None = Field(
        None,
        description="Threads reading and decoding row groups in parallel (default: the number "
        "of CPUs, at most 4; twice that for files in an object store, whose reads wait on it).",
    )
    seg_dense_schema: SegDenseSchema = Field(description="Schema and feature selection.")
    tasks: dict[str, TaskData] = Field(
        min_length=1, description="Labels in this dataset and how each was sampled."
    )
    evaluation_tasks: list[str] = Field(
        [], description="Tasks metrics are computed for (empty: every model task)."
    )
    preprocess: Preprocess | None = Field(None, description="Preprocessing steps.")
    sampler: dict | None = Field(
        None, description="Deprecated in the original; not supported, must be null."
    )

    @pydantic.model_validator(mode="after")
    def _check_supported(self) -> RecapDataConfig:
        if not self.repeat_files:
            raise ConfigValueError(
                "only true is supported: training repeats its files and evaluation reads them "
                "once; bound training with training.num_train_steps",
                ("repeat_files",),
            )
        if self.data_service_dispatcher is not None:
            raise ConfigValueError(
                "tf.data service is not supported; every rank reads its own share of the "
                "Parquet files",
                ("data_service_dispatcher",),
            )
        if self.sampler is not None:
            raise ConfigValueError(
                "samplers were deprecated in the original and are not supported; sample "
                "upstream when writing the data",
                ("sampler",),
            )
        steps = self.preprocess
        if steps is not None and steps.downsample_negatives is not None:
            for index, task in enumerate(steps.downsample_negatives.engagements_list):
                if task not in self.tasks:
                    raise ConfigValueError(
                        f"'{task}' is not among this dataset's tasks",
                        ("preprocess", "downsample_negatives", "engagements_list", index),
                    )
        if steps is not None and steps.rectify_labels is not None:
            for task in steps.rectify_labels.label_to_engaged_timestamp_field:
                if task not in self.tasks:
                    raise ConfigValueError(
                        f"'{task}' is not among this dataset's tasks",
                        ("preprocess", "rectify_labels", "label_to_engaged_timestamp_field", task),
                    )
        for index, task in enumerate(self.evaluation_tasks):
            if task not in self.tasks:
                raise ConfigValueError(
                    f"'{task}' is not among this dataset's tasks", ("evaluation_tasks", index)
                )
        return self


def _parse_time(value: str, time_format: str) -> datetime:
    try:
        return datetime.strptime(value, time_format)
    except ValueError:
        readable = time_format.replace("%Y", "YYYY").replace("%m", "MM").replace("%d", "DD")
        raise ValueError(f"expected {readable.replace('%H', 'HH')}, got '{value}'") from None
