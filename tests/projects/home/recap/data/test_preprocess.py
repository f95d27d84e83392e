import numpy as np
import pytest
import torch

from projects.home.recap.data.config import (
    DownCast,
    DownsampleNegatives,
    ExtractFeatures,
    Preprocess,
    RectifyLabels,
    TaskData,
    TruncateAndSlice,
)
from projects.home.recap.data.preprocess import (
    DownCastStep,
    DownsampleNegativesStep,
    ExampleWeightsStep,
    ExtractFeaturesStep,
    MaskMantissaStep,
    PreprocessError,
    RectifyLabelsStep,
    Rows,
    TruncateAndSliceStep,
    build_preprocessor,
)


def test_example_weights_undo_sampling_rates():
    rows = Rows(
        features={"x": torch.zeros(3, 1)},
        labels={"fav": torch.tensor([1.0, 0.0, 1.0]), "reply": torch.tensor([0.0, 0.0, 1.0])},
    )
    rates = {
        "fav": TaskData(pos_downsampling_rate=0.5, neg_downsampling_rate=0.25),
        "reply": TaskData(),
    }
    # Columns follow the task order given, not the rates' order.
    weights = ExampleWeightsStep(["reply", "fav"], rates)(rows).weights
    torch.testing.assert_close(weights, torch.tensor([[1.0, 2.0], [1.0, 4.0], [1.0, 2.0]]))


def test_downsample_negatives_keeps_positives_and_reweights_negatives():
    # The reference's example: fav = [1, 0, 0, 0], multiplier 2 -> fav = [1, 0], weights [1, 3].
    rows = Rows(
        features={"id": torch.tensor([[10], [11], [12], [13]])},
        labels={"fav": torch.tensor([0.0, 1.0, 0.0, 0.0]), "rt": torch.zeros(4)},
        weights=torch.ones(4, 2),
    )
    step = DownsampleNegativesStep(
        DownsampleNegatives(batch_multiplier=2, engagements_list=["fav"], num_engagements=2),
        ["fav"],
    )
    out = step(rows)
    assert out.features["id"].flatten().tolist() == [11, 10]
    assert out.labels["fav"].tolist() == [1.0, 0.0]
    torch.testing.assert_close(out.weights, torch.tensor([[1.0, 1.0], [3.0, 3.0]]))


def test_downsample_negatives_uses_any_listed_engagement_and_counts_dropped_positives():
    labels = {"a": torch.tensor([1.0, 0, 0, 1, 1, 0]), "b": torch.tensor([0.0, 1, 0, 0, 0, 0])}
    rows = Rows(
        features={"id": torch.arange(6).view(6, 1)}, labels=labels, weights=torch.ones(6, 1)
    )
    step = DownsampleNegativesStep(
        DownsampleNegatives(batch_multiplier=2, engagements_list=["a", "b"], num_engagements=1),
        ["a", "b"],
    )
    out = step(rows)
    # 4 positives for a batch of 3: the first 3 are kept, one is dropped and counted.
    assert out.features["id"].flatten().tolist() == [0, 1, 3]
    assert step.dropped_positives == 1
    torch.testing.assert_close(out.weights, torch.ones(3, 1))


def test_truncate_and_slice_with_mask_files(tmp_path):
    mask_path = tmp_path / "mask.npy"
    np.save(mask_path, np.array([1, 0, 1, 0, 0, 1]))
    config = TruncateAndSlice(
        continuous_feature_truncation=6,
        continuous_feature_mask_path=str(mask_path),
        binary_feature_truncation=2,
    )
    step = TruncateAndSliceStep(config, {"continuous": 8, "binary": 3})
    assert step.selection("continuous").tolist() == [0, 2, 5]
    assert step.selection("binary").tolist() == [0, 1]
    rows = Rows(
        features={
            "continuous": torch.arange(16.0).view(2, 8),
            "binary": torch.tensor([[1, 0, 1], [0, 1, 1]]),
        }
    )
    out = step(rows)
    torch.testing.assert_close(out.features["continuous"], torch.tensor([[0.0, 2, 5], [8, 10, 13]]))
    assert out.features["binary"].tolist() == [[1, 0], [0, 1]]


