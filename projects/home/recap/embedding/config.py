"""Embedding tables: small ones inside the dense model, large ones sharded by torchrec."""

from __future__ import annotations

import pydantic

from projects.home.recap.sharding_config import (
    KERNELS_OF_SHARDING,
    ComputeKernel,
    ShardingType,
)
from tml.core.config import BaseConfig, ConfigValueError, Field
from tml.optimizers.config import LearningRate


class ExactSgdConfig(BaseConfig):
    """Exact SGD: each row looked up moves by ``-learning_rate * gradient`` (no state)."""


class RowWiseAdagradConfig(BaseConfig):
    """Exact row-wise Adagrad: one accumulator per row, the running sum of the mean squared
    gradient of that row; the row moves by ``-learning_rate * gradient / (sqrt(sum) + epsilon)``.

    A row's step is normalised by its own history, so a rare id and a frequent one both learn at
    the configured rate, whatever the batch size and the number of tasks.
    """

    epsilon: pydantic.PositiveFloat = Field(
        1e-8, description="Added to the root of the accumulator (fbgemm's eps)."
    )
    weight_decay: pydantic.NonNegativeFloat = Field(
        0.0,
        description="L2 penalty added to each looked-up row's gradient. Only fbgemm's GPU "
        "kernel applies it (its CPU kernel ignores it, so a non-zero value is rejected on CPU).",
    )


class TableAdamConfig(BaseConfig):
    """Adam on a table, with the element-wise (``adam``) or row-wise (``partial_rowwise_adam``)
    second moment. fbgemm 1.8 runs these on GPU only; on CPU they are rejected at start."""

    beta_1: float = Field(0.9, ge=0.0, lt=1.0, description="Decay of the first moment.")
    beta_2: float = Field(0.999, ge=0.0, lt=1.0, description="Decay of the second moment.")
    epsilon: pydantic.PositiveFloat = Field(
        1e-8, description="Added to the denominator for numerical stability."
    )
    weight_decay: pydantic.NonNegativeFloat = Field(
        0.0, description="fbgemm's weight decay for Adam (applied to the rows looked up)."
    )


class EmbeddingOptimizerConfig(BaseConfig):
    """A fused (in-backward) optimizer of large tables and its learning-rate schedule.

    Written as in the original (``learning_rate``, ``init_learning_rate``), plus at most one
    algorithm; none means ``sgd``, the original's only choice.
    """

    learning_rate: LearningRate | None = Field(
        None, description="Schedule for the tables; null keeps init_learning_rate throughout."
    )
    init_learning_rate: pydantic.NonNegativeFloat = Field(
        description="Learning rate the fused optimizer is built with (step 0)."
    )
    sgd: ExactSgdConfig | None = Field(
        None,
        description="Exact SGD (the default when no algorithm is set).",
        at_most_one_of="algorithm",
    )
    rowwise_adagrad: RowWiseAdagradConfig | None = Field(
        None,
        description="Exact row-wise Adagrad, the usual choice for recommendation tables.",
        at_most_one_of="algorithm",
    )
    adam: TableAdamConfig | None = Field(
        None, description="Adam with a moment per element (GPU only).", at_most_one_of="algorithm"
    )
    partial_rowwise_adam: TableAdamConfig | None = Field(
        None,
        description="Adam with a first moment per element and a second moment per row (GPU only).",
        at_most_one_of="algorithm",
    )

    @property
    def algorithm(self) -> str:
        """The chosen algorithm's field name; ``sgd`` when none is set."""
        return self.chosen("algorithm") or "sgd"

    def schedule(self) -> LearningRate:
        """The declared schedule, or ``init_learning_rate`` held constant."""
        return self.learning_rate or LearningRate(constant=self.init_learning_rate)


class EmbeddingSnapshot(BaseConfig):
    """Where to find pretrained weights for a large table."""

    emb_name: str = Field(
        description="Name of the table inside the snapshot (its key in the checkpoint)."
    )
    embedding_snapshot_uri: str = Field(
        description="Directory of a torch.distributed.checkpoint holding the table's weights."
    )


