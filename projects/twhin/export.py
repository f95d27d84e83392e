"""Hands a trained TwHIN model to the ranker.

    python -m projects.twhin.export --config_path CFG [--checkpoint PATH] [--output_dir DIR]

(installed as ``tml-twhin-export``) writes, from the newest checkpoint by default, to
``<save_dir>/export/step_<N>/``:

* ``tables/``: a torch.distributed.checkpoint snapshot holding each table whole, under its
  table name. A recap large-embedding table loads one as ``pretrained: {emb_name: user,
  embedding_snapshot_uri: <export>/tables}`` (rows and width must match the TwHIN table's).
* ``vectors/<table>.parquet``: one row per entity, columns ``id`` and ``embedding`` (its
  vector, float32): the per-entity vectors that fill recap's ``twhin_*_embeddings`` columns by
  id (``tml-recap-fill-twhin``). ``id`` is the entity's raw id when the table has a ``vocab``
  (entities the vocab does not list are left out), else its row (the ids of the edge files).
* ``relations.parquet``: each relation's name and translation vector.
"""

from __future__ import annotations

import argparse
import logging
import sys

import numpy as np
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
from tml.core.errors import UserInputError
from tml.storage import AnyPath, as_path, list_files, open_input_file

logger = logging.getLogger(__name__)

TABLES = "tables"
VECTORS = "vectors"
RELATIONS = "relations.parquet"


def export_model(
    model: TwhinModel, output_dir: str | AnyPath, vocabs: dict[str, str] | None = None
) -> AnyPath:
    """Writes ``model``'s tables (snapshot and per-entity vectors) and relation vectors.

    Args:
        model: The trained model, whole.
        output_dir: Where to write.
        vocabs: Table name -> vocab directory, for the tables whose vectors go by raw id.

    Raises:
        VocabError: a vocab that cannot be read or maps outside its table.
    """
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
        if vocabs and name in vocabs:
            ids, table_rows = read_vocab(vocabs[name], rows, where=f"table {name}")
        else:
            ids = table_rows = np.arange(rows, dtype=np.int64)
        chosen = weight[torch.from_numpy(table_rows)]
        vectors = pa.FixedSizeListArray.from_arrays(pa.array(chosen.reshape(-1).numpy()), dim)
        table = pa.table({"id": pa.array(ids, pa.int64()), "embedding": vectors})
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


class VocabError(UserInputError):
    """A table's vocab cannot be read or maps outside the table; the message names it."""


def read_vocab(directory: str, rows: int, *, where: str) -> tuple[np.ndarray, np.ndarray]:
    """The raw ids and rows a vocab lists (Parquet files with int64 columns ``id``, ``row``).

    Raises:
        VocabError: naming the directory or file.
    """
    paths = list_files(f"{directory.rstrip('/')}/*.parquet")
    if not paths:
        raise VocabError(f"{where}: vocab {directory} holds no .parquet file")
    ids, table_rows = [], []
    for path in paths:
        try:
            table = pq.read_table(open_input_file(path))
        except (OSError, pa.ArrowException) as error:
            raise VocabError(f"{where}: cannot read vocab file {path}: {error}") from None
        for column in ("id", "row"):
            if column not in table.column_names or not pa.types.is_integer(
                table.schema.field(column).type
            ):
                raise VocabError(f"{where}: vocab file {path} needs an integer column '{column}'")
        ids.append(table.column("id").to_numpy().astype(np.int64))
        table_rows.append(table.column("row").to_numpy().astype(np.int64))
    all_ids, all_rows = np.concatenate(ids), np.concatenate(table_rows)
    if len(all_rows) and (all_rows.min() < 0 or all_rows.max() >= rows):
        raise VocabError(
            f"{where}: vocab {directory} maps to rows {all_rows.min()}..{all_rows.max()}, "
            f"outside the table's {rows} rows"
        )
    return all_ids, all_rows


def _table_weights(model: TwhinModel) -> list[torch.Tensor]:
    state = model.tables.state_dict()
    return [state[f"embedding_bags.{name}.weight"] for name in model.table_names]


def run_export(config: TwhinConfig, checkpoint: str | None, output_dir: str | None) -> AnyPath:
    """Exports ``checkpoint`` (default: the job's newest); returns the output folder."""
    job = TwhinJobFolder(config.training.save_dir)
    folder = job.find_checkpoint(checkpoint)
    model = build_whole_model(config)
    load_weights(model, folder)
    vocabs = {t.name: t.vocab for t in config.model.embeddings.tables if t.vocab is not None}
    output = export_model(model, output_dir or job.export_dir(folder), vocabs)
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
