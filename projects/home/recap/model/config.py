"""The ranker's architecture: featurization, backbone, one tower per task, extras."""

from __future__ import annotations

import enum
from collections.abc import Iterable
from typing import Any

import pydantic

from projects.home.recap.embedding.config import (
    LargeEmbeddingsConfig,
    SmallEmbeddingsConfig,
)
from projects.home.recap.inputs import TWHIN_EMBEDDINGS
from tml.core.config import BaseConfig, ConfigValueError, Field


class DropoutConfig(BaseConfig):
    """Dropout after each hidden activation."""

    rate: float = Field(0.1, gt=0.0, lt=1.0, description="Fraction of activations dropped.")


class LayerNormConfig(BaseConfig):
    """Layer normalisation over the last axis."""

    epsilon: pydantic.NonNegativeFloat = Field(
        1e-3, description="Added to the variance to avoid dividing by zero."
    )
    axis: int = Field(-1, description="Axis to normalise; only -1 (features) is supported.")
    center: bool = Field(True, description="Learn a bias; must equal scale.")
    scale: bool = Field(True, description="Learn a gain; must equal center.")

    @pydantic.model_validator(mode="after")
    def _check_supported(self) -> LayerNormConfig:
        if self.axis != -1:
            raise ValueError(f"axis must be -1 (normalise the feature axis), got {self.axis}")
        if self.center != self.scale:
            raise ValueError(
                f"center and scale must be equal (both learned or neither), got "
                f"center={self.center}, scale={self.scale}"
            )
        return self


class BatchNormConfig(BaseConfig):
    """Batch normalisation (batch statistics per rank, running statistics averaged over the ranks
    at every checkpoint and evaluation; see the README)."""

    affine: bool = Field(True, description="Learn a gain and a bias.")
    momentum: float = Field(
        0.1, gt=0.0, le=1.0, description="Weight of the newest batch in the running statistics."
    )
    epsilon: pydantic.PositiveFloat = Field(
        1e-5, description="Added to the variance to avoid dividing by zero."
    )


class MlpConfig(BaseConfig):
    """Linear -> [BatchNorm] -> ReLU -> [Dropout] per hidden layer, then a last Linear."""

    layer_sizes: list[pydantic.PositiveInt] = Field(
        min_length=1, description="Width of every Linear layer; the last one is the output."
    )
    batch_norm: BatchNormConfig | None = Field(
        None, description="Batch norm after each hidden Linear."
    )
    dropout: DropoutConfig | None = Field(None, description="Dropout after each hidden ReLU.")
    final_layer_activation: bool = Field(False, description="Apply ReLU after the last Linear too.")

    @property
    def out_features(self) -> int:
        """Width of the output: the last layer's."""
        return self.layer_sizes[-1]

    def logit_problem(self) -> str | None:
        """Why this network's output is not one unit (a logit), or None when it is."""
        return None if self.out_features == 1 else f"layer_sizes ends in {self.out_features}"


class DcnConfig(BaseConfig):
    """Deep & Cross Network: ``poly_degree`` cross layers, optionally with an MLP."""

    poly_degree: pydantic.PositiveInt = Field(description="Number of cross layers.")
    projection_dim: pydantic.PositiveInt | None = Field(
        None, description="Low-rank factorisation of each cross layer's matrix (U V^T)."
    )
    parallel_mlp: MlpConfig | None = Field(
        None, description="An MLP beside (or after) the cross network; null: cross layers only."
    )
    use_parallel: bool = Field(
        True,
        description="true: the MLP sees the input and its output is concatenated with the cross "
        "network's; false: the MLP is stacked on the cross network.",
    )
    output_mlp: MlpConfig | None = Field(None, description="An MLP on top of everything.")

    def logit_problem(self) -> str | None:
        """Why this network's output is not one unit (a logit), or None when it is."""
        if self.output_mlp is not None:
            return _prefixed("output_mlp", self.output_mlp.logit_problem())
        if self.parallel_mlp is not None and not self.use_parallel:
            return _prefixed("parallel_mlp", self.parallel_mlp.logit_problem())
        return "a DCN tower's cross network is as wide as its input; add an output_mlp ending in 1"


