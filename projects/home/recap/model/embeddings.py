"""Embedding inputs of the ranker: small tables over discrete columns, large torchrec tables over
sparse ids, and the LayerNorms of the precomputed TwHIN embeddings."""

from __future__ import annotations

import math

import torch
import torch.distributed.checkpoint as dcp
import torchrec
from torch import nn
from torchrec.modules.embedding_configs import PoolingType
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from projects.home.recap.embedding.config import (
    EmbeddingBagConfig,
    LargeEmbeddingsConfig,
    SmallEmbeddingsConfig,
)
from projects.home.recap.model.errors import ModelInputError
from tml.checkpoint import storage_reader


def init_embedding_(weight: torch.Tensor) -> None:
    """Uniform in +-sqrt(1 / rows), torchrec's default, for every table of the model alike."""
    bound = math.sqrt(1.0 / weight.shape[0])
    with torch.no_grad():
        weight.uniform_(-bound, bound)


class SmallEmbeddings(nn.Module):
    """One small table per configured discrete column, trained with the dense parameters.

    Values are taken modulo the table's rows (negative ones too), so any id is valid.

    Attributes:
        widths: Width of each table's vector, in config order.
        out_features: Sum of the widths.
    """

    def __init__(self, config: SmallEmbeddingsConfig):
        super().__init__()
        self.tables = nn.ModuleList(
            nn.Embedding(table.num_embeddings, table.embedding_dim) for table in config.tables
        )
        for table in self.tables:
            init_embedding_(table.weight)
        self.register_buffer(
            "columns", torch.tensor([table.index for table in config.tables]), persistent=False
        )
        self.rows = [table.num_embeddings for table in config.tables]
        self.widths = [table.embedding_dim for table in config.tables]
        self.out_features = sum(self.widths)

    def forward(self, discrete_features: torch.Tensor) -> torch.Tensor:
        ids = discrete_features[:, self.columns].long()
        vectors = [
            table(torch.remainder(ids[:, position], rows))
            for position, (table, rows) in enumerate(zip(self.tables, self.rows, strict=True))
        ]
        return torch.cat(vectors, dim=1) if len(vectors) > 1 else vectors[0]


class LargeEmbeddings(nn.Module):
    """The large tables as one torchrec EmbeddingBagCollection (sum pooling), at ``ebc``.

    Table ``t`` is fed by the KeyedJaggedTensor key ``t``, whose values must already be rows in
    ``[0, num_embeddings)`` (the data loader maps raw ids through ``vocab`` or by hashing).

    Attributes:
        tables: Each table's config, in config order.
        table_names: Table names in config order, the order of the output columns.
        widths: Each table's width, in the same order.
        out_features: Sum of the widths.
    """

    def __init__(self, config: LargeEmbeddingsConfig, device: torch.device):
        super().__init__()
        tables = [
            torchrec.EmbeddingBagConfig(
                name=table.name,
                embedding_dim=table.embedding_dim,
                num_embeddings=table.num_embeddings,
                feature_names=[table.name],
                pooling=PoolingType.SUM,
            )
            for table in config.tables
        ]
        self.ebc = torchrec.EmbeddingBagCollection(tables=tables, device=device)
        self.tables: list[EmbeddingBagConfig] = list(config.tables)
        self.table_names = [table.name for table in config.tables]
        self.widths = [table.embedding_dim for table in config.tables]
        self.out_features = sum(self.widths)

    def forward(self, sparse_features: KeyedJaggedTensor) -> torch.Tensor:
        # The KJT goes to the EBC untouched: torchrec's train pipelines find it by tracing and
        # overlap its input distribution with compute. Sharding may reorder the pooled keys, so
        # they are put back in config order by name.
        pooled = self.ebc(sparse_features).to_dict()
        return torch.cat([pooled[name] for name in self.table_names], dim=1)

    def table_weights(self) -> dict[str, torch.Tensor]:
        """Each table's whole weight as its state dict holds it, by table name, in config order.

        Unsharded, a tensor sharing storage with the parameter; sharded by torchrec, a
        ShardedTensor (or DTensor) whose local shards are this rank's rows. Loading into it
        (``torch.distributed.checkpoint.load``) writes the table in place. Reads the state dict
        because that is the one view torchrec keeps alike before and after sharding.
        """
        state = self.ebc.state_dict()
        # torchrec names a table's weight "embedding_bags.<table>.weight", sharded or not.
        return {name: state[f"embedding_bags.{name}.weight"] for name in self.table_names}

    def table_parameters(self) -> dict[str, torch.Tensor]:
        """Each table's trainable parameter by table name, as the (possibly sharded) collection
        reports them.

        After sharding, the sharded collection's own ``named_parameters`` is what
        DistributedModelParallel reports too, so these are the same objects the optimizer sees.
        """
        # torchrec names a table's weight "embedding_bags.<table>.weight", sharded or not.
        return {
            name.removeprefix("embedding_bags.").removesuffix(".weight"): parameter
            for name, parameter in self.ebc.named_parameters()
        }


