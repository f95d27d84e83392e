import torch
import torch.distributed as dist


def test_single_process_without_torchrun_gets_a_group(single_process_group):
    assert single_process_group.rank == 0
    assert single_process_group.world_size == 1
    assert single_process_group.is_main
    assert single_process_group.device == torch.device("cpu")
    assert single_process_group.backend == "gloo"
    assert dist.is_initialized() and dist.get_world_size() == 1
    value = torch.ones(3)
    dist.all_reduce(value)
    assert value.tolist() == [1.0, 1.0, 1.0]
