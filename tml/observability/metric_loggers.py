"""Metric loggers behind one small interface: console, TensorBoard event files, JSONL.

Only rank 0 writes; other ranks get an empty fan-out so callers need no rank checks.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping
from typing import IO, Protocol

from tml.observability.metric_json import metrics_to_json
from tml.storage import RemotePath, as_path, write_atomically

logger = logging.getLogger(__name__)


class MetricLogger(Protocol):
    """Receives named scalar metrics at a step."""

    def log(self, step: int, metrics: Mapping[str, float]) -> None: ...

    def discard_after(self, step: int) -> None:
        """Forgets what was logged after ``step``: a job resuming from a checkpoint at ``step``
        logs those steps again."""
        ...

    def close(self) -> None: ...


class ConsoleLogger:
    """One log line per call: ``step 100 | loss 0.3412 | examples_per_second 5120 | ...``.

    Args:
        prefix: Starts each line, e.g. "[train] ".
        shown: Which metric names the line holds (the files get all of them); default all.
    """

    def __init__(self, prefix: str = "", shown: Callable[[str], bool] | None = None) -> None:
        self._prefix = prefix
        self._shown = shown or (lambda name: True)

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        fields = " | ".join(
            f"{name} {_format(value)}" for name, value in metrics.items() if self._shown(name)
        )
        logger.info("%sstep %d | %s", self._prefix, step, fields)

    def discard_after(self, step: int) -> None:
        """Nothing to forget: the console's lines are gone."""

    def close(self) -> None:
        """Nothing to release: the log handlers belong to the logging set-up."""


class JsonlLogger:
    """Appends ``{"step": ..., "time": ..., "<name>": value, ...}`` lines to a file.

    Appending keeps the history of a resumed job; :meth:`discard_after` drops the records of the
    steps the job repeats, so that each step appears once. An object store cannot append: there
    the file's text is kept and the whole object rewritten at each log step (a metric log is
    small, and each rewrite is one atomic PUT).
    """

    def __init__(self, path: str | os.PathLike | RemotePath) -> None:
        self._path = as_path(path)
        self._path.parent.mkdir(parents=True, exist_ok=True)
        self._file: IO[str] | None = None
        self._text = ""
        if isinstance(self._path, RemotePath):
            self._text = self._path.read_text() if self._path.is_file() else ""
        else:
            self._file = self._path.open("a")

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        record = {
            "step": step,
            "time": time.time(),
            **metrics_to_json(metrics),
        }
        line = json.dumps(record, allow_nan=False) + "\n"
        if self._file is None:
            self._text += line
            self._path.write_text(self._text)
            return
        self._file.write(line)
        self._file.flush()

    def discard_after(self, step: int) -> None:
        """Rewrites the file without the records of steps after ``step`` (atomically: a kill
        leaves the old file or the new one)."""
        if self._file is not None:
            self._file.close()
            text = self._path.read_text()
        else:
            text = self._text
        kept = [line for line in text.splitlines(keepends=True) if _step_of(line) <= step]
        if len(kept) != len(text.splitlines()):
            text = "".join(kept)
            write_atomically(self._path, text)
            logger.info(
                "%s: dropped the records after step %d, which the job repeats", self._path, step
            )
        if self._file is not None:
            self._file = self._path.open("a")
        else:
            self._text = text

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


def _step_of(line: str) -> float:
    # A line cut short by a kill (the last one) belongs to a repeated step too.
    try:
        return float(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return float("inf")


class TensorBoardLogger:
    """TensorBoard event files, one scalar curve per metric name."""

    def __init__(self, log_dir: str | os.PathLike) -> None:
        # Imported here: TensorBoard costs a second to import and only rank 0 needs it.
        from torch.utils.tensorboard import SummaryWriter

        self._log_dir = str(log_dir)
        self._writer = SummaryWriter(log_dir=self._log_dir)

    def discard_after(self, step: int) -> None:
        """Starts a new event file that tells TensorBoard to hide the events after ``step``
        (the writer's ``purge_step``; the files themselves are append-only)."""
        from torch.utils.tensorboard import SummaryWriter

        self._writer.close()
        self._writer = SummaryWriter(log_dir=self._log_dir, purge_step=step + 1)

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        for name, value in metrics.items():
            self._writer.add_scalar(name, value, global_step=step)
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


class MetricLoggers:
    """Fans each call out to several loggers."""

    def __init__(self, loggers: Iterable[MetricLogger]) -> None:
        self._loggers = list(loggers)

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        for metric_logger in self._loggers:
            metric_logger.log(step, metrics)

    def discard_after(self, step: int) -> None:
        for metric_logger in self._loggers:
            metric_logger.discard_after(step)

    def close(self) -> None:
        for metric_logger in self._loggers:
            metric_logger.close()


BACKENDS = ("console", "jsonl", "tensorboard")


def build_metric_loggers(
    *,
    name: str,
    jsonl_path: str | os.PathLike | RemotePath,
    tensorboard_dir: str | os.PathLike,
    is_main: bool = True,
    backends: Iterable[str] = BACKENDS,
    console_shows: Callable[[str], bool] | None = None,
) -> MetricLoggers:
    """The loggers of one metric stream; the caller (who owns the job's folder) names the files.

    Args:
        name: Stream name, the console prefix (e.g. "train", "eval").
        jsonl_path: File the JSONL logger appends to.
        tensorboard_dir: Folder of the TensorBoard event files.
        is_main: Only the main rank writes; other ranks get no loggers.
        backends: Any of "console", "jsonl", "tensorboard".
        console_shows: Which metric names the console line holds (default: all).
    """
    if not is_main:
        return MetricLoggers([])
    unknown = sorted(set(backends) - set(BACKENDS))
    if unknown:
        raise ValueError(f"unknown metric logger backends {unknown}; choose from {list(BACKENDS)}")
    factories: dict[str, Callable[[], MetricLogger]] = {
        "console": lambda: ConsoleLogger(f"[{name}] " if name else "", console_shows),
        "jsonl": lambda: JsonlLogger(jsonl_path),
        "tensorboard": lambda: TensorBoardLogger(tensorboard_dir),
    }
    return MetricLoggers(factories[backend]() for backend in backends)


def _format(value: float) -> str:
    if isinstance(value, int) or (
        isinstance(value, float) and value.is_integer() and abs(value) < 1e9
    ):
        return str(int(value))
    return f"{value:.4g}"