def test_truncate_and_slice_errors_name_the_field(tmp_path):
    with pytest.raises(
        PreprocessError, match=r"continuous_feature_truncation: 9 is more than the 8"
    ):
        TruncateAndSliceStep(TruncateAndSlice(continuous_feature_truncation=9), {"continuous": 8})
    mask_path = tmp_path / "mask.npy"
    np.save(mask_path, np.ones(5))
    with pytest.raises(
        PreprocessError, match=r"binary_feature_mask_path: mask file .* shape \[5\], expected \[3\]"
    ):
        TruncateAndSliceStep(
            TruncateAndSlice(binary_feature_mask_path=str(mask_path)), {"binary": 3}
        )
    with pytest.raises(PreprocessError, match=r"cannot read mask file"):
        TruncateAndSliceStep(
            TruncateAndSlice(binary_feature_mask_path=str(tmp_path / "none.npy")), {"binary": 3}
        )


def test_downcast_casts_named_features():
    rows = Rows(features={"continuous": torch.tensor([[1.5]]), "binary": torch.tensor([[1, 0]])})
    out = DownCastStep(DownCast(features={"continuous": "bfloat16", "binary": "bool"}))(rows)
    assert out.features["continuous"].dtype == torch.bfloat16
    assert out.features["binary"].tolist() == [[True, False]]


def test_rectify_labels_zeroes_late_impressions_and_engagements():
    hour = 3600 * 1000
    rows = Rows(
        features={
            "served": torch.zeros(4, 1, dtype=torch.int64),
            "impressed": torch.tensor([[hour], [4 * hour], [hour], [hour]]),
            "engaged": torch.tensor([[2 * hour], [2 * hour], [5 * hour], [2 * hour]]),
        },
        labels={"fav": torch.tensor([1.0, 1.0, 1.0, 0.0])},
    )
    config = RectifyLabels(
        label_rectification_window_in_hours=3.0,
        served_timestamp_field="served",
        impressed_timestamp_field="impressed",
        label_to_engaged_timestamp_field={"fav": "engaged"},
    )
    assert RectifyLabelsStep(config)(rows).labels["fav"].tolist() == [1.0, 0.0, 0.0, 0.0]


def test_extract_features_exposes_one_column():
    rows = Rows(features={"discrete": torch.tensor([[1, 2, 3], [4, 5, 6]])})
    config = ExtractFeatures(
        extract_feature_table=[{"name": "position", "source_tensor": "discrete", "index": 1}]
    )
    assert ExtractFeaturesStep(config)(rows).features["position"].tolist() == [[2], [5]]


def test_mask_mantissa_zeroes_low_bits():
    value = torch.tensor([[1.0 + 2**-20 + 2**-5]])
    out = MaskMantissaStep({"x": 16})(Rows(features={"x": value}))
    assert out.features["x"].item() == 1.0 + 2**-5


def test_steps_run_in_the_reference_order_and_label_steps_skip_inference():
    config = Preprocess(
        downsample_negatives={"batch_multiplier": 2, "num_engagements": 1},
        truncate_and_slice={"continuous_feature_truncation": 1},
        downcast={"features": {"continuous": "float16"}},
        rectify_labels={
            "served_timestamp_field": "s",
            "impressed_timestamp_field": "i",
            "label_to_engaged_timestamp_field": {"fav": "e"},
        },
        extract_features={
            "extract_feature_table": [{"name": "c0", "source_tensor": "continuous", "index": 0}]
        },
    )
    arguments = {
        "tasks": ["fav"],
        "rates": {"fav": TaskData()},
        "lengths": {"continuous": 2},
        "mask_mantissa": {"continuous": 3},
    }
    training = build_preprocessor(config, with_labels=True, truncate_in_reader=False, **arguments)
    assert [type(step).__name__ for step in training.steps] == [
        "MaskMantissaStep",
        "ExampleWeightsStep",
        "DownsampleNegativesStep",
        "TruncateAndSliceStep",
        "DownCastStep",
        "RectifyLabelsStep",
        "ExtractFeaturesStep",
    ]
    assert training.batch_multiplier == 2
    inference = build_preprocessor(config, with_labels=False, **arguments)
    assert [type(step).__name__ for step in inference.steps] == [
        "MaskMantissaStep",
        "DownCastStep",
        "ExtractFeaturesStep",
    ]
    assert inference.truncate is not None and inference.batch_multiplier == 1
