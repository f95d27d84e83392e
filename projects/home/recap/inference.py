"""``--mode inference``: score a dataset with a checkpoint and write Parquet predictions.

Each rank scores its disjoint share of the partition named by ``inference.data`` and writes
``predictions-<rank>-of-<world size>.parquet`` with, per input row (each exactly once):

* ``user_id``, ``author_id``, ``tweet_id`` when the config renames the meta ids;
* ``probability/<task>`` and ``calibrated_probability/<task>`` for every model task;
* ``score``: the sum over ``inference.ranking_weights`` of weight x calibrated probability.

The loader applies the same feature preprocessing as in training, without labels.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from projects.home.recap.config import JobMode, RecapConfig
from projects.home.recap.data.batch import RecapBatch
from projects.home.recap.data.dataset import build_dataset
from projects.home.recap.evaluation.evaluator import lockstep_batches
from projects.home.recap.training import build_sharded_model
from tml.checkpoint import load_checkpoint, resolve_checkpoint
from tml.core.errors import UserInputError
from tml.distributed import DistributedEnvironment

logger = logging.getLogger(__name__)

# Output column -> renamed feature holding it.
ID_COLUMNS = {
    "user_id": "meta__user_id",
    "author_id": "meta__author_id",
    "tweet_id": "meta__tweet_id",
}


def prediction_columns(
    batch: RecapBatch,
    outputs: dict[str, torch.Tensor],
    tasks: list[str],
    ranking_weights: dict[str, float],
) -> dict[str, torch.Tensor]:
    """One batch's output columns, as 1-D CPU tensors."""
    columns: dict[str, torch.Tensor] = {}
    for column, feature in ID_COLUMNS.items():
        if feature in batch.extra_features:
            columns[column] = batch.extra_features[feature].reshape(-1).cpu()
    probabilities = outputs["probabilities"].float().cpu()
    calibrated = outputs["calibrated_probabilities"].float().cpu()
    for index, task in enumerate(tasks):
        columns[f"probability/{task}"] = probabilities[:, index]
        columns[f"calibrated_probability/{task}"] = calibrated[:, index]
    weights = torch.tensor([ranking_weights.get(task, 0.0) for task in tasks])
    columns["score"] = calibrated.double() @ weights.double()
    return columns


def run_inference(config: RecapConfig, environment: DistributedEnvironment) -> Path:
    """Scores ``inference.data`` with ``inference.checkpoint``; returns the output folder."""
    if not config.validation_data:
        raise UserInputError("inference mode scores a validation_data partition; none is defined")
    name = config.inference.data or next(iter(config.validation_data))
    data_config = config.validation_data[name]
    checkpoint = resolve_checkpoint(config.inference.checkpoint or config.training.save_dir)
    tasks = list(config.model.tasks)
    dataset = build_dataset(
        data_config,
        mode=JobMode.INFERENCE,
        tasks=tasks,
        large_embeddings=config.model.large_embeddings,
        rank=environment.rank,
        world_size=environment.world_size,
        seed=config.training.seed,
    )
    model = build_sharded_model(config, environment, dataset.batch_size)
    state = {"model": model.state_dict()}
    load_checkpoint(checkpoint, state, environment.rank)
    model.load_state_dict(state["model"])
    model.eval()

    output_dir = Path(
        config.inference.output_dir
        or Path(config.training.save_dir) / "predictions" / checkpoint.name
    )
    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / f"predictions-{environment.rank}-of-{environment.world_size}.parquet"
    weights = config.ranking_weights()
    rows = 0
    writer: pq.ParquetWriter | None = None
    try:
        with torch.no_grad():
            for batch, counted in lockstep_batches(dataset, -1, environment.device):
                outputs = _outputs_of(model, batch)
                if not counted:
                    continue
                table = pa.table(
                    {
                        k: v.numpy()
                        for k, v in prediction_columns(batch, outputs, tasks, weights).items()
                    }
                )
                if writer is None:
                    writer = pq.ParquetWriter(path, table.schema, compression="zstd")
                writer.write_table(table)
                rows += table.num_rows
    finally:
        if writer is not None:
            writer.close()
    logger.info(
        "rank %d scored %d rows of '%s' with %s into %s",
        environment.rank,
        rows,
        name,
        checkpoint,
        path,
    )
    return output_dir


def _outputs_of(model: torch.nn.Module, batch: RecapBatch) -> dict[str, torch.Tensor]:
    # Inference batches have no labels, so only the predictions are computed (the sharded
    # module, unwrapped from data parallelism, which needs no gradients here).
    return model.module.predict(batch)
