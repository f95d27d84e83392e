"""The TwHIN model's config, in the original's format: entity tables, relations, and the
optimizer of the relation vectors."""

from __future__ import annotations

import enum

import pydantic

from tml.core.config import BaseConfig, ConfigValueError, Field
from tml.optimizers.config import OptimizerConfig
from tml.sharding.placement import ShardingType


class DataType(enum.StrEnum):
    """Precision of a table's weights."""

    FP32 = "fp32"
    FP16 = "fp16"


# Only tables on torchrec's fused kernels train inside the backward pass with their own optimizer;
# a replicated (data_parallel) table would need a dense optimizer of its own.
TABLE_SHARDING_TYPES = frozenset(ShardingType) - {ShardingType.DATA_PARALLEL}


class TableConfig(BaseConfig):
    """One entity type's table: a row per entity, fed by the node ids of the edges."""

    name: str = Field(description="Entity type (e.g. user, tweet); relations name it.")
    num_embeddings: pydantic.PositiveInt = Field(
        description="Number of entities: node ids of this type must lie in [0, num_embeddings)."
    )
    embedding_dim: pydantic.PositiveInt = Field(description="Width of each entity's vector.")
    data_type: DataType = Field(DataType.FP32, description="Precision of the weights.")
    optimizer: OptimizerConfig = Field(
        description="The table's fused (in-backward) optimizer and its learning-rate schedule: "
        "sgd (without momentum) or adagrad anywhere, adam on GPUs."
    )
    vocab: str | None = Field(
        None,
        description="Directory of Parquet files mapping raw entity ids to this table's rows "
        "(int64 columns id, row), as recap's vocab; the export then keys each listed entity's "
        "vector by its raw id (null: by its row).",
    )
    sharding_types: list[ShardingType] | None = Field(
        None,
        description="Sharding types the planner may choose for this table (default: table_wise "
        "or column_wise on CPU, any fused placement on GPUs, row_wise among them).",
    )

    @pydantic.field_validator("sharding_types")
    @classmethod
    def _fused_placements_only(cls, types: list[ShardingType] | None) -> list[ShardingType] | None:
        if types and ShardingType.DATA_PARALLEL in types:
            raise ValueError(
                "data_parallel tables have no fused optimizer; choose from "
                f"{sorted(kind.value for kind in TABLE_SHARDING_TYPES)}"
            )
        return types


class TwhinEmbeddingsConfig(BaseConfig):
    """The entity tables, gathered into one torchrec EmbeddingBagCollection."""

    tables: list[TableConfig] = Field(min_length=1, description="One table per entity type.")

    @pydantic.model_validator(mode="after")
    def _check_tables(self) -> TwhinEmbeddingsConfig:
        names = [table.name for table in self.tables]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"table names must be unique, repeated: {duplicates}")
        # Every lookup of an edge goes through one collection and is summed over tables, so the
        # vectors of all entity types share one width and precision.
        first = self.tables[0]
        for index, table in enumerate(self.tables):
            if table.embedding_dim != first.embedding_dim:
                raise ConfigValueError(
                    f"embedding_dim {table.embedding_dim} differs from table '{first.name}''s "
                    f"{first.embedding_dim}: every entity type needs the same width",
                    ("tables", index, "embedding_dim"),
                )
            if table.data_type != first.data_type:
                raise ConfigValueError(
                    f"data_type {table.data_type.value} differs from table '{first.name}''s "
                    f"{first.data_type.value}: every entity type needs the same precision",
                    ("tables", index, "data_type"),
                )
        return self

    @property
    def embedding_dim(self) -> int:
        """The width every table shares."""
        return self.tables[0].embedding_dim


class Operator(enum.StrEnum):
    """How a relation combines the two ends of an edge into a score."""

    # score = <lhs, rhs + r>, with r the relation's trained vector.
    TRANSLATION = "translation"


class Relation(BaseConfig):
    """One kind of edge between two entity types (e.g. user favorites tweet)."""

    name: str = Field(description="Relation name; edge files give its position in the list.")
    lhs: str = Field(description="Entity type (table name) of the edge's left node.")
    rhs: str = Field(description="Entity type (table name) of the edge's right node.")
    operator: Operator = Field(
        Operator.TRANSLATION, description="How the relation turns the two nodes into a score."
    )


class TwhinModelConfig(BaseConfig):
    """Tables, relations, and the optimizer of the relation vectors."""

    embeddings: TwhinEmbeddingsConfig = Field(description="The entity tables.")
    relations: list[Relation] = Field(
        min_length=1, description="The relations; an edge's rel column is an index into this list."
    )
    translation_optimizer: OptimizerConfig = Field(
        description="Optimizer and schedule of the relation (translation) vectors."
    )

    @pydantic.model_validator(mode="after")
    def _check_relations(self) -> TwhinModelConfig:
        tables = [table.name for table in self.embeddings.tables]
        names = [relation.name for relation in self.relations]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"relation names must be unique, repeated: {duplicates}")
        for index, relation in enumerate(self.relations):
            for side in ("lhs", "rhs"):
                if getattr(relation, side) not in tables:
                    raise ConfigValueError(
                        f"'{getattr(relation, side)}' is not a table; tables: {tables}",
                        ("relations", index, side),
                    )
        return self

    def table_rows(self) -> dict[str, int]:
        """Rows of each table, by name, in config order."""
        return {table.name: table.num_embeddings for table in self.embeddings.tables}