class MaskBlockConfig(BaseConfig):
    """One MaskBlock of MaskNet (Wang et al. 2021)."""

    output_size: pydantic.PositiveInt = Field(description="Width of the block's output.")
    reduction_factor: pydantic.PositiveFloat | None = Field(
        None,
        description="Mask hidden width = int(mask input width * reduction_factor).",
        one_of="aggregation",
    )
    aggregation_size: pydantic.PositiveInt | None = Field(
        None, description="Mask hidden width, given directly.", one_of="aggregation"
    )
    input_layer_norm: bool = Field(False, description="LayerNorm the block's input first.")


class MaskNetConfig(BaseConfig):
    """MaskNet: mask blocks in parallel (concatenated) or in series, optionally an MLP on top."""

    mask_blocks: list[MaskBlockConfig] = Field(min_length=1, description="The blocks, in order.")
    mlp: MlpConfig | None = Field(None, description="MLP applied to the blocks' output.")
    use_parallel: bool = Field(
        False, description="true: every block sees the input; false: blocks are chained."
    )

    def logit_problem(self) -> str | None:
        """Why this network's output is not one unit (a logit), or None when it is."""
        if self.mlp is not None:
            return _prefixed("mlp", self.mlp.logit_problem())
        # A block's LayerNorm over a single unit outputs a constant, so the logit needs the MLP.
        return "a MaskNet tower needs an mlp ending in 1 (its blocks end in a LayerNorm)"


class DlrmConfig(BaseConfig):
    """DLRM: bottom MLP over dense features, pairwise dot interaction, top MLP."""

    bottom_mlp: MlpConfig = Field(
        description="MLP over the dense input; its output width must equal the embedding width."
    )
    top_mlp: MlpConfig = Field(description="MLP over the interaction output.")

    @property
    def vector_width(self) -> int:
        """The width every interacted vector has: the bottom MLP's output and each embedding."""
        return self.bottom_mlp.out_features

    def logit_problem(self) -> str | None:
        """Why this network's output is not one unit (a logit), or None when it is."""
        return _prefixed("top_mlp", self.top_mlp.logit_problem())


def _prefixed(field: str, problem: str | None) -> str | None:
    # Problems of a nested MLP read as a path from the variant: "top_mlp.layer_sizes ends in 2".
    return None if problem is None else f"{field}.{problem}"


# The architecture variants; each one answers logit_problem() for itself.
Architecture = MlpConfig | DcnConfig | MaskNetConfig | DlrmConfig


class AffineMap(BaseConfig):
    """``logit * scale + bias``, widening the range of representable probabilities."""

    scale: float = Field(1.0, description="Multiplies the logit.")
    bias: float = Field(0.0, description="Added to the scaled logit.")


class TaskModel(BaseConfig):
    """An architecture usable as a task tower or as the shared backbone."""

    mlp_config: MlpConfig | None = Field(None, description="An MLP.", one_of="architecture")
    dcn_config: DcnConfig | None = Field(
        None, description="A Deep & Cross Network.", one_of="architecture"
    )
    dlrm_config: DlrmConfig | None = Field(None, description="A DLRM.", one_of="architecture")
    mask_net_config: MaskNetConfig | None = Field(
        None, description="A MaskNet.", one_of="architecture"
    )
    affine_map: AffineMap | None = Field(
        None, description="Affine map of the tower's logit (towers only)."
    )
    pos_weight: pydantic.PositiveFloat = Field(
        1.0, description="Weight of positive examples in this task's loss (towers only)."
    )

    def architecture(self) -> tuple[str, Architecture]:
        """The chosen architecture: its field name (the builder table's key) and its config."""
        return _chosen_variant(self, "architecture")


class Log1pAbsConfig(BaseConfig):
    """``sign(x) * log1p(|x|)`` of the continuous features."""

    def parameter_sources(self) -> list[str]:
        """The parts of this transform with trainable parameters: none."""
        return []


