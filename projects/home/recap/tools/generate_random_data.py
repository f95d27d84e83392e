"""Writes synthetic, schema-conformant Parquet data whose labels a model can learn.

    python -m projects.home.recap.tools.generate_random_data --config_path CFG \\
        --num_examples N [--num_files K] [--output_dir D] [--seed S] [--partition NAME]

The data imitates the real thing where it matters to training and to the file format:

* continuous features are heavy-tailed and mostly zero (counts and low-precision reals), so
  files compress as real ones do; binary features are sparse flags; discrete ones are skewed
  small integers;
* users and authors recur (popular authors more often), with fixed TwHIN embeddings derived
  from hidden taste vectors, and large int64 ids;
* each engagement's log-odds depend on a few continuous and binary features, on the affinity
  of the user's and the author's hidden tastes (visible through the TwHIN embeddings), and on
  per-user and per-author effects (learnable by large embedding tables of those ids); a bias
  per engagement sets its positive rate (about 1-5 %, report about 0.1 %).

The hidden "world" (which features matter, tastes, effects, biases) is fixed; ``--seed`` only
draws the examples, so a validation set written with another seed follows the same rules as
the training set. Files go into the folder of the partition's ``inputs`` glob (or its dated
folder) unless ``--output_dir`` says otherwise.
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import logging
import os
import sys
import zlib
from collections.abc import Sequence
from datetime import datetime, timedelta

import numpy as np
from tqdm import tqdm

from projects.home.recap.config import RecapConfig
from projects.home.recap.data.config import DATETIME_FORMAT, RecapDataConfig
from projects.home.recap.data.parquet_format import SegDenseWriter, WriteOptions
from projects.home.recap.data.preprocess import TruncateAndSliceStep
from projects.home.recap.data.schema import (
    VARIABLE_LENGTH,
    FeatureDtype,
    FeatureSpec,
    SegDenseSchema,
    load_schema,
)
from tml.core.config import load_config_from_yaml
from tml.core.errors import UserInputError

logger = logging.getLogger(__name__)

WORLD_SEED = 20230331
NUM_USERS = 2000
NUM_AUTHORS = 400
TASTE_DIM = 8
# Features the labels depend on: the first few continuous and binary columns, which every
# truncation keeps.
SIGNAL_CONTINUOUS = 8
SIGNAL_BINARY = 8
# Positive rates of the published heads; other labels get DEFAULT_RATE.
POSITIVE_RATES = {
    "recap.engagement.is_favorited": 0.04,
    "recap.engagement.is_retweeted": 0.01,
    "recap.engagement.is_replied": 0.015,
    "recap.engagement.is_profile_clicked_and_profile_engaged": 0.015,
    "recap.engagement.is_video_playback_50": 0.03,
    "recap.engagement.is_replied_reply_engaged_by_author": 0.003,
    "recap.engagement.is_good_clicked_convo_desc_favorited_or_replied": 0.02,
    "recap.engagement.is_good_clicked_convo_desc_v2": 0.025,
    "recap.engagement.is_negative_feedback_v2": 0.005,
    "recap.engagement.is_report_tweet_clicked": 0.001,
    "recap.engagement.is_bookmarked": 0.005,
    "recap.engagement.is_shared": 0.003,
    "recap.engagement.is_tweet_detail_dwelled_15_sec": 0.05,
}
DEFAULT_RATE = 0.02
# Show a progress bar from this many examples on.
PROGRESS_FROM = 50_000

# Renamed features with a role in the generator -> how they are drawn.
ROLES = (
    "continuous",
    "binary",
    "discrete",
    "user_embedding",
    "user_eng_embedding",
    "author_embedding",
    "meta__user_id",
    "meta__author_id",
    "meta__tweet_id",
)


class GenerationError(UserInputError):
    """The generator cannot write data for this config; the message says why."""


@dataclasses.dataclass
class _Columns:
    """Per-column distributions of a dense feature family, drawn from the world."""

    zero_probability: np.ndarray
    scale: np.ndarray
    is_count: np.ndarray


class World:
    """The hidden rules every generated example follows (fixed by WORLD_SEED)."""

    def __init__(self, schema: SegDenseSchema, roles: dict[str, str], labels: Sequence[str]):
        rng = np.random.default_rng(WORLD_SEED)
        self.roles = roles
        self.labels = list(labels)
        length = {spec.name: spec.length for spec in schema}
        self.continuous_width = length.get(roles.get("continuous", ""), 0)
        self.binary_width = length.get(roles.get("binary", ""), 0)
        self.discrete_width = length.get(roles.get("discrete", ""), 0)
        width = self.continuous_width
        self.continuous = _Columns(
            zero_probability=rng.uniform(0.3, 0.97, width).astype(np.float32),
            scale=np.exp(rng.uniform(-2.0, 8.0, width)).astype(np.float32),
            is_count=rng.random(width) < 0.5,
        )
        self.continuous.zero_probability[:SIGNAL_CONTINUOUS] = 0.3
        self.binary_probability = rng.beta(0.5, 3.0, self.binary_width)
        self.binary_probability[:SIGNAL_BINARY] = rng.uniform(0.1, 0.5, min(8, self.binary_width))
        self.discrete_cardinality = np.exp(rng.uniform(0.7, 7.0, self.discrete_width)).astype(
            np.int64
        )
        self.user_ids = rng.integers(10**9, 2**62, NUM_USERS, dtype=np.int64)
        self.author_ids = rng.integers(10**9, 2**62, NUM_AUTHORS, dtype=np.int64)
        popularity = 1.0 / np.arange(1, NUM_AUTHORS + 1) ** 0.8
        self.author_popularity = popularity / popularity.sum()
        user_taste = rng.standard_normal((NUM_USERS, TASTE_DIM)).astype(np.float32)
        author_taste = rng.standard_normal((NUM_AUTHORS, TASTE_DIM)).astype(np.float32)
        self.affinity_user, self.affinity_author = user_taste, author_taste
        self.embeddings = {
            "user_embedding": self._embed(rng, user_taste, schema, "user_embedding"),
            "user_eng_embedding": self._embed(rng, user_taste, schema, "user_eng_embedding"),
            "author_embedding": self._embed(rng, author_taste, schema, "author_embedding"),
        }
        count = len(self.labels)
        signal_continuous = min(SIGNAL_CONTINUOUS, self.continuous_width)
        signal_binary = min(SIGNAL_BINARY, self.binary_width)
        self.continuous_weights = np.zeros((signal_continuous, count), np.float32)
        self.binary_weights = np.zeros((signal_binary, count), np.float32)
        for task in range(count):
            chosen = rng.choice(signal_continuous, min(3, signal_continuous), replace=False)
            self.continuous_weights[chosen, task] = rng.normal(0.0, 0.8, len(chosen))
            chosen = rng.choice(signal_binary, min(2, signal_binary), replace=False)
            self.binary_weights[chosen, task] = rng.normal(0.0, 0.8, len(chosen))
        self.affinity_weight = rng.uniform(0.5, 1.2, count).astype(np.float32)
        self.user_effect = rng.normal(0.0, 0.7, (NUM_USERS, count)).astype(np.float32)
        self.author_effect = rng.normal(0.0, 0.7, (NUM_AUTHORS, count)).astype(np.float32)
        self.bias = np.zeros(count, np.float32)
        # Standardise the signal features, then pick each bias to hit the label's rate.
        sample = self.draw(
            np.random.default_rng(WORLD_SEED + 1), 8192, tweet_id_start=0, signal_only=True
        )
        logs = np.log1p(sample.signal_continuous)
        self._log_mean = logs.mean(axis=0)
        self._log_std = logs.std(axis=0) + 1e-6
        scores = self.scores(sample)
        for task, label in enumerate(self.labels):
            self.bias[task] = _bias_for_rate(
                scores[:, task], POSITIVE_RATES.get(label, DEFAULT_RATE)
            )

    def _embed(
        self, rng: np.random.Generator, taste: np.ndarray, schema: SegDenseSchema, role: str
    ) -> np.ndarray | None:
        name = self.roles.get(role)
        if name is None or name not in schema:
            return None
        width = schema.get(name, where=role).length
        projection = rng.standard_normal((TASTE_DIM, width)).astype(np.float32) / np.sqrt(TASTE_DIM)
        noise = 0.3 * rng.standard_normal((len(taste), width)).astype(np.float32)
        return taste @ projection + noise

    def draw(
        self, rng: np.random.Generator, rows: int, tweet_id_start: int, signal_only: bool = False
    ) -> _Sample:
        """Draws ``rows`` examples (features only; with ``signal_only`` just the continuous
        columns the labels depend on)."""
        users = rng.integers(0, NUM_USERS, rows)
        authors = rng.choice(NUM_AUTHORS, rows, p=self.author_popularity)
        width = (
            min(SIGNAL_CONTINUOUS, self.continuous_width) if signal_only else self.continuous_width
        )
        scale, is_count, zero_probability = (
            self.continuous.scale[:width],
            self.continuous.is_count[:width],
            self.continuous.zero_probability[:width],
        )
        magnitude = np.exp(1.2 * rng.standard_normal((rows, width), dtype=np.float32))
        continuous = scale * magnitude
        continuous = np.where(is_count, np.floor(continuous), _low_precision(continuous))
        continuous[rng.random((rows, width), dtype=np.float32) < zero_probability] = 0.0
        binary = (rng.random((rows, self.binary_width)) < self.binary_probability).astype(np.int64)
        discrete = np.minimum(
            np.floor(rng.pareto(1.5, (rows, self.discrete_width))).astype(np.int64),
            self.discrete_cardinality,
        )
        return _Sample(
            users=users,
            authors=authors,
            continuous=continuous.astype(np.float32, copy=False),
            binary=binary,
            discrete=discrete,
            tweet_ids=np.arange(tweet_id_start, tweet_id_start + rows, dtype=np.int64),
        )

    def scores(self, sample: _Sample) -> np.ndarray:
        """Log-odds without the bias, ``[rows, labels]``."""
        signal = (np.log1p(sample.signal_continuous) - self._log_mean) / self._log_std
        scores = signal @ self.continuous_weights
        scores += sample.binary[:, : self.binary_weights.shape[0]] @ self.binary_weights
        affinity = np.einsum(
            "ij,ij->i", self.affinity_user[sample.users], self.affinity_author[sample.authors]
        ) / np.sqrt(TASTE_DIM)
        scores += affinity[:, None] * self.affinity_weight
        scores += self.user_effect[sample.users] + self.author_effect[sample.authors]
        return scores

    def label(self, rng: np.random.Generator, sample: _Sample) -> np.ndarray:
        """Bernoulli labels ``[rows, labels]`` (int64)."""
        probability = 1.0 / (1.0 + np.exp(-(self.scores(sample) + self.bias)))
        return (rng.random(probability.shape) < probability).astype(np.int64)


@dataclasses.dataclass
class _Sample:
    users: np.ndarray
    authors: np.ndarray
    continuous: np.ndarray
    binary: np.ndarray
    discrete: np.ndarray
    tweet_ids: np.ndarray

    @property
    def signal_continuous(self) -> np.ndarray:
        return self.continuous[:, :SIGNAL_CONTINUOUS]


def _low_precision(values: np.ndarray) -> np.ndarray:
    """Keeps 10 mantissa bits, as logged ratios and scores usually have."""
    bits = values.astype(np.float32).view(np.int32) & np.int32(-(1 << 13))
    return bits.view(np.float32)


def _bias_for_rate(scores: np.ndarray, rate: float) -> float:
    low, high = -30.0, 30.0
    for _ in range(60):
        middle = (low + high) / 2
        if np.mean(1.0 / (1.0 + np.exp(-(scores + middle)))) > rate:
            high = middle
        else:
            low = middle
    return (low + high) / 2


def _generic_values(rng: np.random.Generator, spec: FeatureSpec, rows: int) -> object:
    """Values for a schema feature without a role: plausible noise of the right type."""
    if spec.length == VARIABLE_LENGTH:
        lengths = rng.integers(0, 5, rows)
        if spec.dtype == FeatureDtype.BYTES_LIST:
            return [[b"x" * int(size)] * int(size) for size in lengths]
        dtype = spec.numpy_dtype
        return [rng.integers(0, 1000, size).astype(dtype).tolist() for size in lengths]
    if spec.dtype == FeatureDtype.BYTES_LIST:
        values = [rng.bytes(8) for _ in range(rows * spec.length)]
        return values if spec.length == 1 else np.array(values, object).reshape(rows, -1).tolist()
    if spec.dtype == FeatureDtype.INT64_LIST:
        return rng.integers(0, 1000, (rows, spec.length), dtype=np.int64)
    return rng.standard_normal((rows, spec.length), dtype=np.float32)


def _partition(config: RecapConfig, name: str) -> RecapDataConfig:
    if name == "train":
        return config.train_data
    if name not in config.validation_data:
        known = ", ".join(["train", *config.validation_data])
        raise GenerationError(f"--partition: no partition '{name}'; the config has: {known}")
    return config.validation_data[name]


def default_output_dir(data_config: RecapDataConfig) -> str:
    """The folder a partition reads: its glob's folder, or its newest dated folder.

    Raises:
        GenerationError: when the glob's folder part itself holds wildcards.
    """
    if data_config.inputs is not None:
        folder = os.path.dirname(data_config.inputs) or "."
        if glob.has_magic(folder):
            raise GenerationError(
                f"inputs '{data_config.inputs}': the folder has wildcards; pass --output_dir"
            )
        return folder
    if data_config.explicit_date_inputs is not None:
        inputs = data_config.explicit_date_inputs
        return os.path.join(inputs.data_root, inputs.end_date)
    inputs = data_config.explicit_datetime_inputs
    assert inputs is not None
    newest = datetime.strptime(inputs.end_datetime, DATETIME_FORMAT) - timedelta(hours=1)
    return os.path.join(inputs.data_root, newest.strftime(DATETIME_FORMAT))


def _roles(data_config: RecapDataConfig) -> dict[str, str]:
    renamed = data_config.seg_dense_schema.renamed_features
    return {role: renamed[role] for role in ROLES if role in renamed}


def config_split_points(data_config: RecapDataConfig) -> dict[str, list[int]]:
    """Truncation points of the config, so its reader decodes only what it keeps (the column
    cuts of :class:`WriteOptions` that every writer of data for this config should use)."""
    roles = _roles(data_config)
    steps = data_config.preprocess
    if steps is None or steps.truncate_and_slice is None:
        return {}
    points = {}
    for name, (field, _mask) in TruncateAndSliceStep.FIELDS.items():
        value = getattr(steps.truncate_and_slice, field)
        if value is not None and name in roles:
            points[roles[name]] = [value]
    return points


def generate_dataset(
    data_config: RecapDataConfig,
    output_dir: str,
    *,
    num_examples: int,
    num_files: int = 1,
    seed: int = 0,
    options: WriteOptions | None = None,
    progress: bool | None = None,
) -> list[str]:
    """Writes ``num_examples`` examples into ``num_files`` Parquet files.

    Args:
        data_config: The partition: its schema, renamed features, labels and truncation.
        output_dir: Where the files go (created if needed); files are named part-NNNNN.parquet.
        num_examples: Examples in all.
        num_files: Files; examples are spread evenly.
        seed: Draws the examples (the world's rules do not depend on it).
        options: How files are written (default: the split points of the config's truncation).
        progress: Show a progress bar (default: from PROGRESS_FROM examples on).

    Returns:
        The paths written.
    """
    if num_examples < 1 or num_files < 1:
        raise GenerationError("--num_examples and --num_files must be positive")
    if num_files > num_examples:
        raise GenerationError(f"cannot spread {num_examples} examples over {num_files} files")
    if options is not None and options.row_group_size < 1:
        raise GenerationError(f"--row_group_size must be positive, got {options.row_group_size}")
    schema = load_schema(data_config.seg_dense_schema.schema_path)
    roles = _roles(data_config)
    labels = [name for name in data_config.tasks if name in schema]
    world = World(schema, roles, labels)
    if options is None:
        options = WriteOptions(split_points=config_split_points(data_config))
    os.makedirs(output_dir, exist_ok=True)
    ours = {f"part-{index:05d}.parquet" for index in range(num_files)}
    others = sorted(set(os.listdir(output_dir)) - ours)
    if any(name.endswith(".parquet") for name in others):
        logger.warning("%s holds other .parquet files, which a glob will read too", output_dir)
    # Partitions drawn with one seed still differ: the output folder is mixed into the seed.
    rng = np.random.default_rng([seed, zlib.crc32(os.path.abspath(output_dir).encode())])
    paths = []
    positives = np.zeros(len(labels), np.int64)
    counts = np.diff(np.linspace(0, num_examples, num_files + 1).astype(np.int64))
    show = progress if progress is not None else num_examples >= PROGRESS_FROM
    tweet_id = int(rng.integers(10**15, 10**16))
    with tqdm(total=num_examples, unit="ex", disable=not show, desc="generating") as bar:
        for index, count in enumerate(counts):
            path = os.path.join(output_dir, f"part-{index:05d}.parquet")
            with SegDenseWriter(path, schema, options) as writer:
                for start in range(0, int(count), options.row_group_size):
                    rows = min(options.row_group_size, int(count) - start)
                    values = _draw_rows(world, rng, schema, roles, labels, rows, tweet_id)
                    tweet_id += rows
                    positives += values["__labels__"].sum(axis=0)
                    del values["__labels__"]
                    writer.write(values)
                    bar.update(rows)
            paths.append(path)
    rates = ", ".join(
        f"{label.rsplit('.', 1)[-1]} {count / num_examples:.2%}"
        for label, count in zip(labels, positives, strict=True)
    )
    logger.info(
        "wrote %d examples in %d files to %s; positive rates: %s",
        num_examples,
        num_files,
        output_dir,
        rates,
    )
    return paths


def _draw_rows(
    world: World,
    rng: np.random.Generator,
    schema: SegDenseSchema,
    roles: dict[str, str],
    labels: list[str],
    rows: int,
    tweet_id: int,
) -> dict[str, object]:
    sample = world.draw(rng, rows, tweet_id)
    label_values = world.label(rng, sample)
    by_role: dict[str, object] = {
        "continuous": sample.continuous,
        "binary": sample.binary,
        "discrete": sample.discrete,
        "meta__user_id": world.user_ids[sample.users],
        "meta__author_id": world.author_ids[sample.authors],
        "meta__tweet_id": sample.tweet_ids,
    }
    for role, table in world.embeddings.items():
        if table is not None:
            owners = sample.authors if role == "author_embedding" else sample.users
            by_role[role] = table[owners]
    values: dict[str, object] = {}
    for role, name in roles.items():
        spec = schema.get(name, where=f"renamed_features.{role}")
        value = by_role[role]
        if isinstance(value, np.ndarray) and value.ndim == 1:
            value = value[:, None]
        if isinstance(value, np.ndarray) and value.shape[1] != spec.length and spec.length != -1:
            value = _generic_values(rng, spec, rows)
        values[name] = value
    for index, label in enumerate(labels):
        values[label] = label_values[:, index : index + 1]
    for spec in schema:
        if spec.name not in values:
            values[spec.name] = _generic_values(rng, spec, rows)
    values["__labels__"] = label_values
    return values


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m projects.home.recap.tools.generate_random_data",
        description="Write synthetic, learnable Parquet data for a ranker config.",
    )
    parser.add_argument("--config_path", required=True, help="YAML config of the ranker.")
    parser.add_argument("--num_examples", type=int, required=True, help="Examples to write.")
    parser.add_argument("--num_files", type=int, default=1, help="Files to spread them over.")
    parser.add_argument(
        "--output_dir", help="Folder for the files (default: the partition's input folder)."
    )
    parser.add_argument("--seed", type=int, default=0, help="Seed drawing the examples.")
    parser.add_argument(
        "--partition",
        default="train",
        help="'train' (train_data) or the name of a validation_data partition.",
    )
    parser.add_argument(
        "--row_group_size", type=int, default=WriteOptions.row_group_size, help="Rows per group."
    )
    parser.add_argument("overrides", nargs="*", help="dotted.path=value config overrides.")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        config = load_config_from_yaml(RecapConfig, args.config_path, args.overrides)
        data_config = _partition(config, args.partition)
        output_dir = args.output_dir or default_output_dir(data_config)
        options = WriteOptions(
            row_group_size=args.row_group_size, split_points=config_split_points(data_config)
        )
        generate_dataset(
            data_config,
            output_dir,
            num_examples=args.num_examples,
            num_files=args.num_files,
            seed=args.seed,
            options=options,
        )
    except (UserInputError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
