"""Every path a TwHIN job writes under its ``save_dir``::

<save_dir>/
  checkpoints/step_<N>/     torch.distributed.checkpoint folders (tml.checkpoint)
  train.jsonl, eval.jsonl   metric streams, one JSON record per log step
  tensorboard/<stream>/     TensorBoard event files of each stream
  export/step_<N>/          the hand-off to the ranker (export.py)
"""

from __future__ import annotations

import os

from tml.checkpoint import find_complete_checkpoint
from tml.observability.metric_loggers import MetricLoggers, build_metric_loggers
from tml.storage import AnyPath, RemotePath, as_path

TRAIN = "train"
EVAL = "eval"


class TwhinJobFolder:
    """The paths under one TwHIN job's ``save_dir``."""

    def __init__(self, save_dir: str | os.PathLike | RemotePath) -> None:
        self.root: AnyPath = as_path(save_dir)

    @property
    def checkpoints(self) -> AnyPath:
        """The folder of the job's step folders."""
        return self.root / "checkpoints"

    def find_checkpoint(self, path: str | os.PathLike | RemotePath | None = None) -> AnyPath:
        """A complete checkpoint folder: ``path`` itself, the newest under ``path`` (a folder of
        checkpoints or another job's save_dir), or by default this job's newest.

        Raises:
            CheckpointNotFoundError: naming the path that holds no complete checkpoint.
        """
        return find_complete_checkpoint(path if path is not None else self.root, "checkpoints")

    def metrics_file(self, stream: str) -> AnyPath:
        """The JSONL file of a metric stream (``train`` or ``eval``)."""
        return self.root / f"{stream}.jsonl"

    def metric_loggers(self, stream: str, *, is_main: bool) -> MetricLoggers:
        """Console, JSONL and TensorBoard loggers of a stream (none on ranks other than 0)."""
        if isinstance(self.root, RemotePath):
            # TensorBoard appends to its files, which object stores cannot do: a local folder
            # per job URL (s3://bucket/job -> <local>/s3/bucket/job/<stream>), as recap does.
            protocol, _, rest = str(self.root).partition("://")
            local = os.environ.get("TML_TENSORBOARD_DIR", "tensorboard")
            tensorboard = as_path(local) / protocol / rest / stream
        else:
            tensorboard = self.root / "tensorboard" / stream
        return build_metric_loggers(
            name=stream,
            jsonl_path=self.metrics_file(stream),
            tensorboard_dir=tensorboard,
            is_main=is_main,
        )

    def export_dir(self, checkpoint: AnyPath) -> AnyPath:
        """Where the export of ``checkpoint`` goes by default."""
        return self.root / "export" / checkpoint.name
