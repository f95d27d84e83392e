"""The job folder: every path a job reads or writes under its ``save_dir``, in one place.

Layout::

    <save_dir>/
      checkpoints/step_<N>/          torch.distributed.checkpoint folders (tml.checkpoint)
        evaluated_<partition>.json   the evaluator's results for that checkpoint and partition
      train.jsonl, eval.jsonl, evaluator.jsonl     metric streams, one JSON record per log step
      tensorboard/<stream>/          TensorBoard event files of each stream
      predictions/step_<N>/predictions-<rank>-of-<world size>.parquet
                           COMPLETE    written once every rank's file is whole
      exports/step_<N>.pt2           servable exports
      job.lock                       held by the training job writing here (tml.storage.lock)

Modes, the report and tests ask this class for paths; none of them spells a name under
``save_dir`` itself.

``save_dir`` may be an object-store URL (``s3://bucket/job``, see :mod:`tml.storage`): every
path here is then a :class:`tml.storage.RemotePath`, except the TensorBoard folders, which stay
on the local disk (TensorBoard's writer appends to its event files, which object stores cannot
do) under ``$TML_TENSORBOARD_DIR`` or ``./tensorboard``, one folder per job URL.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Callable
from pathlib import Path

from tml.checkpoint import find_complete_checkpoint
from tml.core.errors import UserInputError
from tml.observability.metric_loggers import MetricLoggers, build_metric_loggers
from tml.storage import AnyPath, RemotePath, as_path
from tml.storage.paths import PARTIAL_SUFFIX


class IncompletePredictionsError(UserInputError):
    """A predictions folder whose inference did not finish: some rank's file may be partial."""


class MetricStream(enum.StrEnum):
    """The metric streams a job writes, each to its own JSONL file and TensorBoard folder."""

    TRAIN = "train"  # losses, learning rates and throughput of the training loop
    EVAL = "eval"  # in-training evaluation of the validation partitions
    EVALUATOR = "evaluator"  # the checkpoint follower (--mode evaluate)


class JobFolder:
    """The paths under one job's ``save_dir``.

    Args:
        save_dir: The job's ``training.save_dir``.
    """

    CHECKPOINTS = "checkpoints"
    PREDICTIONS = "predictions"
    EXPORTS = "exports"
    TENSORBOARD = "tensorboard"

    def __init__(self, save_dir: str | os.PathLike | RemotePath) -> None:
        self.root: AnyPath = as_path(save_dir)

    def __repr__(self) -> str:
        return f"JobFolder({str(self.root)!r})"

    # Checkpoints ------------------------------------------------------------------------------

    @property
    def checkpoints(self) -> AnyPath:
        """The folder of the job's step folders."""
        return self.root / self.CHECKPOINTS

    def find_checkpoint(self, path: str | os.PathLike | RemotePath | None = None) -> AnyPath:
        """A complete checkpoint folder: ``path`` itself, the newest under ``path`` (a folder of
        checkpoints or another job's save_dir), or by default this job's newest.

        Raises:
            CheckpointNotFoundError: naming the path that holds no complete checkpoint.
        """
        return find_complete_checkpoint(path if path is not None else self.root, self.CHECKPOINTS)

    @staticmethod
    def evaluation_results(checkpoint: AnyPath, partition: str) -> AnyPath:
        """Where the evaluator writes a checkpoint's results for one partition (marking it
        done); it lives in the checkpoint folder so it goes when the checkpoint is pruned."""
        return checkpoint / f"evaluated_{partition}.json"

    @property
    def lock_file(self) -> AnyPath:
        """The lock a training job holds on the folder, so that a second one cannot write
        into it at the same time."""
        return self.root / "job.lock"

    # Metric streams ---------------------------------------------------------------------------

    def metrics_file(self, stream: MetricStream) -> AnyPath:
        """The JSONL file of a metric stream."""
        return self.root / f"{stream.value}.jsonl"

    def tensorboard_dir(self, stream: MetricStream) -> Path:
        """The TensorBoard event folder of a metric stream (always local, see above)."""
        if isinstance(self.root, RemotePath):
            local = Path(os.environ.get("TML_TENSORBOARD_DIR", self.TENSORBOARD))
            # One folder per job URL: s3://bucket/job -> <local>/s3/bucket/job/<stream>.
            protocol, _, rest = str(self.root).partition("://")
            return local / protocol / rest / stream.value
        return self.root / self.TENSORBOARD / stream.value

    def metric_loggers(
        self,
        stream: MetricStream,
        *,
        is_main: bool,
        console_shows: Callable[[str], bool] | None = None,
    ) -> MetricLoggers:
        """Console, JSONL and TensorBoard loggers of a stream (none on ranks other than 0)."""
        return build_metric_loggers(
            name=stream.value,
            jsonl_path=self.metrics_file(stream),
            tensorboard_dir=self.tensorboard_dir(stream),
            is_main=is_main,
            console_shows=console_shows,
        )

    # Predictions and exports ------------------------------------------------------------------

    def predictions_dir(self, checkpoint: AnyPath) -> AnyPath:
        """The default folder for the predictions scored with ``checkpoint``."""
        return self.root / self.PREDICTIONS / checkpoint.name

    @staticmethod
    def predictions_file(directory: AnyPath, rank: int, world_size: int) -> AnyPath:
        """One rank's predictions file in a predictions folder."""
        return directory / f"predictions-{rank}-of-{world_size}.parquet"

    @staticmethod
    def partial_predictions_files(directory: AnyPath) -> list[AnyPath]:
        """Predictions files left partial by an inference that did not finish
        (:func:`tml.storage.file_written_whole`'s temporary names)."""
        return sorted(directory.glob(f"predictions-*-of-*.parquet{PARTIAL_SUFFIX}"))

    @staticmethod
    def predictions_marker(directory: AnyPath) -> AnyPath:
        """Written into a predictions folder once every rank's file is whole."""
        return directory / "COMPLETE"

    @staticmethod
    def predictions_files(directory: AnyPath) -> list[AnyPath]:
        """Every rank's predictions file in a predictions folder, sorted, complete or not."""
        return sorted(directory.glob("predictions-*-of-*.parquet"))

    @classmethod
    def complete_predictions_files(cls, directory: AnyPath) -> list[AnyPath]:
        """The predictions files of a folder whose inference finished on every rank.

        Raises:
            IncompletePredictionsError: the folder has files but no completion marker.
        """
        files = cls.predictions_files(directory)
        if files and not cls.predictions_marker(directory).is_file():
            raise IncompletePredictionsError(
                f"{directory}: the predictions are incomplete (no "
                f"{cls.predictions_marker(directory).name} marker: the inference that wrote them "
                "did not finish); rerun --mode inference"
            )
        return files

    def all_predictions_files(self) -> list[AnyPath]:
        """The predictions files of every checkpoint scored into the default folders (complete
        folders only)."""
        root = self.root / self.PREDICTIONS
        if not root.is_dir():
            return []
        return [
            path
            for child in sorted(root.iterdir())
            if self.predictions_marker(child).is_file()
            for path in self.predictions_files(child)
        ]

    def export_file(self, checkpoint: AnyPath) -> AnyPath:
        """The default servable export of ``checkpoint``."""
        return self.root / self.EXPORTS / f"{checkpoint.name}.pt2"