class TwhinNorms(nn.Module):
    """A LayerNorm per TwHIN embedding the input spec has a width for."""

    def __init__(self, widths: dict[str, int]):
        super().__init__()
        self.norms = nn.ModuleDict({name: nn.LayerNorm(width) for name, width in widths.items()})
        self.out_features = sum(widths.values())

    def forward(self, embeddings: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        # TwHIN vectors may arrive down-cast, and missing values as NaN: LayerNorm runs in fp32
        # on cleaned values (one NaN would otherwise poison the whole batch's loss).
        return [
            norm(
                torch.nan_to_num(
                    embeddings[name].to(torch.float32), nan=0.0, posinf=0.0, neginf=0.0
                )
            )
            for name, norm in self.norms.items()
        ]


def load_pretrained_embeddings(large_embeddings: LargeEmbeddings | None) -> list[str]:
    """Loads every table with ``pretrained`` set from its torch.distributed.checkpoint directory.

    Works on unsharded tables and, collectively (every rank calls it), on sharded ones: the
    checkpoint's tensor is resharded into whatever shards this rank holds. Call it after the
    tables are materialised (sharded) and before restoring a training checkpoint, which wins.

    Args:
        large_embeddings: The model's large tables (``MultiTaskRankingModel.large_embeddings``,
            sharded in place once the model is), or None when it has none.

    Returns:
        Names of the tables loaded.

    Raises:
        ModelInputError: the snapshot lacks ``emb_name``, or its shape differs from the table's.
    """
    if large_embeddings is None:
        return []
    pretrained = [
        (table, table.pretrained)
        for table in large_embeddings.tables
        if table.pretrained is not None
    ]
    if not pretrained:
        return []
    weights = large_embeddings.table_weights()
    loaded = []
    for table, snapshot in pretrained:
        metadata = storage_reader(snapshot.embedding_snapshot_uri).read_metadata()
        stored = metadata.state_dict_metadata.get(snapshot.emb_name)
        if stored is None or not hasattr(stored, "size"):
            names = sorted(metadata.state_dict_metadata)
            raise ModelInputError(
                f"table '{table.name}': snapshot {snapshot.embedding_snapshot_uri} has no tensor "
                f"'{snapshot.emb_name}'; it has {names[:10]}{' ...' if len(names) > 10 else ''}"
            )
        expected = (table.num_embeddings, table.embedding_dim)
        if tuple(stored.size) != expected:
            raise ModelInputError(
                f"table '{table.name}': snapshot tensor '{snapshot.emb_name}' is "
                f"{tuple(stored.size)}, the table is {expected}"
            )
        # dcp.load fills the (possibly sharded) state-dict tensor in place; it shares storage
        # with the table's weight.
        dcp.load(
            {snapshot.emb_name: weights[table.name]},
            storage_reader=storage_reader(snapshot.embedding_snapshot_uri),
        )
        loaded.append(table.name)
    return loaded
