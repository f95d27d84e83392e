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

import dataclasses
from typing import Any

import torch
from torch import nn
from torch.fx._symbolic_trace import is_fx_symbolic_tracing
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from projects.home.recap.inputs import TWHIN_EMBEDDINGS, DenseInputs, InputSpec, InputWidths
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


@dataclasses.dataclass(frozen=True)
class ParameterGroups:
    """The model's trainable parameters by the part that owns them, found by module, not name.

    The optimizer gives each group its own learning rate; matching by object identity keeps a
    task named like an internal module (``backbone``, ``dense``, ``towers``) in its own tower.

    Attributes:
        backbone: Every dense parameter outside the towers: featurization, small embeddings,
            TwHIN LayerNorms, position debias and the backbone network.
        towers: Each tower's parameters (network and affine map), by task name in model order.
        large_tables: The large tables' parameters by table name, as the (possibly sharded)
            collection reports them.
    """

    backbone: list[torch.Tensor]
    towers: dict[str, list[torch.Tensor]]
    large_tables: dict[str, torch.Tensor]


class DenseRankingModel(nn.Module):
    """Everything but the large tables: featurization, small embeddings, TwHIN LayerNorms,
    position debias, backbone, towers, probabilities and calibration.

    It takes tensors (the pooled large-embedding vectors among them), so it is what
    ``torch.compile`` and ``torch.export`` see.

    Attributes:
        task_names: Model tasks in output order.
        widths: The input widths it was built for.
        return_backbone: Also output ``backbone``, the activations the towers read.
    """

    def __init__(self, config: ModelConfig, spec: InputSpec, *, return_backbone: bool = False):
        super().__init__()
        self.task_names = tuple(config.tasks)
        self.widths = spec.widths
        self.return_backbone = return_backbone
        _check_discrete_columns(config, spec.widths)

        layout = self._build_input(config, spec)
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
        self.calibration = NumericCalibration(
            calibration_log_ratios(self.task_names, spec.task_sampling)
        )

    def _build_input(self, config: ModelConfig, spec: InputSpec) -> InputLayout:
        """Builds the modules that assemble the input; returns its layout."""
        widths = spec.widths
        self.featurization = build_featurization(config.featurization_config, spec)
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

        unknown = sorted(set(widths.embeddings) - set(TWHIN_EMBEDDINGS))
        if unknown:
            raise ModelInputError(
                f"the input widths name embeddings {unknown}; the model reads only "
                f"{list(TWHIN_EMBEDDINGS)}"
            )
        # In TWHIN_EMBEDDINGS order, whatever order the spec lists them in: it fixes the columns.
        self.twhin_norms = TwhinNorms(
            {
                name: widths.embeddings[name]
                for name in TWHIN_EMBEDDINGS
                if name in widths.embeddings
            }
        )
        width += self.twhin_norms.out_features

        self.position_debias = None
        if config.position_debias_config is not None:
            self.position_debias = PositionDebias(config.position_debias_config)
            embedding_segments.append((width, self.position_debias.out_features))
            width += self.position_debias.out_features

        self._reads = self._inputs_read(widths)
        return InputLayout(width, tuple(embedding_segments))

    def _inputs_read(self, widths: InputWidths) -> dict[str, tuple[int, str]]:
        """Each DenseInputs field the forward reads: its width and why it is read."""
        reads = {"continuous_features": (widths.continuous, "always")}
        if "binary" in self.featurization.concat:
            reads["binary_features"] = (widths.binary, "feature_names_to_concat")
        if (
            self.small_embeddings is not None
            or self.position_debias is not None
            or "discrete" in self.featurization.concat
        ):
            reads["discrete_features"] = (
                widths.discrete,
                "small_embeddings, position_debias_config or feature_names_to_concat",
            )
        for name in self.twhin_norms.norms:
            reads[name] = (widths.embeddings[name], "the input spec has it")
        return reads

    def forward(
        self, inputs: DenseInputs, large_embeddings: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """Scores a batch.

        Args:
            inputs: The dense inputs, each ``[batch, width]`` as in ``widths``. Discrete
                features are needed by small embeddings, position debias and concatenation of
                ``discrete``; each TwHIN embedding of the spec is needed.
            large_embeddings: Pooled large-table vectors ``[batch, sum of table widths]``.

        Returns:
            ``logits``, ``probabilities``, ``calibrated_probabilities``: ``[batch, tasks]`` fp32;
            ``backbone`` too when ``return_backbone``.
        """
        self._check_inputs(inputs)
        parts = [self.featurization(inputs)]
        if self.small_embeddings is not None:
            parts.append(self.small_embeddings(inputs.discrete_features))
        if self.large_embedding_widths:
            if large_embeddings is None:
                raise ModelInputError(
                    "the model has large embedding tables but got no pooled vectors"
                )
            parts.append(large_embeddings.to(torch.float32))
        parts.extend(
            self.twhin_norms({name: getattr(inputs, name) for name in self.twhin_norms.norms})
        )
        if self.position_debias is not None:
            parts.append(self.position_debias(inputs.discrete_features))
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

    def _check_inputs(self, inputs: DenseInputs) -> None:
        # Which inputs are read is fixed at build time and shapes are static (batch aside), so
        # these checks cost nothing once compiled.
        for name, (_, why) in self._reads.items():
            if getattr(inputs, name) is None:
                raise ModelInputError(f"the model reads {name} ({why}) but the batch has none")
        if is_fx_symbolic_tracing():
            # torchrec's train pipelines trace the forward with symbolic shapes, which cannot
            # be compared; the real batches are checked when they run.
            return
        for name, (width, _) in self._reads.items():
            tensor = getattr(inputs, name)
            if tensor.dim() != 2 or tensor.shape[1] != width:
                raise ModelInputError(
                    f"{name} should be [batch, {width}] as the model was built for, got "
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
        self, inputs: DenseInputs, sparse_features: KeyedJaggedTensor | None = None
    ) -> dict[str, torch.Tensor]:
        """Scores a batch; ``inputs`` as in :meth:`DenseRankingModel.forward`,
        ``sparse_features``: the ids of every large table, keyed by table name."""
        pooled = None
        if self.large_embeddings is not None:
            if sparse_features is None:
                raise ModelInputError(
                    f"the model has large embedding tables {self.large_embeddings.table_names} "
                    "but the batch has no sparse_features"
                )
            pooled = self.large_embeddings(sparse_features)
        return self.dense(inputs, pooled)

    def parameter_groups(self) -> ParameterGroups:
        """The trainable parameters by owner: backbone, each tower by task, large tables.

        Call it on the model as it will be trained (after sharding replaced the tables'
        collection): groups hold the parameter objects themselves.
        """
        towers = {
            task: list(self.dense.towers[module_key(task)].parameters()) for task in self.task_names
        }
        in_towers = {id(parameter) for parameters in towers.values() for parameter in parameters}
        backbone = [p for p in self.dense.parameters() if id(p) not in in_towers]
        large_tables = (
            self.large_embeddings.table_parameters() if self.large_embeddings is not None else {}
        )
        return ParameterGroups(backbone=backbone, towers=towers, large_tables=large_tables)


def build_ranking_model(
    model_config: ModelConfig,
    spec: InputSpec,
    *,
    large_embedding_device: torch.device = torch.device("meta"),  # noqa: B008 - immutable
    return_backbone: bool = False,
) -> MultiTaskRankingModel:
    """Builds the ranker for the input the data stage describes.

    Args:
        model_config: The model.
        spec: Its input: widths after preprocessing (TwHIN embeddings among them), sampling
            rates for calibration, the continuous columns' origin (for z-score statistics).
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
    dense = DenseRankingModel(model_config, spec, return_backbone=return_backbone)
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


def _check_discrete_columns(config: ModelConfig, widths: InputWidths) -> None:
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
