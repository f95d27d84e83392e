import json

import pytest
import torch

from tml.checkpoint import (
    CheckpointManager,
    checkpoint_folder,
    complete_steps,
    latest_complete_folder,
    load_checkpoint,
    load_weights,
)


def state_of(value: float) -> dict:
    return {
        "weights": torch.full((4,), value),
        "optimizer": {"state": {"a": {"step": torch.tensor(value)}, "fused": {}}},
        "progress": {"step": int(value), "wall_time": value / 2},
    }


@pytest.mark.parametrize("async_save", [True, False])
def test_save_then_load_round_trips_with_rank_state(tmp_path, single_process_group, async_save):
    manager = CheckpointManager(tmp_path, async_save=async_save)
    manager.save(3, state_of(3.0), rank_state={"data": {"file": 2, "row": 7}})
    manager.wait()
    assert manager.latest_step() == 3

    target = state_of(0.0)
    rank_state = manager.load(target)
    assert torch.equal(target["weights"], torch.full((4,), 3.0))
    assert target["optimizer"]["state"]["a"]["step"].item() == 3.0
    assert target["optimizer"]["state"]["fused"] == {}
    assert target["progress"] == {"step": 3, "wall_time": 1.5}
    assert rank_state == {"data": {"file": 2, "row": 7}}


def test_async_save_keeps_the_values_of_the_moment_it_was_called(tmp_path, single_process_group):
    manager = CheckpointManager(tmp_path, async_save=True)
    state = state_of(1.0)
    manager.save(1, state)
    state["weights"].add_(100.0)  # training goes on while the write runs
    manager.wait()
    target = state_of(0.0)
    manager.load(target)
    assert torch.equal(target["weights"], torch.full((4,), 1.0))


def test_folders_are_named_by_step_and_pruned(tmp_path, single_process_group):
    manager = CheckpointManager(tmp_path, max_to_keep=2, async_save=False)
    for step in (10, 20, 30):
        manager.save(step, state_of(float(step)))
    assert complete_steps(tmp_path) == [20, 30]
    assert not checkpoint_folder(tmp_path, 10).exists()
    assert json.loads((checkpoint_folder(tmp_path, 30) / "COMPLETE").read_text())["step"] == 30


def test_a_torn_write_never_counts_and_is_cleaned_up(tmp_path, single_process_group):
    manager = CheckpointManager(tmp_path, async_save=False)
    manager.save(5, state_of(5.0))
    torn = checkpoint_folder(tmp_path, 9)
    torn.mkdir()
    (torn / "__0_0.distcp").write_bytes(b"partial")
    assert manager.latest_step() == 5
    assert latest_complete_folder(tmp_path) == checkpoint_folder(tmp_path, 5)
    with pytest.raises(FileNotFoundError, match="not a complete checkpoint"):
        load_checkpoint(torn, state_of(0.0))
    CheckpointManager(tmp_path)  # a restarted job removes what it cannot use
    assert not torn.exists()


def test_partial_load_for_warm_start(tmp_path, single_process_group):
    manager = CheckpointManager(tmp_path / "checkpoints", async_save=False)
    manager.save(7, state_of(7.0))
    target = {"weights": torch.zeros(4)}
    load_checkpoint(latest_complete_folder(tmp_path / "checkpoints"), target)
    assert torch.equal(target["weights"], torch.full((4,), 7.0))


def test_load_weights_reads_only_the_model_entry(tmp_path, single_process_group):
    model = torch.nn.Linear(2, 1)
    with torch.no_grad():
        model.weight.fill_(3.0)
    CheckpointManager(tmp_path, async_save=False).save(
        4, {"model": model.state_dict(), "optimizer": {"lr": 0.5}}
    )
    fresh = torch.nn.Linear(2, 1)
    load_weights(fresh, checkpoint_folder(tmp_path, 4))
    assert torch.equal(fresh.weight, model.weight)
    assert torch.equal(fresh.bias, model.bias)


def test_no_checkpoint(tmp_path, single_process_group):
    manager = CheckpointManager(tmp_path)
    assert manager.latest_step() is None
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        manager.load(state_of(0.0))
    assert latest_complete_folder(tmp_path) is None
