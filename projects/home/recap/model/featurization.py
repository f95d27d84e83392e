"""Featurization: how continuous (and binary, discrete) features become the model's dense input.

Every variant first replaces non-finite continuous values by 0 (the data passes NaN and inf
through), then transforms them, then appends the features named in ``feature_names_to_concat``
raw; ``double_norm_log`` ends with an optional LayerNorm over the whole result.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from projects.home.recap.data.batch import FeatureWidths
from projects.home.recap.data.config import RecapDataConfig, TruncateAndSlice
from projects.home.recap.data.preprocess import PreprocessError, TruncateAndSliceStep
from projects.home.recap.model.config import (
    ClipLog1pAbsConfig,
    DoubleNormLogConfig,
    FeaturizationConfig,
    LayerNormConfig,
    Log1pAbsConfig,
    ZScoreLogConfig,
)
from projects.home.recap.model.errors import ModelInputError
from projects.home.recap.model.norms import build_batch_norm, build_layer_norm

Z_SCORE_KEYS = frozenset({"feature_name", "mean", "std", "count"})


def signed_log1p(x: torch.Tensor) -> torch.Tensor:
    """``sign(x) * log1p(|x|)``: a log transform that keeps the sign and maps 0 to 0."""
    return torch.sign(x) * torch.log1p(torch.abs(x))


class Log1pAbs(nn.Module):
    """``sign(x) * log1p(|x|)``, optionally clamped to ``+-clip_magnitude``."""

    def __init__(self, clip_magnitude: float | None = None):
        super().__init__()
        self.clip_magnitude = clip_magnitude

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = signed_log1p(x)
        if self.clip_magnitude is not None:
            x = torch.clamp(x, -self.clip_magnitude, self.clip_magnitude)
        return x


class DoubleNormLog(nn.Module):
    """``clamp(BatchNorm(sign(x) * log1p(|x|)), +-clip)`` (the LayerNorm comes after concat)."""

    def __init__(self, width: int, config: DoubleNormLogConfig):
        super().__init__()
        self.batch_norm = (
            build_batch_norm(width, config.batch_norm_config)
            if config.batch_norm_config is not None
            else None
        )
        self.clip_magnitude = config.clip_magnitude

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = signed_log1p(x)
        if self.batch_norm is not None:
            x = self.batch_norm(x)
        return torch.clamp(x, -self.clip_magnitude, self.clip_magnitude)


class ZScoreLog(nn.Module):
    """``clamp([BatchNorm]((sign(x) * log1p(|x|) - mean) / std), +-clip)``.

    ``mean`` and ``std`` are buffers saved with the model, so an exported model needs no file.
    """

    def __init__(
        self, mean: torch.Tensor, std: torch.Tensor, clip_magnitude: float, use_batch_norm: bool
    ):
        super().__init__()
        self.register_buffer("mean", mean.to(torch.float32))
        # A constant column (std 0) is only centred: dividing by 0 would make it inf.
        self.register_buffer("inverse_std", 1.0 / torch.where(std > 0, std, 1.0).to(torch.float32))
        self.batch_norm = nn.BatchNorm1d(mean.numel()) if use_batch_norm else None
        self.clip_magnitude = clip_magnitude

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (signed_log1p(x) - self.mean) * self.inverse_std
        if self.batch_norm is not None:
            x = self.batch_norm(x)
        return torch.clamp(x, -self.clip_magnitude, self.clip_magnitude)


class Featurization(nn.Module):
    """Cleans and transforms the continuous features, appends the concatenated ones, and
    optionally layer-normalises the result.

    Attributes:
        out_features: Output width.
    """

    def __init__(
        self,
        transform: nn.Module,
        concat: list[str],
        layer_norm: nn.LayerNorm | None,
        out_features: int,
    ):
        super().__init__()
        self.transform = transform
        self.concat = list(concat)
        self.layer_norm = layer_norm
        self.out_features = out_features

    def forward(
        self,
        continuous_features: torch.Tensor,
        binary_features: torch.Tensor,
        discrete_features: torch.Tensor | None,
    ) -> torch.Tensor:
        # Down-cast inputs (bfloat16, uint8, bool) are widened: log1p and the norms need fp32.
        x = continuous_features.to(torch.float32)
        x = self.transform(torch.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0))
        parts = [x]
        for name in self.concat:
            feature = binary_features if name == "binary" else discrete_features
            assert feature is not None  # the ranking model checks presence with a clear error
            parts.append(feature.to(torch.float32))
        x = torch.cat(parts, dim=1) if len(parts) > 1 else x
        return self.layer_norm(x) if self.layer_norm is not None else x


def load_z_score_statistics(
    config: ZScoreLogConfig, data_config: RecapDataConfig, width: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reads the mean and std of the columns the data keeps (format in docs/model.md).

    Args:
        config: The z_score_log featurization.
        data_config: The data the model reads; names the continuous feature and its
            truncate_and_slice step.
        width: Continuous columns after preprocessing.

    Returns:
        ``(mean, std)``, each ``[width]``.
    """
    path = config.analysis_path
    try:
        stats = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ModelInputError(
            f"z_score_log analysis_path {path}: cannot read it: {error}"
        ) from None
    if not isinstance(stats, dict) or not {"feature_name", "mean", "std"} <= stats.keys():
        raise ModelInputError(f"{path}: expected a JSON object with feature_name, mean and std")
    unknown = sorted(stats.keys() - Z_SCORE_KEYS)
    if unknown:
        raise ModelInputError(f"{path}: unknown keys {unknown}; allowed: {sorted(Z_SCORE_KEYS)}")
    expected = data_config.seg_dense_schema.renamed_features.get("continuous")
    if stats["feature_name"] != expected:
        raise ModelInputError(
            f"{path} describes '{stats['feature_name']}' but the data's continuous feature is "
            f"'{expected}'"
        )
    mean, std = stats["mean"], stats["std"]
    if not isinstance(mean, list) or not isinstance(std, list) or len(mean) != len(std):
        raise ModelInputError(f"{path}: mean and std must be lists of the same length")
    for index, (m, s) in enumerate(zip(mean, std, strict=True)):
        if not _is_finite_number(m) or not _is_finite_number(s) or s < 0:
            raise ModelInputError(
                f"{path}: column {index} needs a finite mean and a finite std >= 0, got {m}, {s}"
            )
    # The statistics cover the raw columns; keep those the data's truncate_and_slice keeps,
    # selected by the loader's own step so the two cannot disagree.
    steps = data_config.preprocess.truncate_and_slice if data_config.preprocess else None
    columns = np.arange(len(mean))
    if steps is not None:
        # Only the continuous part of the step applies to these statistics.
        continuous_only = TruncateAndSlice(
            continuous_feature_truncation=steps.continuous_feature_truncation,
            continuous_feature_mask_path=steps.continuous_feature_mask_path,
        )
        try:
            selection = TruncateAndSliceStep(continuous_only, {"continuous": len(mean)}).selection(
                "continuous"
            )
        except PreprocessError as error:
            raise ModelInputError(f"{path} has {len(mean)} columns: {error}") from None
        columns = columns if selection is None else selection
    if columns.size != width:
        raise ModelInputError(
            f"{path} has {len(mean)} columns, of which the data config keeps {columns.size}, but "
            f"the continuous features have {width} columns"
        )
    index = torch.as_tensor(columns, dtype=torch.long)
    return (
        torch.tensor(mean, dtype=torch.float64)[index],
        torch.tensor(std, dtype=torch.float64)[index],
    )


