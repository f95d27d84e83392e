"""Export mode: write a trained ranker as one self-contained servable file.

    python -m projects.home.recap.export --config_path CFG [--checkpoint DIR] [--output F] [a.b=c]

The checkpoint (a folder, a folder of checkpoints, or a save_dir whose newest checkpoint is
taken; default: the newest of this job) is loaded into an unsharded model, sharded tables
gathered, and the model (everything but the loss) is written with ``torch.export.save`` to
``--output`` (default: the job folder's exports). The file holds the program, its weights, and
``signature.json`` describing the inputs and outputs; load it with
``torch.export.load(F).module()`` (after importing ``projects.home.recap.inputs``, which
registers the input structure) and call it with:

* ``inputs``: a ``DenseInputs`` whose tensors are ``[batch, width]``, after the data config's
  preprocessing (truncation, masks, down-casts), as the loader yields them;
* ``sparse_ids`` ``[batch, tables]`` int64, one row id per large table (raw ids mapped as the
  loader maps them: through the table's vocab, else hashed), when the model has large tables.

It returns ``logits``, ``probabilities`` and ``calibrated_probabilities``, ``[batch, tasks]``.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import sys
from typing import Any

import torch

from projects.home.recap.build import build_whole_model, load_trained_model
from projects.home.recap.config import RecapConfig
from projects.home.recap.data.features import build_input_spec
from projects.home.recap.inference_config import ranking_weights
from projects.home.recap.inputs import DenseInputs, InputSpec
from projects.home.recap.job_folder import JobFolder
from projects.home.recap.model.servable import ServableRankingModel, export_ranking_model
from tml.core.cli import add_config_arguments, exit_status, parse_command_line
from tml.core.config import load_config_from_yaml
from tml.observability.logging import setup_logging
from tml.storage import AnyPath, as_path

logger = logging.getLogger(__name__)

SIGNATURE_FILE = "signature.json"
_EXAMPLE_BATCH = 4


def example_sparse_ids(servable: ServableRankingModel, batch_size: int) -> torch.Tensor | None:
    """Row ids of zeros, one column per large table, or None without tables."""
    if not servable.table_names:
        return None
    return torch.zeros(batch_size, len(servable.table_names), dtype=torch.int64)


def signature(
    config: RecapConfig, example: DenseInputs, servable: ServableRankingModel
) -> dict[str, Any]:
    """What the exported program takes and returns, for whoever serves it."""
    inputs: dict[str, Any] = {
        name: {"shape": ["batch", tensor.shape[1]], "dtype": str(tensor.dtype)}
        for name, tensor in example.present().items()
    }
    if servable.table_names:
        inputs["sparse_ids"] = {
            "shape": ["batch", len(servable.table_names)],
            "dtype": str(torch.int64),
            "tables": list(servable.table_names),
        }
    tasks = list(config.model.tasks)
    return {
        "inputs": inputs,
        "outputs": {
            name: {"shape": ["batch", len(tasks)], "dtype": "torch.float32"}
            for name in ("logits", "probabilities", "calibrated_probabilities")
        },
        "tasks": tasks,
        "ranking_weights": ranking_weights(config.inference, tasks),
    }


def export_checkpoint(
    config: RecapConfig, checkpoint: str | None = None, output: AnyPath | str | None = None
) -> AnyPath:
    """Writes the servable file for ``checkpoint`` (default: newest of the job) to ``output``
    (default: the job folder's exports); returns the file."""
    job = JobFolder(config.training.save_dir)
    folder = job.find_checkpoint(checkpoint)
    inputs: InputSpec = build_input_spec(config.train_data, list(config.model.tasks))
    model = load_trained_model(build_whole_model(config, inputs), folder)
    servable = ServableRankingModel(model.model)
    example = inputs.example_inputs(_EXAMPLE_BATCH)
    program = export_ranking_model(servable, example, example_sparse_ids(servable, _EXAMPLE_BATCH))
    output = as_path(output) if output is not None else job.export_file(folder)
    output.parent.mkdir(parents=True, exist_ok=True)
    # Saved to memory first: torch.export.save seeks in its file, which an upload cannot do.
    buffer = io.BytesIO()
    torch.export.save(
        program,
        buffer,
        extra_files={SIGNATURE_FILE: json.dumps(signature(config, example, servable), indent=1)},
    )
    output.write_bytes(buffer.getvalue())
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
    parser.add_argument("--output", help="File to write (.pt2; default: the job folder's exports).")
    args = parse_command_line(parser, argv)
    setup_logging()

    def export() -> None:
        config = load_config_from_yaml(RecapConfig, args.config_path, args.overrides)
        export_checkpoint(config, args.checkpoint, args.output)

    return exit_status(export)


if __name__ == "__main__":
    sys.exit(main())
