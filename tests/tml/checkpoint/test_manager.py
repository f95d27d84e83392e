import json
import resource
import signal

import pytest
import torch

from tml.checkpoint import (
    CheckpointManager,
    CheckpointMismatchError,
    CheckpointWriteError,
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


def test_every_ranks_state_is_read_back_in_rank_order(tmp_path, single_process_group):
    manager = CheckpointManager(tmp_path, async_save=False)
    manager.save(3, state_of(3.0), rank_state={"data": 0})
    # As a second rank of the same job would have written it.
    (checkpoint_folder(tmp_path, 3) / "rank_1.json").write_text('{"data": 1}')
    assert manager.rank_states(3) == [{"data": 0}, {"data": 1}]


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


def test_a_tensor_of_another_shape_is_one_line_naming_it_and_both_shapes(
    tmp_path, single_process_group
):
    CheckpointManager(tmp_path, async_save=False).save(5, state_of(5.0))
    resized = state_of(0.0)
    resized["weights"] = torch.zeros(6)
    with pytest.raises(CheckpointMismatchError) as error:
        load_checkpoint(checkpoint_folder(tmp_path, 5), resized)
    assert str(error.value) == (
        f"checkpoint {checkpoint_folder(tmp_path, 5)}: tensor 'weights' has shape [4] there, "
        "[6] in this job: the config changed its size since the checkpoint was written "
        "(restore the size, or start from another save_dir)"
    )


@pytest.fixture
def files_limited_to_64_kib():
    """Files of this process cannot grow past 64 KiB while the test runs, as on a full disk
    (the write fails with EFBIG instead of ENOSPC, through the same path)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # fail the write, not the process
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)


@pytest.mark.parametrize("async_save", [True, False])
def test_a_full_disk_is_one_line_and_keeps_the_checkpoints_written_before(
    tmp_path, single_process_group, async_save, request
):
    manager = CheckpointManager(tmp_path, async_save=async_save)
    manager.save(1, state_of(1.0))
    manager.wait()
    big = state_of(2.0)
    big["weights"] = torch.zeros(100_000)  # 400 KB
    request.getfixturevalue("files_limited_to_64_kib")
    with pytest.raises(CheckpointWriteError) as error:
        manager.save(2, big)
        manager.wait()
    assert str(error.value) == (
        f"cannot write checkpoint {checkpoint_folder(tmp_path, 2)}: File too large; the "
        "checkpoints written before are untouched (step_1 is complete, and a relaunch resumes "
        "from it once the problem is fixed)"
    )
    assert complete_steps(tmp_path) == [1]
    target = state_of(0.0)
    manager.load(target)
    assert torch.equal(target["weights"], torch.full((4,), 1.0))
