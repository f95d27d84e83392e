import math

import pytest
import torch

from projects.home.recap.model.calibration import calibrate, calibration_log_ratios


def test_calibrate_matches_the_downsampling_formula():
    logits = torch.tensor([[-3.0, 0.0, 2.5], [4.0, -1.0, 0.5]])
    ratios = torch.tensor([0.01, 1.0, 1.4e-5 / 0.9])
    p = torch.sigmoid(logits)
    expected = p * ratios / (1 - p + ratios * p)
    torch.testing.assert_close(calibrate(logits, ratios.log()), expected)


def test_calibrate_by_hand():
    # p = 0.5, r = 0.25: 0.125 / (0.5 + 0.125) = 0.2
    out = calibrate(torch.tensor([[0.0]]), torch.tensor([math.log(0.25)]))
    torch.testing.assert_close(out, torch.tensor([[0.2]]))


def test_ratios_are_found_by_task_name(recap):
    sampling = recap.input_spec().task_sampling
    ratios = calibration_log_ratios(
        ["recap.engagement.is_replied", "recap.engagement.is_favorited"], sampling
    )
    torch.testing.assert_close(ratios.exp(), torch.tensor([0.01, 0.2]))
    with pytest.raises(ValueError, match="is_bookmarked"):
        calibration_log_ratios(["recap.engagement.is_bookmarked"], sampling)