def _is_finite_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


_Transform = tuple[nn.Module, LayerNormConfig | None]


def _build_log1p_abs(config: Log1pAbsConfig, width: int, data: RecapDataConfig) -> _Transform:
    return Log1pAbs(), None


def _build_clip_log1p_abs(
    config: ClipLog1pAbsConfig, width: int, data: RecapDataConfig
) -> _Transform:
    return Log1pAbs(config.clip_magnitude), None


def _build_z_score_log(config: ZScoreLogConfig, width: int, data: RecapDataConfig) -> _Transform:
    mean, std = load_z_score_statistics(config, data, width)
    return ZScoreLog(mean, std, config.clip_magnitude, config.use_batch_norm), None


def _build_double_norm_log(
    config: DoubleNormLogConfig, width: int, data: RecapDataConfig
) -> _Transform:
    return DoubleNormLog(width, config), config.layer_norm_config


# Keyed by the FeaturizationConfig field of the "featurization" one-of group.
FEATURIZATIONS: dict[str, Callable[[Any, int, RecapDataConfig], _Transform]] = {
    "log1p_abs_config": _build_log1p_abs,
    "clip_log1p_abs_config": _build_clip_log1p_abs,
    "z_score_log_config": _build_z_score_log,
    "double_norm_log_config": _build_double_norm_log,
}


def build_featurization(
    config: FeaturizationConfig | None, widths: FeatureWidths, data_config: RecapDataConfig
) -> Featurization:
    """Builds the featurization; ``None`` cleans the continuous values and appends binary.

    Args:
        config: The featurization config, or None.
        widths: Input widths after preprocessing.
        data_config: The data the model reads (z_score_log needs its schema and preprocessing).
    """
    if config is None:
        transform: nn.Module = nn.Identity()
        layer_norm_config = None
        concat = ["binary"]
    else:
        variant = config.chosen("featurization")
        assert variant is not None  # the one-of group guarantees a variant
        transform, layer_norm_config = FEATURIZATIONS[variant](
            getattr(config, variant), widths.continuous, data_config
        )
        concat = config.feature_names_to_concat
    concat_widths = {"binary": widths.binary, "discrete": widths.discrete}
    out_features = widths.continuous + sum(concat_widths[name] for name in concat)
    layer_norm = (
        build_layer_norm(out_features, layer_norm_config) if layer_norm_config is not None else None
    )
    return Featurization(transform, concat, layer_norm, out_features)