class EmbeddingBagConfig(BaseConfig):
    """One large embedding table, fed by the renamed feature of the same name."""

    name: str = Field(
        description="Table name; also the renamed feature whose ids feed it (e.g. meta__user_id)."
    )
    num_embeddings: pydantic.PositiveInt = Field(description="Number of rows.")
    embedding_dim: pydantic.PositiveInt = Field(description="Width of each row.")
    pretrained: EmbeddingSnapshot | None = Field(
        None, description="Initialise the table from a snapshot instead of randomly."
    )
    vocab: str | None = Field(
        None,
        description="Directory of Parquet files mapping raw ids to rows (columns id, row); "
        "without it, raw ids are hashed into num_embeddings rows.",
    )
    unknown_id_rows: pydantic.PositiveInt | None = Field(
        None,
        description="With a vocab: the last unknown_id_rows rows of the table are kept for ids "
        "the vocab does not list, which are hashed into them; an unknown id meets the same row "
        "whatever the vocab's size. null: every row after the vocab's largest. Either way the "
        "vocab must leave rows for unknown ids.",
    )
    sharding_types: list[ShardingType] | None = Field(
        None,
        description="Sharding types the planner may choose from for this table (default: any "
        "the device supports; on CPU: data_parallel, table_wise, column_wise, "
        "table_column_wise).",
    )
    compute_kernels: list[ComputeKernel] | None = Field(
        None,
        description="Compute kernels the planner may choose from (default: any); torchrec runs "
        "replicated (data_parallel) tables on the dense kernel and sharded ones on fused kernels.",
    )
    optimizer: EmbeddingOptimizerConfig | None = Field(
        None,
        description="This table's own optimizer and schedule; null: large_embeddings.optimizer.",
    )

    @pydantic.model_validator(mode="after")
    def _check_unknown_id_rows(self) -> EmbeddingBagConfig:
        if self.unknown_id_rows is None:
            return self
        if self.vocab is None:
            raise ConfigValueError(
                "needs a vocab: without one every id is hashed into the whole table",
                ("unknown_id_rows",),
            )
        if self.unknown_id_rows >= self.num_embeddings:
            raise ConfigValueError(
                f"{self.unknown_id_rows} must be fewer than the table's {self.num_embeddings} "
                "rows, which the vocab needs too",
                ("unknown_id_rows",),
            )
        return self

    @pydantic.model_validator(mode="after")
    def _check_placement_can_exist(self) -> EmbeddingBagConfig:
        types = self.sharding_types or list(ShardingType)
        kernels = self.compute_kernels or list(ComputeKernel)
        if not any(kernel in KERNELS_OF_SHARDING[kind] for kind in types for kernel in kernels):
            raise ConfigValueError(
                f"no sharding type in {[t.value for t in types]} runs on a compute kernel in "
                f"{[k.value for k in kernels]}: torchrec runs data_parallel tables on 'dense' and "
                "sharded ones on 'fused' kernels",
                ("compute_kernels",),
            )
        return self


class LargeEmbeddingsConfig(BaseConfig):
    """Tables gathered into one torchrec EmbeddingBagCollection and sharded across ranks."""

    tables: list[EmbeddingBagConfig] = Field(min_length=1, description="The tables.")
    optimizer: EmbeddingOptimizerConfig = Field(
        description="Optimizer and schedule of every table that does not declare its own."
    )
    tables_to_log: list[str] | None = Field(
        None, description="Tables whose weight norms are logged with the training metrics."
    )

    @pydantic.model_validator(mode="after")
    def _check_names(self) -> LargeEmbeddingsConfig:
        names = [table.name for table in self.tables]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"table names must be unique, repeated: {duplicates}")
        unknown = [name for name in self.tables_to_log or [] if name not in names]
        if unknown:
            raise ValueError(f"tables_to_log names unknown tables {unknown}; tables: {names}")
        return self

    def table_optimizer(self, table: EmbeddingBagConfig) -> EmbeddingOptimizerConfig:
        """The optimizer that trains ``table``: its own, else the collection's."""
        return table.optimizer or self.optimizer


class SmallEmbeddingBagConfig(BaseConfig):
    """A small table inside the dense model, embedding one column of the discrete features."""

    name: str = Field(description="Table name.")
    num_embeddings: pydantic.PositiveInt = Field(
        description="Number of rows; values are taken modulo this."
    )
    embedding_dim: pydantic.PositiveInt = Field(description="Width of each row.")
    index: pydantic.NonNegativeInt = Field(description="Column of the discrete features to embed.")


class SmallEmbeddingsConfig(BaseConfig):
    """Small tables trained with the backbone's optimizer."""

    tables: list[SmallEmbeddingBagConfig] = Field(min_length=1, description="The tables.")

    @pydantic.model_validator(mode="after")
    def _check_names(self) -> SmallEmbeddingsConfig:
        names = [table.name for table in self.tables]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"table names must be unique, repeated: {duplicates}")
        return self
