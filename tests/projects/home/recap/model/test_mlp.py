import torch
from torch import nn

from projects.home.recap.model.config import MlpConfig
from projects.home.recap.model.mlp import Mlp


def test_layers_in_order_with_xavier_weights_and_zero_bias():
    config = MlpConfig(
        layer_sizes=[6, 4, 2],
        batch_norm={"affine": False, "momentum": 0.2},
        dropout={"rate": 0.3},
        final_layer_activation=True,
    )
    mlp = Mlp(5, config)
    kinds = [type(layer) for layer in mlp.layers]
    block = [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Dropout]
    assert kinds == block + block + [nn.Linear, nn.ReLU]
    assert mlp.layers[1].momentum == 0.2 and not mlp.layers[1].affine
    assert mlp.layers[3].p == 0.3
    for linear in (mlp.layers[0], mlp.layers[4], mlp.layers[8]):
        bound = (6 / (linear.in_features + linear.out_features)) ** 0.5
        assert linear.weight.abs().max() <= bound and torch.all(linear.bias == 0)
    assert (mlp.in_features, mlp.out_features, mlp.shared_size) == (5, 2, 6)


def test_shared_layer_is_the_first_hidden_block():
    mlp = Mlp(3, MlpConfig(layer_sizes=[4, 1])).eval()
    x = torch.randn(2, 3)
    output, shared = mlp.forward_with_shared_layer(x)
    torch.testing.assert_close(shared, torch.relu(mlp.layers[0](x)))
    torch.testing.assert_close(output, mlp(x))


def test_shared_layer_without_hidden_layers_is_the_output():
    mlp = Mlp(3, MlpConfig(layer_sizes=[2]))
    output, shared = mlp.forward_with_shared_layer(torch.randn(2, 3))
    assert shared is output
