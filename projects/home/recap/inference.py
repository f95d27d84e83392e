"""Inference mode (``--mode inference``): score a dataset with a checkpoint and write Parquet
predictions.

Each rank scores its disjoint share of the partition named by ``inference.data`` and writes its
own predictions file (see ``JobFolder``) with, per input row (each exactly once):

* ``user_id``, ``author_id``, ``tweet_id`` when the config renames the meta ids;
* ``probability/<task>`` and ``calibrated_probability/<task>`` for every model task;
* ``score``: the sum over the ranking weights of weight x calibrated probability.

The loader applies the same feature preprocessing as in training, without labels.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable

import numpy as np
import pyarrow as pa
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
from projects.home.recap.inference_config import ranking_weights
from projects.home.recap.inputs import RecapBatch
from projects.home.recap.job_folder import JobFolder
from projects.home.recap.lockstep import agreed_steps, lockstep_batches
from tml.core.errors import UserInputError
from tml.distributed import DistributedEnvironment
from tml.storage import AnyPath, RemotePath, as_path

logger = logging.getLogger(__name__)

# Output column -> renamed feature holding it.
ID_COLUMNS = {
    "user_id": "meta__user_id",
    "author_id": "meta__author_id",
    "tweet_id": "meta__tweet_id",
}


def prediction_schema(renamed_features: Iterable[str], tasks: list[str]) -> pa.Schema:
    """The columns of the predictions files: the ids the data provides, then per task."""
    fields = [
        pa.field(column, pa.int64())
        for column, feature in ID_COLUMNS.items()
        if feature in renamed_features
    ]
    for task in tasks:
        fields.append(pa.field(f"probability/{task}", pa.float32()))
        fields.append(pa.field(f"calibrated_probability/{task}", pa.float32()))
    fields.append(pa.field("score", pa.float64()))
    return pa.schema(fields)


def prediction_table(
    batch: RecapBatch,
    outputs: dict[str, torch.Tensor],
    tasks: list[str],
    weights: dict[str, float],
    schema: pa.Schema,
) -> pa.Table:
    """One batch's predictions as rows of ``schema``."""
    columns: dict[str, np.ndarray] = {}
    for column, feature in ID_COLUMNS.items():
        if column in schema.names:
            columns[column] = batch.extra_features[feature].reshape(-1).cpu().numpy()
    probabilities = outputs["probabilities"].float().cpu()
    calibrated = outputs["calibrated_probabilities"].float().cpu()
    for index, task in enumerate(tasks):
        columns[f"probability/{task}"] = probabilities[:, index].numpy()
        columns[f"calibrated_probability/{task}"] = calibrated[:, index].numpy()
    task_weights = torch.tensor([weights.get(task, 0.0) for task in tasks], dtype=torch.float64)
    columns["score"] = (calibrated.double() @ task_weights).numpy()
    return pa.table(columns, schema=schema)


def run_inference(config: RecapConfig, environment: DistributedEnvironment) -> AnyPath:
    """Scores ``inference.data`` with ``inference.checkpoint``; returns the output folder."""
    if not config.validation_data:
        raise UserInputError("inference mode scores a validation_data partition; none is defined")
    name = config.inference.data or next(iter(config.validation_data))
    job = JobFolder(config.training.save_dir)
    checkpoint = job.find_checkpoint(config.inference.checkpoint)
    tasks = list(config.model.tasks)
    inputs = model_input_spec(config)
    dataset = build_partition_data(config, name, ReadOptions.inference(), environment, inputs)
    model = build_sharded_model(config, environment, inputs, dataset.batch_size)
    load_trained_model(model, checkpoint, environment)
    # Inference batches have no labels, so only the predictions are computed (the sharded
    # module, unwrapped from data parallelism, which needs no gradients here).
    predict = unwrap(model).predict

    output_dir = as_path(config.inference.output_dir or job.predictions_dir(checkpoint))
    output_dir.mkdir(parents=True, exist_ok=True)
    if environment.is_main:
        # Files of an earlier run (maybe with another number of ranks) would mix in old rows.
        for stale in JobFolder.predictions_files(output_dir):
            stale.unlink()
    if dist.is_initialized():
        dist.barrier()
    path = JobFolder.predictions_file(output_dir, environment.rank, environment.world_size)
    weights = ranking_weights(config.inference, tasks)
    schema = prediction_schema(
        config.validation_data[name].seg_dense_schema.renamed_features, tasks
    )
    rows = 0
    # Every rank writes its file, empty if its share is, so the folder always has them all.
    # A remote file is written through fsspec (a multipart upload, visible once closed).
    sink = path.open("wb") if isinstance(path, RemotePath) else str(path)
    with (
        contextlib.closing(sink) if not isinstance(sink, str) else contextlib.nullcontext(),
        pq.ParquetWriter(sink, schema, compression="zstd") as writer,
        torch.no_grad(),
    ):
        steps = agreed_steps(dataset.batches_per_pass, -1, environment.device)
        for batch, counted in lockstep_batches(dataset, steps, environment.device):
            outputs = predict(batch)
            if counted:
                table = prediction_table(batch, outputs, tasks, weights, schema)
                writer.write_table(table)
                rows += table.num_rows
    logger.info(
        "rank %d scored %d rows of '%s' with %s into %s",
        environment.rank,
        rows,
        name,
        checkpoint,
        path,
    )
    return output_dir
