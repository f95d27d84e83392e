import torch

from projects.home.recap.model.config import DcnConfig
from projects.home.recap.model.dcn import CrossLayer, Dcn


def test_cross_layer_by_hand():
    # x0 * (W x + b) + x with W = [[1, 2], [0, 1]], b = [1, 0], x0 = [1, 2], x = [2, -1]:
    # W x + b = [2 - 2 + 1, -1] = [1, -1]; x0 * that = [1, -2]; plus x = [3, -3].
    layer = CrossLayer(2, None)
    with torch.no_grad():
        layer.transform.weight.copy_(torch.tensor([[1.0, 2.0], [0.0, 1.0]]))
        layer.transform.bias.copy_(torch.tensor([1.0, 0.0]))
    out = layer(torch.tensor([[1.0, 2.0]]), torch.tensor([[2.0, -1.0]]))
    torch.testing.assert_close(out, torch.tensor([[3.0, -3.0]]))


def test_low_rank_cross_layer_uses_u_v_transpose():
    layer = CrossLayer(5, 2)
    down, up = layer.transform[0], layer.transform[1]
    assert down.weight.shape == (2, 5) and down.bias is None and up.weight.shape == (5, 2)
    x0, x = torch.randn(3, 5), torch.randn(3, 5)
    full = x @ (up.weight @ down.weight).T + up.bias
    torch.testing.assert_close(layer(x0, x), x0 * full + x)


def test_cross_layers_chain_from_the_input():
    config = DcnConfig(poly_degree=3)
    dcn = Dcn(config, 4)
    x = torch.randn(2, 4)
    expected = x
    for layer in dcn.cross_layers:
        expected = layer(x, expected)
    torch.testing.assert_close(dcn(x), expected)
    assert len(dcn.cross_layers) == 3 and dcn.out_features == 4


def test_parallel_mlp_is_concatenated_and_stacked_mlp_reads_the_cross_output():
    x = torch.randn(2, 4)
    parallel = Dcn(DcnConfig(poly_degree=1, parallel_mlp={"layer_sizes": [3]}), 4)
    cross = parallel.cross_layers[0](x, x)
    torch.testing.assert_close(parallel(x), torch.cat([cross, parallel.mlp(x)], dim=1))
    assert parallel.out_features == 7

    stacked = Dcn(
        DcnConfig(
            poly_degree=1,
            parallel_mlp={"layer_sizes": [3]},
            use_parallel=False,
            output_mlp={"layer_sizes": [2]},
        ),
        4,
    )
    cross = stacked.cross_layers[0](x, x)
    torch.testing.assert_close(stacked(x), stacked.output_mlp(stacked.mlp(cross)))
    assert stacked.out_features == 2
