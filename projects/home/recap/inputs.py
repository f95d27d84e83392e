"""The contract between the data stage and the model: what the model is fed, and what it must
know about that input to be built.

The data stage owns the files, the schema and the preprocessing; the model owns the network.
Neither reads the other's config. The data stage produces, once, an :class:`InputSpec`
(widths after preprocessing, the sampling rates of the labels, where the continuous columns
come from) and batches whose dense part is one :class:`DenseInputs`; the model is built from
the spec and consumes the structure. Adding a dense input means adding a field here and
filling it in the loader.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor
from torchrec.streamable import Pipelineable

# Renamed features of the precomputed TwHIN embeddings the model reads when the data has them.
TWHIN_EMBEDDINGS = ("user_embedding", "user_eng_embedding", "author_embedding")


class ValueKind(enum.StrEnum):
    """What a dense input's schema feature holds."""

    FLOAT = "float"
    INTEGER = "integer"


@dataclasses.dataclass(frozen=True)
class InputSource:
    """Where the loader takes a dense input from.

    Attributes:
        feature: The renamed feature (``seg_dense_schema.renamed_features`` key) it reads.
        kind: The values its schema feature must hold.
        always_present: The loader always fills it (with zero columns when the config does not
            rename the feature); otherwise it is None then.
    """

    feature: str
    kind: ValueKind
    always_present: bool


def _source(feature: str, kind: ValueKind, *, always_present: bool) -> dict[str, InputSource]:
    """The field metadata that declares where a dense input is read from."""
    return {"source": InputSource(feature, kind, always_present)}


@dataclasses.dataclass
class DenseInputs:
    """The model's dense inputs for one batch, each ``[batch, width]`` (or None when the data
    does not provide it).

    Registered as a pytree node, so ``torch.export`` and ``torch.compile`` take it whole.

    Attributes:
        continuous_features: float32 (or down-cast) continuous features.
        binary_features: int64 (or down-cast) binary flags.
        discrete_features: int64 discrete values (small tables, position, stratifiers read them).
        user_embedding: TwHIN user vector, when the data renames one.
        user_eng_embedding: TwHIN user-engagement vector, when the data renames one.
        author_embedding: TwHIN author vector, when the data renames one.
    """

    # Each field declares the renamed feature it is read from: the loader and the feature
    # planner take the list from here, so a new input is declared once.
    continuous_features: torch.Tensor = dataclasses.field(
        metadata=_source("continuous", ValueKind.FLOAT, always_present=True)
    )
    binary_features: torch.Tensor = dataclasses.field(
        metadata=_source("binary", ValueKind.INTEGER, always_present=True)
    )
    # The model reads it only for small tables, position debias or concatenation.
    discrete_features: torch.Tensor | None = dataclasses.field(
        default=None, metadata=_source("discrete", ValueKind.INTEGER, always_present=True)
    )
    user_embedding: torch.Tensor | None = dataclasses.field(
        default=None, metadata=_source("user_embedding", ValueKind.FLOAT, always_present=False)
    )
    user_eng_embedding: torch.Tensor | None = dataclasses.field(
        default=None, metadata=_source("user_eng_embedding", ValueKind.FLOAT, always_present=False)
    )
    author_embedding: torch.Tensor | None = dataclasses.field(
        default=None, metadata=_source("author_embedding", ValueKind.FLOAT, always_present=False)
    )

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """Every field name, in declaration order."""
        return tuple(field.name for field in dataclasses.fields(cls))

    @classmethod
    def sources(cls) -> dict[str, InputSource]:
        """Field name -> the renamed feature it is read from, in declaration order."""
        return {field.name: field.metadata["source"] for field in dataclasses.fields(cls)}

    @property
    def batch_size(self) -> int:
        return self.continuous_features.shape[0]

    def present(self) -> dict[str, torch.Tensor]:
        """The inputs that are not None, by name, in declaration order."""
        return {name: tensor for name, tensor in self.items() if tensor is not None}

    def items(self) -> Iterator[tuple[str, torch.Tensor | None]]:
        for field in dataclasses.fields(self):
            yield field.name, getattr(self, field.name)

    def twhin(self) -> dict[str, torch.Tensor | None]:
        """The TwHIN embeddings by name (None where absent)."""
        return {name: getattr(self, name) for name in TWHIN_EMBEDDINGS}

    def map(self, function: Callable[[torch.Tensor], torch.Tensor]) -> DenseInputs:
        """A new structure with ``function`` applied to every present tensor."""
        return DenseInputs(
            **{name: None if tensor is None else function(tensor) for name, tensor in self.items()}
        )


torch.export.register_dataclass(DenseInputs, serialized_type_name="tml.recap.DenseInputs")
# An exported program's input spec names the class; loading it (torch.export.load reads with
# weights_only) must be allowed to rebuild this plain data holder.
torch.serialization.add_safe_globals([DenseInputs])