class ClipLog1pAbsConfig(BaseConfig):
    """``sign(x) * log1p(|x|)``, clamped to +-clip_magnitude."""

    clip_magnitude: pydantic.NonNegativeFloat = Field(
        3e38, description="Bound on the transformed values."
    )

    def parameter_sources(self) -> list[str]:
        """The parts of this transform with trainable parameters: none."""
        return []


class ZScoreLogConfig(BaseConfig):
    """``(log1p-transform(x) - mean) / std`` with statistics from a feature analysis file."""

    analysis_path: str = Field(
        description="JSON file of per-column mean and standard deviation of the log1p-transformed "
        "continuous feature, one entry per column of the schema feature before "
        "truncate_and_slice (format in docs/model.md)."
    )
    schema_path: str | None = Field(
        None,
        description="Accepted only as null, for configs written for the original: the "
        "statistics file names the schema feature it describes, so no second schema is needed.",
    )
    clip_magnitude: pydantic.NonNegativeFloat = Field(
        5.0, description="Bound on the normalised values."
    )
    use_batch_norm: bool = Field(False, description="BatchNorm1d after normalisation.")
    use_renorm: bool = Field(
        False, description="Batch renormalisation; not supported by torch, must be false."
    )
    use_bq_stats: bool = Field(
        False,
        description="Read BigQuery-partitioned statistics; not supported, must be false.",
    )

    @pydantic.model_validator(mode="after")
    def _check_supported(self) -> ZScoreLogConfig:
        if self.use_renorm:
            raise ValueError("use_renorm is not supported (torch has no batch renormalisation)")
        if self.schema_path is not None:
            raise ConfigValueError(
                "schema_path is not supported: the statistics file names the schema feature it "
                "describes and covers its columns before truncate_and_slice (see docs/model.md)",
                ("schema_path",),
            )
        if self.use_bq_stats:
            raise ValueError(
                "use_bq_stats is not supported; export the statistics to analysis_path"
            )
        return self

    def parameter_sources(self) -> list[str]:
        """The parts of this transform with trainable parameters (its batch norm is affine)."""
        return ["featurization batch norm"] if self.use_batch_norm else []


class DoubleNormLogConfig(BaseConfig):
    """log1p transform, optional batch norm, clipping, then optional layer norm."""

    batch_norm_config: BatchNormConfig | None = Field(
        None, description="Batch norm of the log-transformed continuous features."
    )
    clip_magnitude: pydantic.NonNegativeFloat = Field(
        5.0, description="Bound on the normalised continuous values."
    )
    layer_norm_config: LayerNormConfig | None = Field(
        None, description="Layer norm over continuous ++ concatenated features."
    )

    def parameter_sources(self) -> list[str]:
        """The parts of this transform with trainable parameters."""
        sources = []
        if self.batch_norm_config is not None and self.batch_norm_config.affine:
            sources.append("featurization batch norm")
        if self.layer_norm_config is not None and self.layer_norm_config.center:
            sources.append("featurization layer norm")
        return sources


# The continuous-feature transforms; each one answers parameter_sources() for itself.
Transform = Log1pAbsConfig | ClipLog1pAbsConfig | ZScoreLogConfig | DoubleNormLogConfig


class FeaturizationConfig(BaseConfig):
    """How continuous features become model input; exactly one transform."""

    log1p_abs_config: Log1pAbsConfig | None = Field(
        None, description="log1p transform only.", one_of="featurization"
    )
    clip_log1p_abs_config: ClipLog1pAbsConfig | None = Field(
        None, description="log1p transform, clipped.", one_of="featurization"
    )
    z_score_log_config: ZScoreLogConfig | None = Field(
        None, description="log1p transform, z-scored from statistics.", one_of="featurization"
    )
    double_norm_log_config: DoubleNormLogConfig | None = Field(
        None, description="log1p, batch norm, clip, layer norm.", one_of="featurization"
    )
    feature_names_to_concat: list[str] = Field(
        ["binary"],
        description="Features concatenated raw after the transformed continuous features "
        "(binary, discrete).",
    )

    @pydantic.field_validator("feature_names_to_concat")
    @classmethod
    def _check_names(cls, names: list[str]) -> list[str]:
        unknown = [name for name in names if name not in CONCATENABLE_FEATURES]
        if unknown:
            raise ValueError(
                f"cannot concatenate {unknown}; choose from {sorted(CONCATENABLE_FEATURES)}"
            )
        return names

    def transform(self) -> tuple[str, Transform]:
        """The chosen transform: its field name (the builder table's key) and its config."""
        return _chosen_variant(self, "featurization")


