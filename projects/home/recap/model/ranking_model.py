"""The multi-task ranking model: input assembly, optional backbone, one tower per task.

``MultiTaskRankingModel`` = ``large_embeddings`` (a torchrec EmbeddingBagCollection, placed by
sharding) + ``dense`` (everything else: a pure dense module, the unit that is compiled and
exported). Input columns, in order::

    featurization(continuous, binary) ++ small embeddings ++ large embeddings
    ++ LayerNorm(user_embedding) ++ LayerNorm(user_eng_embedding) ++ LayerNorm(author_embedding)
    ++ position embedding

(each part present only when configured). Towers read that input (share_none), the backbone's
output (share_all), or both concatenated (share_partial).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.fx._symbolic_trace import is_fx_symbolic_tracing
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from projects.home.recap.data.batch import TWHIN_EMBEDDINGS, FeatureWidths
from projects.home.recap.data.config import RecapDataConfig
from projects.home.recap.model.architectures import build_task_network
from projects.home.recap.model.calibration import NumericCalibration, calibration_log_ratios
from projects.home.recap.model.config import ModelConfig, MultiTaskType, module_key
from projects.home.recap.model.embeddings import LargeEmbeddings, SmallEmbeddings, TwhinNorms
from projects.home.recap.model.errors import ModelInputError
from projects.home.recap.model.featurization import build_featurization
from projects.home.recap.model.input_layout import InputLayout
from projects.home.recap.model.position_debias import PositionDebias
from projects.home.recap.model.tower import Tower

# Keys of the model's output, each [batch, tasks] in model task order.
PREDICTIONS = ("logits", "probabilities", "calibrated_probabilities")


class DenseRankingModel(nn.Module):
    """Everything but the large tables: featurization, small embeddings, TwHIN LayerNorms,
    position debias, backbone, towers, probabilities and calibration.

    It takes plain tensors (the pooled large-embedding vectors among them), so it is what
    ``torch.compile`` and ``torch.export`` see.

    Attributes:
        task_names: Model tasks in output order.
        widths: The input widths it was built for.
        return_backbone: Also output ``backbone``, the activations the towers read.
    """

    def __init__(
        self,
        config: ModelConfig,
        data_config: RecapDataConfig,
        widths: FeatureWidths,
        *,
        return_backbone: bool = False,
    ):
        super().__init__()
        self.task_names = tuple(config.tasks)
        self.widths = widths
        self.return_backbone = return_backbone
        _check_discrete_columns(config, widths)

        layout = self._build_input(config, data_config, widths)
        self.in_features = layout.width
        self.multi_task_type = config.multi_task_type
        self.backbone = None
        tower_layout = layout
        if config.backbone is not None:
            self.backbone = build_task_network(config.backbone, layout)
            backbone_width = self.backbone.out_features
            tower_layout = (
                InputLayout(backbone_width)
                if config.multi_task_type == MultiTaskType.SHARE_ALL
                else layout.widened(backbone_width)
            )
        self.towers = nn.ModuleDict(
            {
                module_key(task): Tower(build_task_network(tower, tower_layout), tower.affine_map)
                for task, tower in config.tasks.items()
            }
        )
        self.calibration = NumericCalibration(calibration_log_ratios(self.task_names, data_config))

    def _build_input(
        self, config: ModelConfig, data_config: RecapDataConfig, widths: FeatureWidths
    ) -> InputLayout:
        """Builds the modules that assemble the input; returns its layout."""
        self.featurization = build_featurization(config.featurization_config, widths, data_config)
        width = self.featurization.out_features
        embedding_segments = []

        self.small_embeddings = None
        if config.small_embeddings is not None:
            self.small_embeddings = SmallEmbeddings(config.small_embeddings)
            for table_width in self.small_embeddings.widths:
                embedding_segments.append((width, table_width))
                width += table_width

        self.large_embedding_widths = [
            table.embedding_dim
            for table in (config.large_embeddings.tables if config.large_embeddings else [])
        ]
        for table_width in self.large_embedding_widths:
            embedding_segments.append((width, table_width))
            width += table_width

        renamed = data_config.seg_dense_schema.renamed_features
        twhin = [name for name in TWHIN_EMBEDDINGS if name in renamed]
        absent = [name for name in twhin if name not in widths.embeddings]
        if absent:
            raise ModelInputError(
                f"renamed_features names {absent} but the feature widths have no such embedding "
                f"(they have {sorted(widths.embeddings)})"
            )
        self.twhin_norms = TwhinNorms({name: widths.embeddings[name] for name in twhin})
        width += self.twhin_norms.out_features

        self.position_debias = None
        if config.position_debias_config is not None:
            self.position_debias = PositionDebias(config.position_debias_config)
            embedding_segments.append((width, self.position_debias.out_features))
            width += self.position_debias.out_features

        self.needs_discrete = (
            self.small_embeddings is not None
            or self.position_debias is not None
            or "discrete" in self.featurization.concat
        )
        return InputLayout(width, tuple(embedding_segments))

    def forward(
        self,
        continuous_features: torch.Tensor,
        binary_features: torch.Tensor,
        discrete_features: torch.Tensor | None = None,
        user_embedding: torch.Tensor | None = None,
        user_eng_embedding: torch.Tensor | None = None,
        author_embedding: torch.Tensor | None = None,
        large_embeddings: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Scores a batch.

        Args:
            continuous_features: ``[batch, widths.continuous]``.
            binary_features: ``[batch, widths.binary]``.
            discrete_features: ``[batch, widths.discrete]``; needed by small embeddings, position
                debias and concatenation of ``discrete``.
            user_embedding: ``[batch, width]`` when ``renamed_features`` names it; likewise
                ``user_eng_embedding`` and ``author_embedding``.
            large_embeddings: Pooled large-table vectors ``[batch, sum of table widths]``.

        Returns:
            ``logits``, ``probabilities``, ``calibrated_probabilities``: ``[batch, tasks]`` fp32;
            ``backbone`` too when ``return_backbone``.
        """
        twhin = {
            "user_embedding": user_embedding,
            "user_eng_embedding": user_eng_embedding,
            "author_embedding": author_embedding,
        }
        self._check_inputs(continuous_features, binary_features, discrete_features, twhin)
        parts = [self.featurization(continuous_features, binary_features, discrete_features)]
        if self.small_embeddings is not None:
            parts.append(self.small_embeddings(discrete_features))
        if self.large_embedding_widths:
            if large_embeddings is None:
                raise ModelInputError(
                    "the model has large embedding tables but got no pooled vectors"
                )
            parts.append(large_embeddings.to(torch.float32))
        parts.extend(self.twhin_norms(twhin))
        if self.position_debias is not None:
            parts.append(self.position_debias(discrete_features))
        x = torch.cat(parts, dim=1)

        if self.backbone is None:
            net = x
        elif self.multi_task_type == MultiTaskType.SHARE_ALL:
            net = self.backbone(x)
        else:
            net = torch.cat([x, self.backbone(x)], dim=1)

        logits = torch.cat([tower(net) for tower in self.towers.values()], dim=1)
        outputs = {
            "logits": logits,
            "probabilities": torch.sigmoid(logits),
            "calibrated_probabilities": self.calibration(logits),
        }
        if self.return_backbone:
            outputs["backbone"] = net
        return outputs

    def _check_inputs(
        self,
        continuous: torch.Tensor,
        binary: torch.Tensor,
        discrete: torch.Tensor | None,
        twhin: dict[str, torch.Tensor | None],
    ) -> None:
        # Shapes here are static (batch aside), so these checks cost nothing once compiled.
        expected = {"continuous_features": self.widths.continuous}
        given = {"continuous_features": continuous}
        if "binary" in self.featurization.concat:
            expected["binary_features"], given["binary_features"] = self.widths.binary, binary
        if self.needs_discrete:
            if discrete is None:
                raise ModelInputError(
                    "the model reads discrete_features (small_embeddings, position_debias_config "
                    "or feature_names_to_concat) but the batch has none"
                )
            expected["discrete_features"], given["discrete_features"] = (
                self.widths.discrete,
                discrete,
            )
        for name in self.twhin_norms.norms:
            tensor = twhin[name]
            if tensor is None:
                raise ModelInputError(
                    f"renamed_features names '{name}', so the model reads it, but the batch has "
                    "none"
                )
            expected[name], given[name] = self.widths.embeddings[name], tensor
        if is_fx_symbolic_tracing():
            # torchrec's train pipelines trace the forward with symbolic shapes, which cannot
            # be compared; the real batches are checked when they run.
            return
        for name, tensor in given.items():
            if tensor.dim() != 2 or tensor.shape[1] != expected[name]:
                raise ModelInputError(
                    f"{name} should be [batch, {expected[name]}] as the model was built for, got "
                    f"{list(tensor.shape)}"
                )