@dataclasses.dataclass(frozen=True)
class InputWidths:
    """Widths of the dense inputs after preprocessing, which the model is built for.

    Attributes:
        continuous: Columns of ``continuous_features``.
        binary: Columns of ``binary_features``.
        discrete: Columns of ``discrete_features``.
        embeddings: Width of each TwHIN embedding present, by name (a subset of
            :data:`TWHIN_EMBEDDINGS`).
    """

    continuous: int
    binary: int
    discrete: int
    embeddings: dict[str, int]

    @classmethod
    def from_features(cls, widths: dict[str, int]) -> InputWidths:
        """The widths of the dense inputs from the widths of the renamed features read (a dense
        feature that is not read has zero columns; an absent embedding is left out)."""
        return cls(
            continuous=widths.get("continuous", 0),
            binary=widths.get("binary", 0),
            discrete=widths.get("discrete", 0),
            embeddings={name: widths[name] for name in TWHIN_EMBEDDINGS if name in widths},
        )

    def of_feature(self, feature: str) -> int | None:
        """The width of the input read from a renamed feature (None: an absent embedding)."""
        fixed = {"continuous": self.continuous, "binary": self.binary, "discrete": self.discrete}
        return fixed[feature] if feature in fixed else self.embeddings.get(feature)


@dataclasses.dataclass(frozen=True)
class TaskSampling:
    """How one label was sampled when the data was written (fractions kept)."""

    pos_downsampling_rate: float = 1.0
    neg_downsampling_rate: float = 1.0

    @property
    def log_ratio(self) -> float:
        """``log(neg rate / pos rate)``: what calibration adds to the logit."""
        return math.log(self.neg_downsampling_rate / self.pos_downsampling_rate)


@dataclasses.dataclass(frozen=True)
class ContinuousSource:
    """Where the continuous columns come from, for statistics computed on the raw feature.

    Attributes:
        feature: The schema feature renamed to ``continuous``.
        raw_width: Its length in the schema, before truncate_and_slice.
        kept_columns: The raw columns kept, in order (None: all of them).
    """

    feature: str
    raw_width: int
    kept_columns: tuple[int, ...] | None = None


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """Everything the model needs to know about its input, produced once by the data stage.

    Attributes:
        widths: Dense input widths after preprocessing.
        task_sampling: Sampling of each task's label in the training data, by task name.
        continuous_source: Origin of the continuous columns (None when the data has none).
        dtypes: The dtype the loader yields for each present dense input, by
            :class:`DenseInputs` field name (after ``preprocess.downcast``).
    """

    widths: InputWidths
    task_sampling: dict[str, TaskSampling] = dataclasses.field(default_factory=dict)
    continuous_source: ContinuousSource | None = None
    dtypes: dict[str, torch.dtype] = dataclasses.field(default_factory=dict)

    def input_widths(self) -> dict[str, int]:
        """The width of each present dense input, by :class:`DenseInputs` field name."""
        widths = {
            name: self.widths.of_feature(source.feature)
            for name, source in DenseInputs.sources().items()
        }
        return {name: width for name, width in widths.items() if width is not None}

    def example_inputs(self, batch_size: int) -> DenseInputs:
        """Zeros of the widths and dtypes the loader yields (tracing, export, shape checks)."""
        return DenseInputs(
            **{
                name: torch.zeros(batch_size, width, dtype=self.dtypes.get(name, torch.float32))
                for name, width in self.input_widths().items()
            }
        )

    def with_widths(self, **changes: Any) -> InputSpec:
        """This spec with some widths replaced (tests and benchmarks build models this way)."""
        return dataclasses.replace(self, widths=dataclasses.replace(self.widths, **changes))


@dataclasses.dataclass
class RecapBatch(Pipelineable):
    """One batch of examples, per rank: what the loader yields and the model consumes.

    ``labels`` and ``weights`` are ``[batch, tasks]`` with the columns in the model's task order
    (labels are matched to towers by name); at inference they have zero columns.

    Types as the loader yields them (``preprocess.downcast`` may narrow any feature):
    continuous and TwHIN embeddings float32, binary and discrete int64 (a dense feature the
    config does not rename has zero columns), labels and weights float32, extra features in
    their schema type as ``[batch, length]``, sparse ids int64 with int32 lengths.

    Attributes:
        inputs: The dense inputs.
        labels: ``[batch, tasks]`` float32.
        weights: ``[batch, tasks]`` float32 example weights.
        sparse_features: Ids for the large (torchrec) embedding tables, keyed by table name.
        extra_features: Everything else the config reads, by name: meta ids (meta__user_id,
            ...), features listed in seg_dense_schema.features, features made by
            extract_features.
    """

    inputs: DenseInputs
    labels: torch.Tensor
    weights: torch.Tensor
    sparse_features: KeyedJaggedTensor | None = None
    extra_features: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)

    @property
    def batch_size(self) -> int:
        return self.inputs.batch_size

    def map(self, function: Callable[[Any], Any]) -> RecapBatch:
        """A new batch with ``function`` applied to every tensor and to the KeyedJaggedTensor."""
        return RecapBatch(
            inputs=self.inputs.map(function),
            labels=function(self.labels),
            weights=function(self.weights),
            sparse_features=None
            if self.sparse_features is None
            else function(self.sparse_features),
            extra_features={name: function(value) for name, value in self.extra_features.items()},
        )

    def to(self, device: torch.device, non_blocking: bool = False) -> RecapBatch:
        return self.map(lambda value: value.to(device=device, non_blocking=non_blocking))

    def record_stream(self, stream: torch.Stream) -> None:
        tensors = [*self.inputs.present().values(), self.labels, self.weights]
        tensors += [*self.extra_features.values()]
        for tensor in tensors:
            tensor.record_stream(stream)
        if self.sparse_features is not None:
            self.sparse_features.record_stream(stream)

    def pin_memory(self) -> RecapBatch:
        return self.map(lambda value: value.pin_memory())
