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

from projects.home.recap.inputs import DenseInputs, RecapBatch
from projects.home.recap.model.errors import ModelInputError
from projects.home.recap.model.ranking_model import MultiTaskRankingModel


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
            for name, weight in model.large_embeddings.table_weights().items():
                if weight.is_meta or type(weight) not in (torch.Tensor, nn.Parameter):
                    raise ModelInputError(
                        f"large table '{name}' is not materialised and unsharded "
                        f"({type(weight).__name__} on {weight.device}); gather it first"
                    )
                # The state dict's tensor shares the table's storage: serving reads the weights
                # trained (or loaded) into the model.
                self.tables.append(nn.Parameter(weight, requires_grad=False))
                self.table_names.append(name)

    def forward(
        self, inputs: DenseInputs, sparse_ids: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """Scores a batch; ``inputs`` as in :meth:`DenseRankingModel.forward`. ``sparse_ids``:
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
        return self.dense(inputs, pooled)


def servable_inputs(
    batch: RecapBatch, table_names: list[str]
) -> tuple[DenseInputs, torch.Tensor | None]:
    """The servable model's inputs for a batch as the loader yields it.

    Args:
        batch: A batch as the loader yields it.
        table_names: The large tables, in config order (``ServableRankingModel.table_names``).

    Returns:
        ``(inputs, sparse_ids)``, the arguments of :meth:`ServableRankingModel.forward`;
        ``sparse_ids`` is None when there are no tables.
    """
    if not table_names:
        return batch.inputs, None
    sparse = batch.sparse_features
    if sparse is None:
        raise ModelInputError(f"the batch has no sparse_features for tables {table_names}")
    by_key = sparse.to_dict()
    columns = []
    for name in table_names:
        if name not in by_key:
            raise ModelInputError(f"sparse_features has no key '{name}' (keys: {sparse.keys()})")
        lengths = by_key[name].lengths()
        if not bool(torch.all(lengths == 1)):
            raise ModelInputError(f"table '{name}' is not fed exactly one id per example")
        columns.append(by_key[name].values())
    return batch.inputs, torch.stack(columns, dim=1).long()


def export_ranking_model(
    servable: ServableRankingModel,
    inputs: DenseInputs,
    sparse_ids: torch.Tensor | None = None,
    *,
    dynamic_batch: bool = True,
) -> ExportedProgram:
    """Exports the servable ranker (eval mode) with ``torch.export``.

    Args:
        servable: The trained ranker in serving form (tables gathered).
        inputs: Example dense inputs fixing which inputs exist, their widths and types; with
            ``dynamic_batch`` the batch size must be at least 2 (export specialises 0 and 1).
        sparse_ids: Example ``[batch, tables]`` row ids, when the model has large tables.
        dynamic_batch: Let the program take any batch size.

    Returns:
        The program; call ``program.module()(inputs, sparse_ids)``, e.g. with
        ``*servable_inputs(batch, servable.table_names)``.
    """
    batch = Dim("batch", min=2) if dynamic_batch else None
    # dynamic_shapes mirrors the arguments' pytree: the registered dataclass flattens to its
    # present (not None) fields in declaration order, so one spec per present input.
    dense_shapes = [None if batch is None else {0: batch} for _ in inputs.present()]
    sparse_shapes = None if sparse_ids is None or batch is None else {0: batch}
    training = servable.training
    servable.eval()
    try:
        with torch.no_grad():
            return torch.export.export(
                servable,
                args=(inputs, sparse_ids),
                dynamic_shapes=(dense_shapes, sparse_shapes),
            )
    finally:
        # The servable shares the dense model; leave the caller's train/eval mode as it was.
        servable.train(training)
