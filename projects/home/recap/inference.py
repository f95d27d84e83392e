"""Inference mode (``--mode inference``): score a dataset with a checkpoint and write Parquet
predictions.

Each rank scores its disjoint share of the partition named by ``inference.data`` and writes its
own predictions file (see ``JobFolder``; under a temporary name until it is whole, and the
folder's ``COMPLETE`` marker once every rank's is) with, per input row (each exactly once):

* ``source_file``, ``source_row``: the row's data file and its index within that file (from 0),
  a stable id to join the predictions back to the data;
* ``user_id``, ``author_id``, ``tweet_id`` when the config renames the meta ids;
* every feature named by ``inference.passthrough_features``, under its schema name;
* ``label/<task>`` and ``weight/<task>`` for every model task: the label (after
  ``rectify_labels``) and the example weight evaluation gives it (the inverse of the
  partition's sampling rates);
* ``stratifier/<name>`` for every stratifier of the model;
* ``probability/<task>`` and ``calibrated_probability/<task>`` for every model task;
* ``score``: the sum over the ranking weights of weight x calibrated probability.

The loader applies the same preprocessing as evaluation, except ``downsample_negatives`` (it
would drop rows), so ``tml-recap-score`` computes evaluation's metrics from these files.
"""

from __future__ import annotations

import json
import logging

import pyarrow.parquet as pq
import torch
import torch.distributed as dist

from projects.home.recap.build import (
    build_partition_data,
    build_sharded_model,
    load_trained_model,
    model_input_spec,
    unwrap,
)
from projects.home.recap.config import RecapConfig
from projects.home.recap.data.dataset import ReadOptions
from projects.home.recap.data.schema import load_schema
from projects.home.recap.inference_config import ranking_weights
from projects.home.recap.job_folder import JobFolder
from projects.home.recap.lockstep import agreed_steps, lockstep_batches
from projects.home.recap.predictions import (
    prediction_columns,
    prediction_table,
    with_passthrough,
)
from tml.core.errors import UserInputError
from tml.distributed import DistributedEnvironment
from tml.storage import AnyPath, as_path, file_written_whole, write_atomically

logger = logging.getLogger(__name__)


def run_inference(config: RecapConfig, environment: DistributedEnvironment) -> AnyPath:
    """Scores ``inference.data`` with ``inference.checkpoint``; returns the output folder."""
    if not config.validation_data:
        raise UserInputError("inference mode scores a validation_data partition; none is defined")
    name = config.inference.data or next(iter(config.validation_data))
    job = JobFolder(config.training.save_dir)
    checkpoint = job.find_checkpoint(config.inference.checkpoint)
    tasks = list(config.model.tasks)
    inputs = model_input_spec(config)
    if name not in config.validation_data:
        raise UserInputError(
            f"inference.data: no partition '{name}' (partitions: {sorted(config.validation_data)})"
        )
    data_config = config.validation_data[name]
    # Checked before any file is opened, naming the inference field.
    columns = prediction_columns(
        config, data_config, load_schema(data_config.seg_dense_schema.schema_path)
    )
    reading = with_passthrough(config, name)
    dataset = build_partition_data(reading, name, ReadOptions.inference(), environment, inputs)
    model = build_sharded_model(config, environment, inputs, dataset.batch_size)
    load_trained_model(model, checkpoint, environment)
    # Only the predictions are computed (no loss), by the sharded module unwrapped from data
    # parallelism, which needs no gradients here.
    predict = unwrap(model).predict

    output_dir = as_path(config.inference.output_dir or job.predictions_dir(checkpoint))
    output_dir.mkdir(parents=True, exist_ok=True)
    marker = JobFolder.predictions_marker(output_dir)
    if environment.is_main:
        # The marker goes first, so that the folder never claims files that are being replaced.
        # Files of an earlier run (maybe with another number of ranks) would mix in old rows.
        marker.unlink(missing_ok=True)
        for stale in JobFolder.predictions_files(output_dir):
            stale.unlink()
        for stale in JobFolder.partial_predictions_files(output_dir):
            stale.unlink()
    if dist.is_initialized():
        dist.barrier()
    path = JobFolder.predictions_file(output_dir, environment.rank, environment.world_size)
    weights = ranking_weights(config.inference, tasks)
    rows = 0
    with (
        file_written_whole(path) as sink,
        pq.ParquetWriter(sink, columns.schema(), compression="zstd") as writer,
        torch.no_grad(),
    ):
        steps = agreed_steps(dataset.batches_per_pass, -1, environment.device)
        for batch, counted in lockstep_batches(dataset, steps, environment.device):
            outputs = predict(batch)
            if counted:
                table = prediction_table(batch, outputs, columns, weights, dataset.file_paths)
                writer.write_table(table)
                rows += table.num_rows
    total = _sum_over_ranks(rows, environment.device)
    if environment.is_main:
        write_atomically(
            marker,
            json.dumps(
                {"checkpoint": str(checkpoint), "rows": total, "files": environment.world_size}
            ),
        )
    logger.info(
        "rank %d scored %d rows of '%s' with %s into %s",
        environment.rank,
        rows,
        name,
        checkpoint,
        path,
    )
    return output_dir


def _sum_over_ranks(count: int, device: torch.device) -> int:
    """``count`` summed over the ranks (after every rank has closed its file)."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return count
    total = torch.tensor([count], dtype=torch.int64, device=device)
    dist.all_reduce(total)
    return int(total.item())
