"""Hands a trained TwHIN model to the ranker.

    python -m projects.twhin.export --config_path CFG [--checkpoint PATH] [--output_dir DIR]

(installed as ``tml-twhin-export``) writes, from the newest checkpoint by default, to
``<save_dir>/export/step_<N>/``:

* ``tables/``: a torch.distributed.checkpoint snapshot holding each table whole, under its
  table name. A recap large-embedding table loads one as ``pretrained: {emb_name: user,
  embedding_snapshot_uri: <export>/tables}`` (rows and width must match the TwHIN table's).
* ``vectors/<table>.parquet``: one row per entity, columns ``id`` (the entity's index, the ids
  of the edge files) and ``embedding`` (its vector, float32): the per-entity vectors that fill
  recap's ``twhin_*_embeddings`` columns by id.
* ``relations.parquet``: each relation's name and translation vector.
"""

from __future__ import annotations

import argparse
import logging
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torch.distributed.checkpoint as dcp

from projects.twhin.build import build_whole_model
from projects.twhin.config import TwhinConfig
from projects.twhin.job_folder import TwhinJobFolder
from projects.twhin.model.model import TwhinModel
from tml.checkpoint import load_weights, storage_writer
from tml.core.cli import exit_status
from tml.core.config import load_config_from_yaml
from tml.storage import AnyPath, as_path

logger = logging.getLogger(__name__)

TABLES = "tables"
VECTORS = "vectors"
RELATIONS = "relations.parquet"


def export_model(model: TwhinModel, output_dir: str | AnyPath) -> AnyPath:
    """Writes ``model``'s tables (snapshot and per-entity vectors) and relation vectors."""
    output = as_path(output_dir)
    weights = {
        name: weight.detach().float().contiguous()
        for name, weight in zip(model.table_names, _table_weights(model), strict=True)
    }
    (output / VECTORS).mkdir(parents=True, exist_ok=True)
    # One process writes the whole tables; no process group is needed.
    dcp.save(weights, storage_writer=storage_writer(output / TABLES), no_dist=True)
    for name, weight in weights.items():
        rows, dim = weight.shape
        vectors = pa.FixedSizeListArray.from_arrays(pa.array(weight.reshape(-1).numpy()), dim)
        table = pa.table({"id": pa.array(range(rows), pa.int64()), "embedding": vectors})
        with (output / VECTORS / f"{name}.parquet").open("wb") as file:
            pq.write_table(table, file)
    relations = model.relations.detach().float()
    table = pa.table(
        {
            "name": model.relation_names,
            "vector": pa.FixedSizeListArray.from_arrays(
                pa.array(relations.reshape(-1).numpy()), relations.shape[1]
            ),
        }
    )
    with (output / RELATIONS).open("wb") as file:
        pq.write_table(table, file)
    return output


def _table_weights(model: TwhinModel) -> list[torch.Tensor]:
    state = model.tables.state_dict()
    return [state[f"embedding_bags.{name}.weight"] for name in model.table_names]


def run_export(config: TwhinConfig, checkpoint: str | None, output_dir: str | None) -> AnyPath:
    """Exports ``checkpoint`` (default: the job's newest); returns the output folder."""
    job = TwhinJobFolder(config.training.save_dir)
    folder = job.find_checkpoint(checkpoint)
    model = build_whole_model(config)
    load_weights(model, folder)
    output = export_model(model, output_dir or job.export_dir(folder))
    logger.info("exported %s to %s", folder, output)
    return output


def main(argv: list[str] | None = None) -> int:
    """Exports a checkpoint's tables and relation vectors for the ranker."""
    parser = argparse.ArgumentParser(
        prog="tml-twhin-export", description="Write TwHIN tables in the forms recap reads."
    )
    parser.add_argument("--config_path", required=True, help="The TwHIN job's YAML config.")
    parser.add_argument("--checkpoint", help="Checkpoint folder or job (default: the newest).")
    parser.add_argument("--output_dir", help="Where to write (default: <save_dir>/export/...).")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    def export() -> None:
        config = load_config_from_yaml(TwhinConfig, args.config_path)
        print(run_export(config, args.checkpoint, args.output_dir))

    return exit_status(export)


if __name__ == "__main__":
    sys.exit(main())
