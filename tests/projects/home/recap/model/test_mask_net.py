import pytest
import torch

from projects.home.recap.model.config import MaskBlockConfig, MaskNetConfig
from projects.home.recap.model.mask_net import MaskBlock, MaskNet


def set_linear(linear, weight, bias):
    with torch.no_grad():
        linear.weight.copy_(torch.tensor(weight))
        linear.bias.copy_(torch.tensor(bias))


def hand_block():
    block = MaskBlock(MaskBlockConfig(output_size=2, aggregation_size=1), 2, 2)
    set_linear(block.mask[0], [[1.0, -1.0]], [0.5])
    set_linear(block.mask[2], [[2.0], [1.0]], [0.0, 1.0])
    set_linear(block.hidden, [[1.0, 0.0], [0.0, 3.0]], [0.0, 0.0])
    return block


def test_mask_block_by_hand():
    # mask = [2, 1] * relu(3 - 1 + 0.5) + [0, 1] = [5, 3.5]; net * mask = [15, 3.5];
    # hidden = [15, 10.5]; layer norm: mean 12.75, std 2.25 -> [1, -1].
    x = torch.tensor([[3.0, 1.0]])
    out = hand_block()(x, x)
    torch.testing.assert_close(out, torch.tensor([[1.0, -1.0]]), atol=1e-5, rtol=0)


def test_mask_block_mask_reads_its_own_input():
    # The net [1, 1] is gated by the mask of [3, 1]: hidden = [5, 10.5] -> layer norm [-1, 1].
    out = hand_block()(torch.tensor([[1.0, 1.0]]), torch.tensor([[3.0, 1.0]]))
    torch.testing.assert_close(out, torch.tensor([[-1.0, 1.0]]), atol=1e-5, rtol=0)


def test_reduction_factor_sets_the_mask_width():
    block = MaskBlock(MaskBlockConfig(output_size=3, reduction_factor=0.5), 4, 10)
    assert block.mask[0].weight.shape == (5, 10)
    assert block.mask[2].weight.shape == (4, 5)
    with pytest.raises(ValueError, match="leaves no hidden unit"):
        MaskBlock(MaskBlockConfig(output_size=3, reduction_factor=0.05), 4, 10)


def blocks(*sizes, input_layer_norm=False):
    return [
        {"output_size": size, "aggregation_size": 3, "input_layer_norm": input_layer_norm}
        for size in sizes
    ]


def test_parallel_blocks_see_the_input_and_are_concatenated_before_the_mlp():
    config = MaskNetConfig(mask_blocks=blocks(4, 6), mlp={"layer_sizes": [5]}, use_parallel=True)
    net = MaskNet(config, 7)
    x = torch.randn(3, 7)
    shared = torch.cat([net.blocks[0](x, x), net.blocks[1](x, x)], dim=1)
    output, returned_shared = net.forward_with_shared_layer(x)
    torch.testing.assert_close(returned_shared, shared)
    torch.testing.assert_close(output, net.mlp(shared))
    assert (net.shared_size, net.out_features) == (10, 5)


def test_serial_blocks_chain_the_net_and_mask_from_the_input_with_an_mlp():
    # The original crashed here (it indexed the MLP with a tensor).
    config = MaskNetConfig(
        mask_blocks=blocks(4, 6, input_layer_norm=True),
        mlp={"layer_sizes": [2]},
        use_parallel=False,
    )
    net = MaskNet(config, 7)
    assert net.blocks[1].mask[0].in_features == 7  # mask reads the raw input
    assert net.blocks[1].hidden.in_features == 4  # net is the previous block's output
    x = torch.randn(3, 7)
    expected = net.mlp(net.blocks[1](net.blocks[0](x, x), x))
    torch.testing.assert_close(net(x), expected)
    assert net.out_features == 2 and net.shared_size == 6
