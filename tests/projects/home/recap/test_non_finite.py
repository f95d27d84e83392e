"""A learning rate of 1e8 makes the loss NaN within a few steps: the job stops with one line and
never writes a checkpoint holding non-finite weights."""

import pytest
import torch

from projects.home.recap.job_folder import JobFolder
from tests.helpers.multiprocess import run_on_ranks
from tests.projects.home.recap.distributed_jobs import (
    TASKS,
    full_parameters,
    tiny_config,
    train_job,
)
from tml.checkpoint import complete_steps

pytestmark = pytest.mark.slow


def test_a_diverging_job_stops_without_writing_non_finite_weights(tmp_path):
    overrides = [
        "training.num_train_steps=8",
        "training.checkpoint_every_n=1",
        "training.train_log_every_n=4",
        "model.large_embeddings.optimizer.init_learning_rate=1e8",
        "optimizer.multi_task_learning_rates.backbone_learning_rate.linear_ramp_to_constant"
        ".learning_rate=1e8",
        *(
            f"optimizer.multi_task_learning_rates.tower_learning_rates.{task}"
            ".linear_ramp_to_constant.learning_rate=1e8"
            for task in TASKS
        ),
    ]
    config = tiny_config(tmp_path, *overrides)
    with pytest.raises(AssertionError) as failure:
        run_on_ranks(train_job, 2, config, workdir=tmp_path)
    errors = [line for line in str(failure.value).splitlines() if "NonFiniteTrainingError:" in line]
    assert len(errors) == 2, str(failure.value)[-3000:]  # each rank stops on its own check
    assert "the loss is not finite from step" in errors[0]
    assert "stopping without a checkpoint" in errors[0]
    steps = complete_steps(JobFolder(config.training.save_dir).checkpoints)
    assert steps and steps[-1] < 8  # stopped early, after some finite checkpoints
    for step in steps:
        parameters = full_parameters(config, step)
        assert all(torch.isfinite(value).all() for value in parameters.values()), step
    first_bad = int(errors[0].split("from step ")[1].split()[0])
    assert steps[-1] < first_bad
