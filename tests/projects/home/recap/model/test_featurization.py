import json
import math

import pytest
import torch

from projects.home.recap.inputs import ContinuousSource, DenseInputs, InputWidths
from projects.home.recap.model import featurization
from projects.home.recap.model.config import FeaturizationConfig
from projects.home.recap.model.featurization import FEATURIZATIONS, build_featurization

LOG2 = math.log(2.0)


def featurize(recap, text, continuous, binary, discrete=None, source=None):
    config = recap.model_config(text + "\n" + recap.mlp_towers()).featurization_config
    widths = InputWidths(continuous.shape[1], binary.shape[1], 3, {})
    module = build_featurization(config, recap.input_spec(widths, source)).eval()
    return module(DenseInputs(continuous, binary, discrete))


def test_the_table_covers_every_featurization():
    assert set(FEATURIZATIONS) == set(FeaturizationConfig._field_groups["one_of"]["featurization"])


def test_log1p_abs_cleans_non_finite_values_and_appends_binary(recap):
    continuous = torch.tensor([[-1.0, 0.0, math.e - 1, math.nan, math.inf, -math.inf]])
    binary = torch.tensor([[1, 0]], dtype=torch.uint8)
    out = featurize(recap, "featurization_config: {log1p_abs_config: {}}", continuous, binary)
    torch.testing.assert_close(out, torch.tensor([[-LOG2, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0]]))


def test_clip_log1p_abs_clamps(recap):
    continuous = torch.tensor([[-100.0, 1.0, 1e6]])
    out = featurize(
        recap,
        "featurization_config: {clip_log1p_abs_config: {clip_magnitude: 2.0}}",
        continuous,
        torch.zeros(1, 0),
    )
    torch.testing.assert_close(out, torch.tensor([[-2.0, LOG2, 2.0]]))


def test_no_featurization_config_cleans_and_appends_binary(recap):
    module = build_featurization(None, recap.input_spec(InputWidths(2, 1, 3, {})))
    out = module(DenseInputs(torch.tensor([[math.nan, -5.0]]), torch.tensor([[True]])))
    torch.testing.assert_close(out, torch.tensor([[0.0, -5.0, 1.0]]))


def test_concatenates_discrete_in_the_configured_order(recap):
    out = featurize(
        recap,
        "featurization_config: {log1p_abs_config: {}, feature_names_to_concat: [discrete, binary]}",
        torch.zeros(1, 1),
        torch.tensor([[1.0]]),
        torch.tensor([[7, 8, 9]]),
    )
    torch.testing.assert_close(out, torch.tensor([[0.0, 7.0, 8.0, 9.0, 1.0]]))


def test_double_norm_log_by_hand(recap):
    # Eval mode: batch norm uses its initial running statistics (mean 0, var 1), so it divides
    # by sqrt(1 + eps); then clamp at 1, append binary, layer norm (eps 0) over all columns.
    text = """
featurization_config:
  double_norm_log_config:
    batch_norm_config: {affine: true, momentum: 0.1, epsilon: 0.25}
    clip_magnitude: 1.0
    layer_norm_config: {epsilon: 0.0}
"""
    continuous = torch.tensor([[math.e - 1, -(math.e**3 - 1)]])
    out = featurize(recap, text, continuous, torch.tensor([[1.0, 0.0]]))
    normed = [1.0 / math.sqrt(1.25), max(-3.0 / math.sqrt(1.25), -1.0), 1.0, 0.0]
    mean = sum(normed) / 4
    std = math.sqrt(sum((v - mean) ** 2 for v in normed) / 4)
    torch.testing.assert_close(out, torch.tensor([[(v - mean) / std for v in normed]]))


def write_stats(path, feature="cont", mean=None, std=None, **extra):
    mean = mean if mean is not None else [float(i) for i in range(6)]
    std = std if std is not None else [1.0, 2.0, 0.0, 4.0, 5.0, 0.5]
    path.write_text(json.dumps({"feature_name": feature, "mean": mean, "std": std, **extra}))
    return path


