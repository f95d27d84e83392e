"""Export a trained ranker as one self-contained servable file.

    python -m projects.home.recap.export --config_path CFG [--checkpoint DIR] --output F [a.b=c]

The checkpoint (a folder, or a save_dir whose newest checkpoint is taken; default: the newest in
``training.save_dir``) is loaded into an unsharded model, sharded tables gathered, and the model
(everything but the loss) is written with ``torch.export.save``. The file holds the program, its
weights, and ``signature.json`` describing the inputs and outputs; load it with
``torch.export.load(F).module()`` and call it with keyword tensors:

* ``continuous_features`` ``[batch, C]``, ``binary_features`` ``[batch, B]``,
  ``discrete_features`` ``[batch, D]`` and the TwHIN embeddings present, after the data
  config's preprocessing (truncation, masks, down-casts), as the loader yields them;
* ``sparse_ids`` ``[batch, tables]`` int64, one row id per large table (raw ids mapped as the
  loader maps them: through the table's vocab, else hashed), when the model has large tables.

It returns ``logits``, ``probabilities`` and ``calibrated_probabilities``, ``[batch, tasks]``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from projects.home.recap.config import RecapConfig
from projects.home.recap.data.batch import RecapBatch
from projects.home.recap.data.features import feature_widths
from projects.home.recap.data.preprocess import TORCH_DTYPES
from projects.home.recap.model.model_and_loss import ModelAndLoss, build_model_and_loss
from projects.home.recap.model.servable import (
    ServableRankingModel,
    export_ranking_model,
    servable_inputs,
)
from tml.checkpoint import load_checkpoint, resolve_checkpoint
from tml.core.cli import add_config_arguments, exit_status
from tml.core.config import load_config_from_yaml
from tml.observability.logging import setup_logging

logger = logging.getLogger(__name__)

SIGNATURE_FILE = "signature.json"
_EXAMPLE_BATCH = 4


def load_unsharded_model(config: RecapConfig, checkpoint: Path) -> ModelAndLoss:
    """The model with every table whole on the CPU, weights from ``checkpoint``."""
    model = build_model_and_loss(
        config.model,
        config.train_data,
        feature_widths(config.train_data),
        large_embedding_device=torch.device("cpu"),
    )
    state = {"model": model.state_dict()}
    load_checkpoint(checkpoint, state)
    model.load_state_dict(state["model"])
    return model.eval()


def example_batch(config: RecapConfig, batch_size: int = _EXAMPLE_BATCH) -> RecapBatch:
    """A batch of zeros with the widths and types the loader yields for ``train_data``."""
    widths = feature_widths(config.train_data)
    preprocess = config.train_data.preprocess
    downcast = preprocess.downcast.features if preprocess and preprocess.downcast else {}

    def zeros(name: str, width: int, dtype: torch.dtype) -> torch.Tensor:
        return torch.zeros(batch_size, width, dtype=TORCH_DTYPES.get(downcast.get(name), dtype))

    tables = (
        [table.name for table in config.model.large_embeddings.tables]
        if (config.model.large_embeddings)
        else []
    )
    return RecapBatch(
        continuous_features=zeros("continuous", widths.continuous, torch.float32),
        binary_features=zeros("binary", widths.binary, torch.int64),
        discrete_features=zeros("discrete", widths.discrete, torch.int64),
        labels=torch.zeros(batch_size, 0),
        weights=torch.zeros(batch_size, 0),
        **{name: zeros(name, width, torch.float32) for name, width in widths.embeddings.items()},
        sparse_features=KeyedJaggedTensor.from_lengths_sync(
            keys=tables,
            values=torch.zeros(batch_size * len(tables), dtype=torch.int64),
            lengths=torch.ones(batch_size * len(tables), dtype=torch.int32),
        )
        if tables
        else None,
    )


def signature(config: RecapConfig, example: RecapBatch, table_names: list[str]) -> dict[str, Any]:
    """What the exported program takes and returns, for whoever serves it."""
    inputs: dict[str, Any] = {
        name: {"shape": ["batch", tensor.shape[1]], "dtype": str(tensor.dtype)}
        for name, tensor in servable_inputs(example, table_names).items()
    }
    if table_names:
        inputs["sparse_ids"]["tables"] = table_names
    tasks = list(config.model.tasks)
    return {
        "inputs": inputs,
        "outputs": {
            name: {"shape": ["batch", len(tasks)], "dtype": "torch.float32"}
            for name in ("logits", "probabilities", "calibrated_probabilities")
        },
        "tasks": tasks,
        "ranking_weights": config.ranking_weights(),
    }


def export_checkpoint(config: RecapConfig, checkpoint: str | None, output: Path) -> Path:
    """Writes the servable file for ``checkpoint`` (default: newest of the job); returns it."""
    folder = resolve_checkpoint(checkpoint or config.training.save_dir)
    model = load_unsharded_model(config, folder)
    example = example_batch(config)
    program = export_ranking_model(model.model, example)
    table_names = ServableRankingModel(model.model).table_names
    output.parent.mkdir(parents=True, exist_ok=True)
    torch.export.save(
        program,
        output,
        extra_files={SIGNATURE_FILE: json.dumps(signature(config, example, table_names), indent=1)},
    )
    logger.info("exported %s to %s", folder, output)
    return output


def main(argv: list[str] | None = None) -> int:
    """The command line; a mistake is one line on stderr and exit 2."""
    parser = argparse.ArgumentParser(
        prog="python -m projects.home.recap.export", description="Export a servable ranker."
    )
    add_config_arguments(parser)
    parser.add_argument(
        "--checkpoint", help="Checkpoint folder or save_dir (default: newest of the job)."
    )
    parser.add_argument("--output", required=True, type=Path, help="File to write (.pt2).")
    args = parser.parse_args(argv)
    setup_logging()

    def export() -> None:
        config = load_config_from_yaml(RecapConfig, args.config_path, args.overrides)
        export_checkpoint(config, args.checkpoint, args.output)

    return exit_status(export)


if __name__ == "__main__":
    sys.exit(main())
