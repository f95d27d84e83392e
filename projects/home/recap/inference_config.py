"""What inference scores and how: the data, the checkpoint, the output, and the ranking weights
that combine the calibrated probabilities into the serving score."""

from __future__ import annotations

from collections.abc import Sequence

import pydantic

from tml.core.config import BaseConfig, Field

# The published April 2023 weights of the serving score, by training label.
PUBLISHED_RANKING_WEIGHTS: dict[str, float] = {
    "recap.engagement.is_favorited": 0.5,
    "recap.engagement.is_retweeted": 1.0,
    "recap.engagement.is_replied": 13.5,
    "recap.engagement.is_profile_clicked_and_profile_engaged": 12.0,
    "recap.engagement.is_video_playback_50": 0.005,
    "recap.engagement.is_replied_reply_engaged_by_author": 75.0,
    "recap.engagement.is_good_clicked_convo_desc_favorited_or_replied": 11.0,
    "recap.engagement.is_good_clicked_convo_desc_v2": 10.0,
    "recap.engagement.is_negative_feedback_v2": -74.0,
    "recap.engagement.is_report_tweet_clicked": -369.0,
}


class InferenceConfig(BaseConfig):
    """What ``--mode inference`` scores, with which weights, and where the predictions go."""

    data: str | None = Field(
        None,
        description="Name of the validation_data partition to score (null: the first one).",
    )
    checkpoint: str | None = Field(
        None,
        description="Checkpoint folder, or a save_dir, whose weights score (null: the newest "
        "checkpoint in training.save_dir).",
    )
    output_dir: str | None = Field(
        None,
        description="Folder for the Parquet predictions, one file per rank (null: "
        "<save_dir>/predictions/step_<step>).",
    )
    passthrough_features: list[str] = Field(
        [],
        description="Numeric schema features copied into the predictions, one column each "
        "under its schema name (e.g. a timestamp or a label the model does not train on), so "
        "that predictions can be sliced or joined without reading the data again.",
    )
    ranking_weights: dict[str, float] | None = Field(
        None,
        description="Task -> weight of its calibrated probability in the ranking score (null: "
        "the published April 2023 weights of the model tasks that have one).",
    )

    @pydantic.field_validator("passthrough_features")
    @classmethod
    def _check_passthrough(cls, names: list[str]) -> list[str]:
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(f"features named twice: {repeated}")
        # Predictions columns of their own have a slash (label/..., probability/...) or are
        # one of these; a schema name equal to one would make two columns of one name.
        taken = sorted(set(names) & {"source_file", "source_row", "score", *ID_COLUMN_NAMES})
        if taken:
            raise ValueError(f"{taken} would collide with the predictions' own columns")
        return names


# The id columns inference writes when the meta ids are renamed (see inference.py).
ID_COLUMN_NAMES = ("user_id", "author_id", "tweet_id")


def ranking_weights(config: InferenceConfig, tasks: Sequence[str]) -> dict[str, float]:
    """Task -> weight of the ranking score: the configured ones, else the published ones of the
    model's tasks."""
    if config.ranking_weights is not None:
        return dict(config.ranking_weights)
    return {task: weight for task, weight in PUBLISHED_RANKING_WEIGHTS.items() if task in tasks}