def z_score_text(path, clip=100.0):
    return f"featurization_config: {{z_score_log_config: {{analysis_path: {path}, clip_magnitude: {clip}}}}}"  # noqa: E501


def test_z_score_log_selects_the_kept_columns_by_hand(recap, tmp_path):
    # Raw stats cover 6 columns; the data keeps the first 4, then columns 1 and 2 by mask, as
    # the data stage reports in the input spec.
    stats = write_stats(tmp_path / "stats.json")
    source = ContinuousSource(feature="cont", raw_width=6, kept_columns=(1, 2))
    continuous = torch.tensor([[math.e - 1, math.e**2 - 1]])
    out = featurize(recap, z_score_text(stats), continuous, torch.zeros(1, 0), source=source)
    # Column 1: (1 - 1) / 2; column 2 has std 0 and is only centred: 2 - 2.
    torch.testing.assert_close(out, torch.tensor([[0.0, 0.0]]))
    continuous = torch.tensor([[0.0, 0.0]])
    text = z_score_text(stats, clip=1.5)
    out = featurize(recap, text, continuous, torch.zeros(1, 0), source=source)
    torch.testing.assert_close(out, torch.tensor([[-0.5, -1.5]]))


@pytest.mark.parametrize(
    ("stats", "message"),
    [
        ({"feature": "other"}, "describes 'other'"),
        ({"mean": [0.0] * 5, "std": [1.0] * 5}, "has 5 columns but the schema's 'cont' has 6"),
        ({"std": [1.0, -1.0, 1.0, 1.0, 1.0, 1.0]}, "column 1 needs a finite mean"),
        ({"stdev": 1}, "unknown keys"),
    ],
)
def test_z_score_statistics_errors_name_the_problem(recap, tmp_path, stats, message):
    path = write_stats(tmp_path / "stats.json", **stats)
    with pytest.raises(ValueError, match=message):
        featurize(recap, z_score_text(path), torch.zeros(1, 6), torch.zeros(1, 0))


def test_z_score_needs_the_spec_to_keep_as_many_columns_as_the_model_reads(recap, tmp_path):
    path = write_stats(tmp_path / "stats.json")
    source = ContinuousSource(feature="cont", raw_width=6, kept_columns=(0, 1, 2))
    with pytest.raises(ValueError, match="the data keeps 3, but the continuous features have 6"):
        featurize(recap, z_score_text(path), torch.zeros(1, 6), torch.zeros(1, 0), source=source)


def test_z_score_needs_a_continuous_feature(recap, tmp_path):
    config = recap.model_config(
        z_score_text(write_stats(tmp_path / "stats.json")) + "\n" + recap.mlp_towers()
    ).featurization_config
    spec = recap.input_spec(InputWidths(6, 0, 3, {}))
    spec = type(spec)(widths=spec.widths, task_sampling=spec.task_sampling)
    with pytest.raises(ValueError, match="the data has none"):
        build_featurization(config, spec)


def test_a_featurization_without_a_builder_is_a_clear_error(recap, monkeypatch):
    config = recap.model_config(
        "featurization_config: {log1p_abs_config: {}}\n" + recap.mlp_towers()
    ).featurization_config
    monkeypatch.delitem(featurization.FEATURIZATIONS, "log1p_abs_config")
    with pytest.raises(ValueError, match="featurization 'log1p_abs_config' has no builder"):
        build_featurization(config, recap.input_spec())


def test_z_score_rejects_schema_path_at_config_load(recap, tmp_path):
    text = z_score_text(tmp_path / "s.json").replace(
        "clip_magnitude", "schema_path: x, clip_magnitude"
    )
    with pytest.raises(ValueError, match="schema_path is not supported"):
        recap.model_config(text + "\n" + recap.mlp_towers())
