import torch

from projects.home.recap.model.config import PositionDebiasConfig
from projects.home.recap.model.position_debias import PositionDebias


def rows_used(module, positions):
    discrete = torch.tensor([[9, p] for p in positions])
    out = module(discrete)
    return [int((module.embedding.weight == row).all(dim=1).nonzero()[0]) for row in out]


def test_positions_are_bucketed_and_unknown_ones_are_null():
    config = PositionDebiasConfig(max_position=8, num_dims=3, position_feature_index=1)
    module = PositionDebias(config).eval()
    assert module.embedding.num_embeddings == 10  # 8 positions, "8 or more", null
    assert rows_used(module, [0, 3, 7, 8, 100, -1]) == [0, 3, 7, 8, 8, 9]


def test_training_drops_positions_at_the_configured_rate():
    config = PositionDebiasConfig(
        max_position=8, num_dims=3, position_feature_index=1, drop_probability=0.25
    )
    module = PositionDebias(config).train()
    rows = rows_used(module, [2] * 4000)
    assert abs(rows.count(9) / 4000 - 0.25) < 0.03
    assert set(rows) == {2, 9}
    always = PositionDebias(config.model_copy(update={"drop_probability": 1.0})).train()
    assert set(rows_used(always, [1, 2, 3])) == {9}