class MultiTaskRankingModel(nn.Module):
    """The ranker: large embedding tables (``large_embeddings.ebc``) feeding the dense model.

    ``forward`` is pure and traceable by torchrec's train pipelines: the KeyedJaggedTensor goes
    straight to the EmbeddingBagCollection.

    Attributes:
        task_names: Model tasks in output order.
    """

    def __init__(self, dense: DenseRankingModel, large_embeddings: LargeEmbeddings | None):
        super().__init__()
        self.large_embeddings = large_embeddings
        self.dense = dense
        self.task_names = dense.task_names

    @property
    def output_names(self) -> tuple[str, ...]:
        """Keys of ``forward``'s output."""
        return PREDICTIONS + (("backbone",) if self.dense.return_backbone else ())

    def forward(
        self,
        continuous_features: torch.Tensor,
        binary_features: torch.Tensor,
        discrete_features: torch.Tensor | None = None,
        user_embedding: torch.Tensor | None = None,
        user_eng_embedding: torch.Tensor | None = None,
        author_embedding: torch.Tensor | None = None,
        sparse_features: KeyedJaggedTensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Scores a batch; arguments as :meth:`DenseRankingModel.forward`, plus
        ``sparse_features``: the ids of every large table, keyed by table name."""
        pooled = None
        if self.large_embeddings is not None:
            if sparse_features is None:
                raise ModelInputError(
                    f"the model has large embedding tables {self.large_embeddings.table_names} "
                    "but the batch has no sparse_features"
                )
            pooled = self.large_embeddings(sparse_features)
        return self.dense(
            continuous_features,
            binary_features,
            discrete_features,
            user_embedding,
            user_eng_embedding,
            author_embedding,
            pooled,
        )


def build_ranking_model(
    model_config: ModelConfig,
    data_config: RecapDataConfig,
    widths: FeatureWidths,
    *,
    large_embedding_device: torch.device = torch.device("meta"),  # noqa: B008 - immutable
    return_backbone: bool = False,
) -> MultiTaskRankingModel:
    """Builds the ranker for inputs of the given widths.

    Args:
        model_config: The model.
        data_config: The data it trains on: TwHIN embeddings present (``renamed_features``),
            sampling rates for calibration, preprocessing (for z-score statistics).
        widths: Input widths after preprocessing.
        large_embedding_device: Where the large tables are built. ``meta`` (default) leaves
            them for sharding to place and materialise; a real device materialises them here.
        return_backbone: Also output the activations the towers read, as ``backbone``.

    Returns:
        The model, dense parameters on the CPU.
    """
    large = (
        LargeEmbeddings(model_config.large_embeddings, large_embedding_device)
        if model_config.large_embeddings is not None
        else None
    )
    dense = DenseRankingModel(model_config, data_config, widths, return_backbone=return_backbone)
    return MultiTaskRankingModel(dense, large)


def compile_dense(model: MultiTaskRankingModel, **options: Any) -> MultiTaskRankingModel:
    """Compiles the dense part in place with ``torch.compile`` (the fast path).

    Only ``model.dense`` is compiled, so sharded tables and torchrec's pipeline tracing are
    untouched and parameter names do not change. The first steps pay the compilation.

    Args:
        model: The ranker, before or after sharding.
        **options: Passed to ``torch.compile`` (e.g. ``dynamic=False``, ``mode=...``).

    Returns:
        ``model``.
    """
    model.dense.compile(**options)
    return model


def _check_discrete_columns(config: ModelConfig, widths: FeatureWidths) -> None:
    readers: list[tuple[str, int]] = []
    if config.small_embeddings is not None:
        readers += [(f"small table '{t.name}'", t.index) for t in config.small_embeddings.tables]
    if config.position_debias_config is not None:
        readers.append(("position debias", config.position_debias_config.position_feature_index))
    for stratifier in config.stratifiers or []:
        readers.append((f"stratifier '{stratifier.name}'", stratifier.index))
    for reader, column in readers:
        if column >= widths.discrete:
            raise ModelInputError(
                f"{reader} reads discrete column {column} but the discrete features have "
                f"{widths.discrete} columns"
            )