CONCATENABLE_FEATURES = frozenset({"binary", "discrete"})


class PositionDebiasConfig(BaseConfig):
    """A learned embedding of the served position, dropped at random while training."""

    max_position: pydantic.PositiveInt = Field(
        256, description="Positions at or past this share the last bucket."
    )
    num_dims: pydantic.PositiveInt = Field(64, description="Width of the position embedding.")
    drop_probability: float = Field(
        0.5, ge=0.0, le=1.0, description="Chance that a training example sees the null position."
    )
    position_feature_index: pydantic.NonNegativeInt = Field(
        description="Column of the discrete features holding the position."
    )


class MultiTaskType(enum.StrEnum):
    """How towers share computation."""

    SHARE_NONE = "share_none"  # each tower sees the input; no backbone
    SHARE_ALL = "share_all"  # towers see the backbone's output
    SHARE_PARTIAL = "share_partial"  # towers see input ++ backbone output


class StratifierConfig(BaseConfig):
    """A discrete column emitted with the outputs so metrics can be sliced by its value."""

    name: str = Field(description="Name of the slice in metric names.")
    index: pydantic.NonNegativeInt = Field(description="Column of the discrete features.")
    value: int = Field(description="Value of that column selecting the slice.")


class ModelConfig(BaseConfig):
    """The multi-task ranking model."""

    tasks: dict[str, TaskModel] = Field(
        min_length=1,
        description="One tower per task, in output order; each name must be a data task.",
    )
    large_embeddings: LargeEmbeddingsConfig | None = Field(
        None, description="Sharded torchrec embedding tables over sparse ids."
    )
    small_embeddings: SmallEmbeddingsConfig | None = Field(
        None, description="Small tables over columns of the discrete features."
    )
    position_debias_config: PositionDebiasConfig | None = Field(
        None, description="Position debias embedding."
    )
    featurization_config: FeaturizationConfig | None = Field(
        None,
        description="Continuous-feature transform; null feeds the (cleaned) raw values and the "
        "binary features.",
    )
    multi_task_type: MultiTaskType = Field(
        MultiTaskType.SHARE_NONE, description="How towers share computation."
    )
    backbone: TaskModel | None = Field(
        None, description="Shared network for share_all and share_partial."
    )
    stratifiers: list[StratifierConfig] | None = Field(
        None, description="Discrete columns and values to slice metrics by."
    )

    @pydantic.model_validator(mode="after")
    def _check_backbone(self) -> ModelConfig:
        needs_backbone = self.multi_task_type != MultiTaskType.SHARE_NONE
        if needs_backbone and self.backbone is None:
            raise ConfigValueError(
                f"multi_task_type {self.multi_task_type.value} requires a backbone", ("backbone",)
            )
        if not needs_backbone and self.backbone is not None:
            raise ConfigValueError(
                "multi_task_type share_none forbids a backbone (use share_all or share_partial)",
                ("backbone",),
            )
        if self.backbone is not None and (
            self.backbone.affine_map is not None or self.backbone.pos_weight != 1.0
        ):
            raise ConfigValueError(
                "affine_map and pos_weight apply to towers, not to the backbone", ("backbone",)
            )
        return self

    @pydantic.model_validator(mode="after")
    def _check_task_names(self) -> ModelConfig:
        # Tower modules are keyed by the task name with "." replaced by "__".
        seen: dict[str, str] = {}
        for task in self.tasks:
            key = module_key(task)
            if not task or key in seen:
                raise ConfigValueError(
                    f"task name clashes with '{seen.get(key)}' once dots become '__'"
                    if task
                    else "task names must not be empty",
                    ("tasks", task),
                )
            seen[key] = task
        return self

    @pydantic.model_validator(mode="after")
    def _check_towers_end_in_a_logit(self) -> ModelConfig:
        for task, tower in self.tasks.items():
            variant, architecture = tower.architecture()
            problem = architecture.logit_problem()
            if problem is not None:
                raise ConfigValueError(
                    f"a tower must end in a single unit (its logit); {problem}",
                    ("tasks", task, variant),
                )
        return self

    @pydantic.model_validator(mode="after")
    def _check_dlrm(self) -> ModelConfig:
        # DLRM interacts the bottom MLP's output with every embedding vector by dot products, so
        # all of them must share one width; TwHIN embeddings are dense features in this model.
        networks: list[tuple[tuple[str, ...], TaskModel | None]] = [(("backbone",), self.backbone)]
        networks += [(("tasks", task), tower) for task, tower in self.tasks.items()]
        vectors = self.embedding_vector_widths()
        for where, network in networks:
            if network is None or network.dlrm_config is None:
                continue
            if where[0] == "tasks" and self.multi_task_type == MultiTaskType.SHARE_ALL:
                raise ConfigValueError(
                    "a DLRM tower under share_all sees only the backbone output, which holds no "
                    "embedding vectors to interact; use DLRM as the backbone, or share_none / "
                    "share_partial",
                    (*where, "dlrm_config"),
                )
            if not vectors:
                raise ConfigValueError(
                    "DLRM needs embedding vectors to interact: configure large_embeddings, "
                    "small_embeddings or position_debias_config",
                    (*where, "dlrm_config"),
                )
            width = network.dlrm_config.vector_width
            mismatched = {name: dim for name, dim in vectors.items() if dim != width}
            if mismatched:
                raise ConfigValueError(
                    f"bottom_mlp ends in {width} units, so every embedding vector must be {width} "
                    f"wide; these are not: {mismatched}",
                    (*where, "dlrm_config", "bottom_mlp"),
                )
        return self

    def embedding_vector_widths(self) -> dict[str, int]:
        """Width of each learned embedding vector of the input, by name, in input order.

        These are what DLRM interacts: small tables, large tables, then the position embedding.
        """
        widths: dict[str, int] = {}
        for table in self.small_embeddings.tables if self.small_embeddings else []:
            widths[table.name] = table.embedding_dim
        for table in self.large_embeddings.tables if self.large_embeddings else []:
            widths[table.name] = table.embedding_dim
        if self.position_debias_config is not None:
            widths["position_debias"] = self.position_debias_config.num_dims
        return widths

    def shared_parameter_sources(self, data_features: Iterable[str]) -> list[str]:
        """What gives the model trainable parameters outside the towers (the backbone group).

        Args:
            data_features: The dense features the training data provides, by name (TwHIN
                LayerNorms exist for the embeddings among them).
        """
        sources = ["backbone"] if self.backbone is not None else []
        if self.featurization_config is not None:
            _, transform = self.featurization_config.transform()
            sources.extend(transform.parameter_sources())
        provided = set(data_features)
        sources.extend(f"{name} layer norm" for name in TWHIN_EMBEDDINGS if name in provided)
        if self.small_embeddings is not None:
            sources.append("small embeddings")
        if self.position_debias_config is not None:
            sources.append("position debias")
        return sources


def module_key(task: str) -> str:
    """The module name of a task's tower: its name with "." replaced by "__"."""
    return task.replace(".", "__")


def _chosen_variant(config: BaseConfig, group: str) -> tuple[str, Any]:
    # The one-of validator guarantees a variant on a validated config; a config made without
    # validation (model_construct) gets a clear error instead of a None deep in a builder.
    name = config.chosen(group)
    if name is None:
        choices = config._field_groups.get("one_of", {}).get(group, [])
        raise ConfigValueError(f"no {group} is set; set one of {choices}")
    return name, getattr(config, name)
