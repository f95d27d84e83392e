"""The TwHIN model: a table per entity type, a trained vector per relation, translation scores
of positive and negative edges, and their binary cross-entropy.

For an edge (l, r, h) with relation vector t, the score is ``<e_l, e_h + t>``. Each edge is
scored against its negatives: the edge with its rhs (then its lhs) replaced by a random entity
of that table (global negatives) or by the node of another edge of the same relation in the
batch (in-batch negatives). The edge's loss is ``BCE(positive, 1)`` plus the weighted mean of
``BCE(negative, 0)`` over its negatives, so positives and negatives weigh alike whatever their
numbers; a batch's loss is the sum of its edges' losses over ``edges_per_rank``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F  # noqa: N812 - the usual name
import torchrec
from torch import nn
from torch.distributed._shard.sharded_tensor import ShardedTensor
from torchrec.modules.embedding_configs import DataType, PoolingType

from projects.twhin.batch import EdgeBatch
from projects.twhin.model.config import DataType as TableDataType
from projects.twhin.model.config import TwhinModelConfig

_TORCHREC_DATA_TYPES = {TableDataType.FP32: DataType.FP32, TableDataType.FP16: DataType.FP16}
# Rows initialised per seeded block: a shard's values depend on the seed and its coordinates
# only, never on how the table is split across ranks.
_INIT_BLOCK_ROWS = 65_536


class TwhinModel(nn.Module):
    """Entity tables (``tables``, a torchrec EmbeddingBagCollection) and relation vectors.

    Args:
        config: Tables and relations.
        device: Where the tables are built; ``meta`` (default) leaves them to sharding.
    """

    def __init__(
        self,
        config: TwhinModelConfig,
        device: torch.device = torch.device("meta"),  # noqa: B008 - immutable
    ) -> None:
        super().__init__()
        self.table_names = [table.name for table in config.embeddings.tables]
        self.relation_names = [relation.name for relation in config.relations]
        self.embedding_dim = config.embeddings.embedding_dim
        self.tables = torchrec.EmbeddingBagCollection(
            tables=[
                torchrec.EmbeddingBagConfig(
                    name=table.name,
                    embedding_dim=table.embedding_dim,
                    num_embeddings=table.num_embeddings,
                    feature_names=[table.name],
                    pooling=PoolingType.SUM,
                    data_type=_TORCHREC_DATA_TYPES[table.data_type],
                )
                for table in config.embeddings.tables
            ],
            device=device,
        )
        # Zero translations: training starts from plain dot products and learns the offsets.
        self.relations = nn.Parameter(torch.zeros(len(config.relations), self.embedding_dim))

    def scores(self, batch: EdgeBatch) -> dict[str, torch.Tensor]:
        """Scores of every edge and its negatives.

        Returns:
            ``positive`` ``[edges]``; ``negative`` ``[edges, n]`` with ``negative_weight`` (0 for
            a missing in-batch negative); ``rhs_negative`` and ``rhs_negative_weight``, the
            columns that replace the rhs (link prediction ranks the rhs among them).
        """
        pooled = self.tables(batch.nodes).values()
        # Each bag is non-empty in one table only: the sum over tables is its vector.
        vectors = pooled.reshape(pooled.shape[0], -1, self.embedding_dim).sum(dim=1).float()
        bags = vectors.reshape(batch.relations.shape[0], -1, self.embedding_dim)
        lhs, rhs = bags[:, 0], bags[:, 1]
        # Shape arithmetic, not control flow: torchrec's pipeline traces this forward.
        half = (bags.shape[1] - 2) // 2
        negative_rhs, negative_lhs = bags[:, 2 : 2 + half], bags[:, 2 + half :]
        translation = self.relations[batch.relations]
        translated_rhs = rhs + translation
        positive = (lhs * translated_rhs).sum(-1)
        global_rhs = (lhs[:, None] * (negative_rhs + translation[:, None])).sum(-1)
        global_lhs = (negative_lhs * translated_rhs[:, None]).sum(-1)
        in_batch_rhs = (lhs[:, None] * (rhs[batch.in_batch_index] + translation[:, None])).sum(-1)
        in_batch_lhs = (lhs[batch.in_batch_index] * translated_rhs[:, None]).sum(-1)
        ones = torch.ones_like(global_rhs)
        return {
            "positive": positive,
            "negative": torch.cat([global_rhs, global_lhs, in_batch_rhs, in_batch_lhs], dim=1),
            "negative_weight": torch.cat(
                [ones, ones, batch.in_batch_weight, batch.in_batch_weight], dim=1
            ),
            "rhs_negative": torch.cat([global_rhs, in_batch_rhs], dim=1),
            "rhs_negative_weight": torch.cat([ones, batch.in_batch_weight], dim=1),
        }

    def forward(self, batch: EdgeBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``(loss, outputs)``: outputs hold the detached scores and ``loss``."""
        scores = self.scores(batch)
        positive_loss = F.binary_cross_entropy_with_logits(
            scores["positive"], torch.ones_like(scores["positive"]), reduction="none"
        )
        weights = scores["negative_weight"]
        negative_loss = F.binary_cross_entropy_with_logits(
            scores["negative"], torch.zeros_like(scores["negative"]), reduction="none"
        )
        negative_mean = (negative_loss * weights).sum(-1) / weights.sum(-1).clamp(min=1.0)
        loss = (positive_loss + negative_mean).sum() / batch.edges_per_rank
        outputs = {name: value.detach() for name, value in scores.items()}
        outputs["loss"] = loss.detach()
        return loss, outputs


def initialize_tables(model: TwhinModel, seed: int) -> None:
    """Fills every table (whole or this rank's shards) with uniform values in
    ``+-sqrt(1 / rows)`` (torchrec's default range) that depend only on the seed, the table and
    each value's place in it, so a job starts from the same weights on any number of ranks.
    """
    state = model.tables.state_dict()
    for index, name in enumerate(model.table_names):
        weight = state[f"embedding_bags.{name}.weight"]
        rows, dim = weight.shape
        bound = math.sqrt(1.0 / rows)
        if isinstance(weight, ShardedTensor):
            pieces = [
                (shard.tensor, shard.metadata.shard_offsets) for shard in weight.local_shards()
            ]
        elif isinstance(weight, torch.Tensor):
            pieces = [(weight, [0, 0])]
        else:
            raise TypeError(f"table {name}: cannot initialise a {type(weight).__name__}")
        for tensor, (row, column) in pieces:
            _fill_block(tensor, row, column, dim, bound, (seed, index))


def _fill_block(
    tensor: torch.Tensor, row: int, column: int, dim: int, bound: float, key: tuple[int, int]
) -> None:
    count, width = tensor.shape
    with torch.no_grad():
        for block in range(row // _INIT_BLOCK_ROWS, (row + count - 1) // _INIT_BLOCK_ROWS + 1):
            start = block * _INIT_BLOCK_ROWS
            generator = torch.Generator().manual_seed(hash((key, block)) & (2**62 - 1))
            values = torch.rand(_INIT_BLOCK_ROWS, dim, generator=generator) * 2 * bound - bound
            first, last = max(row, start), min(row + count, start + _INIT_BLOCK_ROWS)
            tensor[first - row : last - row].copy_(
                values[first - start : last - start, column : column + width]
            )
