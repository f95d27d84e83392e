import torch
from torch import nn

from projects.home.recap.model.config import AffineMap
from projects.home.recap.model.tower import LogitAffineMap, Tower


def test_affine_map_by_hand():
    # logit 3 -> 3 * 2 - 1 = 5; logit -0.5 -> -2
    affine = LogitAffineMap(AffineMap(scale=2.0, bias=-1.0))
    out = affine(torch.tensor([[3.0], [-0.5]]))
    torch.testing.assert_close(out, torch.tensor([[5.0], [-2.0]]))


def test_affine_map_is_learned_from_its_config_values():
    affine = LogitAffineMap(AffineMap(scale=2.0, bias=-1.0))
    assert [name for name, _ in affine.named_parameters()] == ["scale", "bias"]
    affine(torch.tensor([[3.0]])).sum().backward()
    torch.testing.assert_close(affine.scale.grad, torch.tensor([3.0]))
    torch.testing.assert_close(affine.bias.grad, torch.tensor([1.0]))


def test_tower_applies_its_affine_map_in_fp32():
    network = nn.Linear(2, 1)
    with torch.no_grad():
        network.weight.copy_(torch.tensor([[1.0, 1.0]]))
        network.bias.zero_()
    tower = Tower(network, AffineMap(scale=0.5, bias=4.0))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = tower(torch.tensor([[1.0, 3.0]]))
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, torch.tensor([[6.0]]))
    assert Tower(network, None)(torch.tensor([[1.0, 3.0]])).item() == 4.0
