import pytest
import torch
from torch import nn

from tml.training.bf16_weights import Bf16WeightCopies


def small_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(24, 32),
        nn.LayerNorm(32),
        nn.ReLU(),
        nn.Linear(32, 16),
        nn.ReLU(),
        nn.Linear(16, 1),
    )


def batches(steps: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    return [
        (torch.randn(64, 24, generator=generator), torch.randn(64, 1, generator=generator))
        for _ in range(steps)
    ]


def train(model: nn.Module, copies: bool, steps: int = 6) -> list[float]:
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2, fused=True)
    if copies:
        cache = Bf16WeightCopies(model)
        optimizer.register_step_post_hook(lambda *_: cache.refresh())
    losses = []
    for inputs, targets in batches(steps):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = nn.functional.mse_loss(model(inputs).float(), targets)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


def test_training_on_the_copies_is_autocast_bit_for_bit():
    plain, cached = small_model(), small_model()
    plain_losses = train(plain, copies=False)
    cached_losses = train(cached, copies=True)
    assert cached_losses == plain_losses
    assert plain_losses[-1] < plain_losses[0]
    for (name, a), b in zip(plain.named_parameters(), cached.parameters(), strict=True):
        assert b.dtype == torch.float32
        assert torch.equal(a, b), name


def test_without_the_refresh_a_fused_optimizer_step_leaves_the_copies_behind():
    # Fused Adam does not bump the masters' version counters: the explicit refresh is needed.
    model = nn.Sequential(nn.Linear(24, 32), nn.ReLU(), nn.Linear(32, 1))  # Linear layers only
    cache = Bf16WeightCopies(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1, fused=True)
    inputs, _ = batches(1)[0]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        before = model(inputs)
    model(inputs).sum().backward()
    optimizer.step()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        stale = model(inputs)
    cache.refresh()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fresh = model(inputs)
    assert torch.equal(stale, before)
    reference = nn.Sequential(nn.Linear(24, 32), nn.ReLU(), nn.Linear(32, 1))
    reference.load_state_dict(model.state_dict())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(fresh, reference(inputs))
    assert not torch.equal(fresh, stale)


def test_weights_loaded_in_place_are_picked_up_by_the_next_forward():
    model, other = small_model(), small_model()
    with torch.no_grad():
        for parameter in other.parameters():
            parameter.mul_(2)
    Bf16WeightCopies(model)
    model.load_state_dict(other.state_dict())
    inputs, _ = batches(1)[0]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(model(inputs), other(inputs))


def test_outside_bf16_autocast_the_layers_run_in_fp32_and_state_dicts_are_unchanged():
    model, reference = small_model(), small_model()
    keys = list(model.state_dict())
    cache = Bf16WeightCopies(model)
    assert cache.num_layers == 3
    assert list(model.state_dict()) == keys
    inputs, _ = batches(1)[0]
    output = model(inputs)
    assert output.dtype == torch.float32
    assert torch.equal(output, reference(inputs))
    with torch.autocast("cpu", dtype=torch.float16):  # another autocast dtype: not served
        assert torch.equal(model(inputs), reference(inputs))


@pytest.mark.parametrize("bias", [True, False])
def test_remove_gives_the_layers_their_own_forward_back(bias):
    linear = nn.Linear(4, 3, bias=bias)
    cache = Bf16WeightCopies(linear)
    assert "forward" in vars(linear)
    cache.remove()
    assert "forward" not in vars(linear)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert linear(torch.randn(2, 4)).dtype == torch.bfloat16
