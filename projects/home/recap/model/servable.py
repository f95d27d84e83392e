"""The servable ranker (everything but the loss) and its ``torch.export``.

Serving takes plain tensors. The large tables become ordinary embedding lookups over their
(gathered, unsharded) weights, fed one row id per example per table: ``sparse_ids`` is
``[batch, tables]`` int64 in config order. That matches the schema, whose id features hold one
id each; a table fed several ids per example (a multi-id bag) is not servable this way.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812 - the conventional name
from torch import nn
from torch.export import Dim, ExportedProgram

from projects.home.recap.data.batch import RecapBatch
from projects.home.recap.model.errors import ModelInputError
from projects.home.recap.model.ranking_model import MultiTaskRankingModel

# Dense inputs of the servable model, in its positional order; sparse_ids comes last.
DENSE_INPUTS = (
    "continuous_features",
    "binary_features",
    "discrete_features",
    "user_embedding",
    "user_eng_embedding",
    "author_embedding",
)


class ServableRankingModel(nn.Module):
    """The ranker in eval form for serving; shares the trained model's parameters.

    Args:
        model: A ranker whose large tables (if any) are materialised and unsharded on one
            device (gather sharded tables first, e.g. by loading a checkpoint into a model built
            with ``large_embedding_device=cpu``).
    """

    def __init__(self, model: MultiTaskRankingModel):
        super().__init__()
        self.dense = model.dense
        self.table_names: list[str] = []
        self.tables = nn.ParameterList()
        if model.large_embeddings is not None:
            bags = model.large_embeddings.ebc.embedding_bags
            for name in model.large_embeddings.table_names:
                weight = bags[name].weight
                if weight.is_meta or type(weight) not in (torch.Tensor, nn.Parameter):
                    raise ModelInputError(
                        f"large table '{name}' is not materialised and unsharded "
                        f"({type(weight).__name__} on {weight.device}); gather it first"
                    )
                self.tables.append(weight)
                self.table_names.append(name)

    def forward(
        self,
        continuous_features: torch.Tensor,
        binary_features: torch.Tensor,
        discrete_features: torch.Tensor | None = None,
        user_embedding: torch.Tensor | None = None,
        user_eng_embedding: torch.Tensor | None = None,
        author_embedding: torch.Tensor | None = None,
        sparse_ids: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Scores a batch; see :meth:`DenseRankingModel.forward`. ``sparse_ids``:
        ``[batch, tables]`` row ids, one per large table in config order."""
        pooled = None
        if len(self.tables) > 0:
            if (
                sparse_ids is None
                or sparse_ids.dim() != 2
                or sparse_ids.shape[1] != len(self.tables)
            ):
                raise ModelInputError(
                    f"sparse_ids should be [batch, {len(self.tables)}] row ids for tables "
                    f"{self.table_names}"
                )
            pooled = torch.cat(
                [F.embedding(sparse_ids[:, i], table) for i, table in enumerate(self.tables)],
                dim=1,
            )
        return self.dense(
            continuous_features,
            binary_features,
            discrete_features,
            user_embedding,
            user_eng_embedding,
            author_embedding,
            pooled,
        )


def servable_inputs(batch: RecapBatch, table_names: list[str]) -> dict[str, torch.Tensor]:
    """The servable model's keyword inputs for a training batch.

    Args:
        batch: A batch as the loader yields it.
        table_names: The large tables, in config order (``ServableRankingModel.table_names``).
    """
    inputs = {
        name: getattr(batch, name) for name in DENSE_INPUTS if getattr(batch, name) is not None
    }
    if table_names:
        sparse = batch.sparse_features
        if sparse is None:
            raise ModelInputError(f"the batch has no sparse_features for tables {table_names}")
        by_key = sparse.to_dict()
        columns = []
        for name in table_names:
            if name not in by_key:
                raise ModelInputError(
                    f"sparse_features has no key '{name}' (keys: {sparse.keys()})"
                )
            lengths = by_key[name].lengths()
            if not bool(torch.all(lengths == 1)):
                raise ModelInputError(f"table '{name}' is not fed exactly one id per example")
            columns.append(by_key[name].values())
        inputs["sparse_ids"] = torch.stack(columns, dim=1).long()
    return inputs


def export_ranking_model(
    model: MultiTaskRankingModel, example: RecapBatch, *, dynamic_batch: bool = True
) -> ExportedProgram:
    """Exports the servable ranker (eval mode) with ``torch.export``.

    Args:
        model: The trained ranker (tables gathered; see :class:`ServableRankingModel`).
        example: A batch fixing which inputs exist and their widths; with ``dynamic_batch`` its
            batch size must be at least 2 (export specialises sizes 0 and 1).
        dynamic_batch: Let the program take any batch size.

    Returns:
        The program; call ``program.module()(**servable_inputs(batch, table_names))``. Its
        inputs are keyword tensors named as in :class:`ServableRankingModel.forward`.
    """
    servable = ServableRankingModel(model)
    inputs = servable_inputs(example, servable.table_names)
    batch = Dim("batch", min=2) if dynamic_batch else None
    shapes = {name: ({0: batch} if batch is not None else None) for name in inputs}
    training = model.dense.training
    servable.eval()
    try:
        with torch.no_grad():
            return torch.export.export(servable, args=(), kwargs=inputs, dynamic_shapes=shapes)
    finally:
        # The servable shares the dense model; leave the caller's train/eval mode as it was.
        servable.train(training)
