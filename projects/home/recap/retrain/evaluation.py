"""Evaluation of a checkpoint on a cycle's held-out slice, in the cycle's own process.

The model is built whole (tables unsharded, on the CPU) from the config it was trained with and
read through the evaluation code of every other mode (``PartitionEvaluator``), so the candidate
and the promoted model are measured the same way on the same rows. Its large tables must fit
in this machine's memory.
"""

from __future__ import annotations

import logging

import torch

from projects.home.recap.build import build_whole_model, load_trained_model, model_input_spec
from projects.home.recap.config import RecapConfig
from projects.home.recap.data.config import RecapDataConfig
from projects.home.recap.evaluation.evaluator import PartitionEvaluator
from tml.core.config import validate_config
from tml.distributed import DistributedEnvironment
from tml.storage import AnyPath

logger = logging.getLogger(__name__)

# One process, no process group: what the evaluator needs to know about its place.
_ONE_PROCESS = DistributedEnvironment(
    rank=0,
    world_size=1,
    local_rank=0,
    local_world_size=1,
    device=torch.device("cpu"),
    backend="gloo",
)


def evaluate_checkpoint(
    model_config: RecapConfig,
    checkpoint: AnyPath,
    partition: str,
    data: RecapDataConfig,
    batches: int,
) -> dict[str, float]:
    """The metrics of ``checkpoint`` on ``data``.

    Args:
        model_config: The config the checkpoint was trained with (its model and tasks).
        checkpoint: A complete checkpoint folder.
        partition: The name the metrics are computed under (for messages).
        data: The held-out slice.
        batches: Batches evaluated (< 0: all).
    """
    dump = model_config.model_dump(mode="json")
    dump["validation_data"] = {partition: data.model_dump(mode="json")}
    dump["training"]["num_eval_steps"] = batches
    # Re-validated: the slice must carry a label for every task of this model.
    judged = validate_config(RecapConfig, dump, f"evaluation of {checkpoint}")
    inputs = model_input_spec(judged)
    model = load_trained_model(build_whole_model(judged, inputs), checkpoint)
    evaluator = PartitionEvaluator(partition, judged, _ONE_PROCESS, inputs)
    metrics = evaluator.evaluate(model)
    logger.info(
        "evaluated %s on %s: %d examples", checkpoint, partition, int(metrics.get("examples", 0))
    )
    return metrics
