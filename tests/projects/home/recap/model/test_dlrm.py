import pytest
import torch

from projects.home.recap.model.config import DlrmConfig
from projects.home.recap.model.dlrm import Dlrm
from projects.home.recap.model.input_layout import InputLayout


def test_dlrm_interaction_by_hand():
    # Input: dense [1, 2] | vector e1 [3, 0] | dense [5] | vector e2 [0, 1].
    layout = InputLayout(7, ((2, 2), (5, 2)))
    assert layout.dense_segments() == ((0, 2), (4, 1))
    config = DlrmConfig(bottom_mlp={"layer_sizes": [2]}, top_mlp={"layer_sizes": [1]})
    dlrm = Dlrm(config, layout)
    with torch.no_grad():
        # bottom = [1, 2] (reads dense [1, 2, 5], ignores the 5)
        dlrm.bottom_mlp.layers[0].weight.copy_(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]))
        dlrm.bottom_mlp.layers[0].bias.zero_()
        # top reads [bottom (2), b.e1, b.e2, e1.e2] = [1, 2, 3, 2, 0]
        dlrm.top_mlp.layers[0].weight.copy_(torch.tensor([[1.0, 10.0, 100.0, 1000.0, 10000.0]]))
        dlrm.top_mlp.layers[0].bias.zero_()
    x = torch.tensor([[1.0, 2.0, 3.0, 0.0, 5.0, 0.0, 1.0]])
    torch.testing.assert_close(dlrm(x), torch.tensor([[1.0 + 20.0 + 300.0 + 2000.0]]))


def test_dlrm_needs_vectors_as_wide_as_its_bottom_mlp():
    config = DlrmConfig(bottom_mlp={"layer_sizes": [3]}, top_mlp={"layer_sizes": [1]})
    with pytest.raises(ValueError, match="embedding vectors are"):
        Dlrm(config, InputLayout(6, ((2, 2),)))
    with pytest.raises(ValueError, match="needs embedding vectors"):
        Dlrm(config, InputLayout(6))
