"""Checkpoints in object stores (loopback servers, tests/conftest.py): S3 and Google Cloud
Storage, through torch.distributed.checkpoint's fsspec writer and reader."""

import pytest
import torch

from tml.checkpoint import CheckpointManager, checkpoint_folder, complete_steps


@pytest.mark.parametrize("bucket", ["s3_bucket", "gcs_bucket"])
def test_a_checkpoint_round_trips_through_a_bucket(bucket, request, single_process_group):
    directory = f"{request.getfixturevalue(bucket)}/job/checkpoints"
    manager = CheckpointManager(directory, max_to_keep=1, async_save=False)
    for step in (3, 6):
        state = {"weights": torch.arange(6.0) * step, "progress": {"step": step}}
        manager.save(step, state, rank_state={"data": {"row": step}})
    # The older checkpoint was pruned; the newer one is complete and reads back.
    assert complete_steps(directory) == [6]
    assert not checkpoint_folder(directory, 3).exists()
    target = {"weights": torch.zeros(6), "progress": {"step": 0}}
    assert manager.load(target) == {"data": {"row": 6}}
    assert torch.equal(target["weights"], torch.arange(6.0) * 6)
    assert target["progress"] == {"step": 6}
