"""Featurization: how continuous (and binary, discrete) features become the model's dense input.

Every variant first replaces non-finite continuous values by 0 (the data passes NaN and inf
through), then transforms them, then appends the features named in ``feature_names_to_concat``
raw; ``double_norm_log`` ends with an optional LayerNorm over the whole result.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from projects.home.recap.inputs import ContinuousSource, DenseInputs, InputSpec
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
from tml.storage import as_path

Z_SCORE_KEYS = frozenset({"feature_name", "mean", "std", "count"})
# The DenseInputs field of each name feature_names_to_concat may list.
CONCATENATED_INPUTS = {"binary": "binary_features", "discrete": "discrete_features"}


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

    def forward(self, inputs: DenseInputs) -> torch.Tensor:
        # Down-cast inputs (bfloat16, uint8, bool) are widened: log1p and the norms need fp32.
        x = inputs.continuous_features.to(torch.float32)
        x = self.transform(torch.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0))
        parts = [x]
        for name in self.concat:
            feature = getattr(inputs, CONCATENATED_INPUTS[name])
            if feature is None:
                raise ModelInputError(f"featurization concatenates {name}, but the batch has none")
            parts.append(feature.to(torch.float32))
        x = torch.cat(parts, dim=1) if len(parts) > 1 else x
        return self.layer_norm(x) if self.layer_norm is not None else x


def load_z_score_statistics(
    config: ZScoreLogConfig, source: ContinuousSource | None, width: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reads the mean and std of the columns the data keeps (format in docs/model.md).

    Args:
        config: The z_score_log featurization.
        source: Where the data's continuous columns come from (the schema feature, its raw
            width, the columns truncate_and_slice keeps).
        width: Continuous columns after preprocessing.

    Returns:
        ``(mean, std)``, each ``[width]``.
    """
    path = config.analysis_path
    if source is None:
        raise ModelInputError(
            f"z_score_log ({path}) normalises the continuous features, but the data has none"
        )
    try:
        stats = json.loads(as_path(path).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ModelInputError(
            f"z_score_log analysis_path {path}: cannot read it: {error}"
        ) from None
    if not isinstance(stats, dict) or not {"feature_name", "mean", "std"} <= stats.keys():
        raise ModelInputError(f"{path}: expected a JSON object with feature_name, mean and std")
    unknown = sorted(stats.keys() - Z_SCORE_KEYS)
    if unknown:
        raise ModelInputError(f"{path}: unknown keys {unknown}; allowed: {sorted(Z_SCORE_KEYS)}")
    if stats["feature_name"] != source.feature:
        raise ModelInputError(
            f"{path} describes '{stats['feature_name']}' but the data's continuous feature is "
            f"'{source.feature}'"
        )
    mean, std = stats["mean"], stats["std"]
    if not isinstance(mean, list) or not isinstance(std, list) or len(mean) != len(std):
        raise ModelInputError(f"{path}: mean and std must be lists of the same length")
    for index, (m, s) in enumerate(zip(mean, std, strict=True)):
        if not _is_finite_number(m) or not _is_finite_number(s) or s < 0:
            raise ModelInputError(
                f"{path}: column {index} needs a finite mean and a finite std >= 0, got {m}, {s}"
            )
    # The statistics cover the raw columns of the schema feature; keep those the data's
    # truncate_and_slice keeps, as the data stage reports them, so the two cannot disagree.
    if len(mean) != source.raw_width:
        raise ModelInputError(
            f"{path} has {len(mean)} columns but the schema's '{source.feature}' has "
            f"{source.raw_width}"
        )
    columns = list(range(source.raw_width)) if source.kept_columns is None else source.kept_columns
    if len(columns) != width:
        raise ModelInputError(
            f"{path} has {len(mean)} columns, of which the data keeps {len(columns)}, but "
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


def _build_log1p_abs(config: Log1pAbsConfig, spec: InputSpec) -> _Transform:
    return Log1pAbs(), None


def _build_clip_log1p_abs(config: ClipLog1pAbsConfig, spec: InputSpec) -> _Transform:
    return Log1pAbs(config.clip_magnitude), None


def _build_z_score_log(config: ZScoreLogConfig, spec: InputSpec) -> _Transform:
    mean, std = load_z_score_statistics(config, spec.continuous_source, spec.widths.continuous)
    return ZScoreLog(mean, std, config.clip_magnitude, config.use_batch_norm), None


def _build_double_norm_log(config: DoubleNormLogConfig, spec: InputSpec) -> _Transform:
    return DoubleNormLog(spec.widths.continuous, config), config.layer_norm_config


# Keyed by the FeaturizationConfig field of the "featurization" one-of group.
FEATURIZATIONS: dict[str, Callable[[Any, InputSpec], _Transform]] = {
    "log1p_abs_config": _build_log1p_abs,
    "clip_log1p_abs_config": _build_clip_log1p_abs,
    "z_score_log_config": _build_z_score_log,
    "double_norm_log_config": _build_double_norm_log,
}


def build_featurization(config: FeaturizationConfig | None, spec: InputSpec) -> Featurization:
    """Builds the featurization; ``None`` cleans the continuous values and appends binary.

    Args:
        config: The featurization config, or None.
        spec: The model's input (widths; z_score_log also needs the continuous source).

    Raises:
        ModelInputError: the chosen transform has no builder in :data:`FEATURIZATIONS`, or
            its statistics do not fit the input.
    """
    widths = spec.widths
    if config is None:
        transform: nn.Module = nn.Identity()
        layer_norm_config = None
        concat = ["binary"]
    else:
        variant, transform_config = config.transform()
        builder = FEATURIZATIONS.get(variant)
        if builder is None:
            raise ModelInputError(
                f"featurization '{variant}' has no builder; add it to FEATURIZATIONS in "
                f"{__name__} (known: {sorted(FEATURIZATIONS)})"
            )
        transform, layer_norm_config = builder(transform_config, spec)
        concat = config.feature_names_to_concat
    concat_widths = {"binary": widths.binary, "discrete": widths.discrete}
    out_features = widths.continuous + sum(concat_widths[name] for name in concat)
    layer_norm = (
        build_layer_norm(out_features, layer_norm_config) if layer_norm_config is not None else None
    )
    return Featurization(transform, concat, layer_norm, out_features)
