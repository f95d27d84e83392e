"""Converts the original's TFRecord files of tf.Example into our Parquet format.

    tml-recap-convert INPUT... --output_dir OUT (--config_path CFG | --schema_path SCHEMA)
        [--num_workers N] [--skip_corrupt] [--verify] [--row_group_size R]

INPUT is a file, a glob (``**`` allowed) or a folder (every file under it, e.g. a date layout
``root/YYYY/MM/DD/part-*.gz``); gzip, zlib and plain files are told apart by their first bytes.
Each input becomes one Parquet file at the same relative path under OUT (``.gz``,
``.tfrecord``... replaced by ``.parquet``), written by the same writer as the data generator:
the loader's per-rank sharing deals out whole files, or their 2048-row groups when there are
fewer files than ranks, so nothing has to be regrouped.

Resumable: a file is written under a temporary name and renamed when complete, then recorded
in ``OUT/_tml_convert_manifest.json`` with its input's size and mtime and its row count. A
re-run skips every recorded file whose input is unchanged and converts the rest; a killed run
leaves at most temporary files, which the next run removes.

Inputs and OUT may be object-store URLs (``s3://bucket/prefix``, ``gs://...``; tml.storage). On
a store an output object appears only when its upload completes (a store has no rename), and a
failed one is deleted again.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import dataclasses
import datetime
import glob
import json
import logging
import multiprocessing
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import pyarrow.parquet as pq
from tqdm import tqdm

from projects.home.recap.data.parquet_format import SegDenseWriter, WriteOptions
from projects.home.recap.data.reader import DataFileError, FeatureRead
from projects.home.recap.data.schema import FeatureDtype, SegDenseSchema, load_schema, parse_schema
from projects.home.recap.data.tf_example import (
    DecodedRecords,
    ExampleColumns,
    parse_example,
    schema_values,
)
from projects.home.recap.data.tfrecord import (
    COMPRESSIONS,
    TFRecordError,
    file_size,
    iter_records,
)
from tml.core.errors import UserInputError
from tml.storage import (
    as_path,
    check_bucket,
    filesystem,
    is_url,
    list_files,
    open_input_file,
    storage_errors,
    write_atomically,
)

logger = logging.getLogger(__name__)

MANIFEST_NAME = "_tml_convert_manifest.json"
MANIFEST_VERSION = 1
# Suffixes of the original's files, dropped from output names.
INPUT_SUFFIXES = (".gz", ".gzip", ".zlib", ".tfrecord", ".tfrecords", ".tfr", ".rio")
# Hidden files and markers such as _SUCCESS are not data.
_SKIPPED_PREFIXES = (".", "_")
# Records between progress updates from a worker.
_PROGRESS_EVERY = 256


class ConvertError(UserInputError):
    """The conversion cannot proceed; the message names the file, record or option."""


@dataclasses.dataclass(frozen=True)
class Settings:
    """What decides the bytes of every output file; a manifest is only valid for the same."""

    schema: dict[str, Any]
    row_group_size: int
    split_points: dict[str, list[int]]
    compression: str

    def write_options(self) -> WriteOptions:
        return WriteOptions(row_group_size=self.row_group_size, split_points=self.split_points)

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": self.schema,
            "row_group_size": self.row_group_size,
            "split_points": self.split_points,
        }


@dataclasses.dataclass(frozen=True)
class FileJob:
    """One input file and where its output goes (relative to the output folder)."""

    input: str
    output: str
    input_bytes: int
    input_mtime_ns: int


@dataclasses.dataclass
class FileResult:
    """What converting one file did; recorded in the manifest."""

    job: FileJob
    rows: int
    output_bytes: int
    seconds: float
    # Records dropped under --skip_corrupt, and one line per problem.
    skipped_records: list[int] = dataclasses.field(default_factory=list)
    problems: list[str] = dataclasses.field(default_factory=list)
    # Whether a problem cut the file short (the records after it are lost).
    cut_short: bool = False
    missing: dict[str, int] = dataclasses.field(default_factory=dict)

    def to_manifest(self) -> dict[str, Any]:
        return {
            "input": self.job.input,
            "input_bytes": self.job.input_bytes,
            "input_mtime_ns": self.job.input_mtime_ns,
            "rows": self.rows,
            "output_bytes": self.output_bytes,
            "skipped_records": self.skipped_records,
            "cut_short": self.cut_short,
            "problems": self.problems,
            "missing": self.missing,
        }


# --- choosing the files ----------------------------------------------------------------------


def _output_name(relative: str) -> str:
    stem = relative
    while True:
        lowered = stem.lower()
        suffix = next((s for s in INPUT_SUFFIXES if lowered.endswith(s)), None)
        if suffix is None or len(stem) == len(suffix):
            break
        stem = stem[: -len(suffix)]
    return stem + ".parquet"


def _is_data_name(path: str) -> bool:
    return not os.path.basename(path).startswith(_SKIPPED_PREFIXES)


def _glob_root(pattern: str) -> str:
    parts = pattern.split(os.sep)
    fixed = []
    for part in parts[:-1]:
        if glob.has_magic(part):
            break
        fixed.append(part)
    return os.sep.join(fixed) or "."


def _join(folder: str, relative: str) -> str:
    """``folder/relative`` for a local folder or a URL (whose separator is always ``/``)."""
    return f"{folder.rstrip('/')}/{relative}" if is_url(folder) else os.path.join(folder, relative)


def _remote_inputs(argument: str) -> tuple[str, list[str]]:
    """(root, files) of an object-store argument: a glob, a prefix ("folder") or an object."""
    if glob.has_magic(argument):
        root = argument[: argument.index("://") + 3] + _glob_root(argument.split("://", 1)[1])
        return root, list_files(argument)
    fs, inner = filesystem(argument)
    protocol = argument.split("://", 1)[0]
    with storage_errors(argument):
        if fs.isdir(inner):
            prefix = inner.rstrip("/") + "/"
            paths = [
                f"{protocol}://{name}"
                for name in fs.find(inner)
                if not any(
                    part.startswith(_SKIPPED_PREFIXES)
                    for part in name[len(prefix) :].split("/")[:-1]
                )
            ]
            return argument.rstrip("/"), paths
        if fs.isfile(inner):
            return argument.rsplit("/", 1)[0], [argument]
    check_bucket(argument)
    raise ConvertError(f"input '{argument}': no such file or folder")


def select_inputs(inputs: Sequence[str]) -> list[tuple[str, str]]:
    """``(input path, output name)`` for every file the arguments name, in sorted order.

    Raises:
        ConvertError: when an argument matches nothing, or two inputs would write one output.
        StorageError: an input's bucket does not exist or is not readable.
    """
    found: list[tuple[str, str]] = []
    for argument in inputs:
        if is_url(argument):
            root, paths = _remote_inputs(argument)
            paths = sorted(path for path in paths if _is_data_name(path))
            if not paths:
                raise ConvertError(f"input '{argument}': no file matches")
            found.extend((path, _output_name(path[len(root) :].lstrip("/"))) for path in paths)
            continue
        if os.path.isdir(argument):
            root = argument
            paths = [
                os.path.join(folder, name)
                for folder, folders, names in os.walk(argument)
                for name in names
                if not any(
                    part.startswith(_SKIPPED_PREFIXES) for part in folder[len(root) :].split(os.sep)
                )
            ]
        elif glob.has_magic(argument):
            root = _glob_root(argument)
            paths = glob.glob(argument, recursive=True)
        elif os.path.isfile(argument):
            root = os.path.dirname(argument) or "."
            paths = [argument]
        else:
            raise ConvertError(f"input '{argument}': no such file or folder")
        paths = sorted(path for path in paths if os.path.isfile(path) and _is_data_name(path))
        if not paths:
            raise ConvertError(f"input '{argument}': no file matches")
        found.extend((path, _output_name(os.path.relpath(path, root))) for path in paths)
    by_output: dict[str, str] = {}
    for path, output in found:
        other = by_output.setdefault(output, path)
        if other != path:
            raise ConvertError(f"inputs '{other}' and '{path}' would both be written to '{output}'")
    return sorted(set(found), key=lambda item: item[1])


# --- the manifest ---------------------------------------------------------------------------


def load_manifest(output_dir: str, settings: Settings) -> dict[str, Any]:
    """The output folder's manifest (empty for a new folder).

    Raises:
        ConvertError: when it was written with other settings, whose outputs would differ.
    """
    path = _join(output_dir, MANIFEST_NAME)
    with storage_errors(path):
        exists = as_path(path).exists()
    if not exists:
        return {"version": MANIFEST_VERSION, "settings": settings.to_json(), "files": {}}
    try:
        with storage_errors(path):
            manifest = json.loads(as_path(path).read_text())
        stored = manifest["settings"]
        manifest["files"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ConvertError(f"cannot read the manifest {path}: {error}") from None
    changed = [key for key, value in settings.to_json().items() if stored.get(key) != value]
    if changed:
        raise ConvertError(
            f"{output_dir} was converted with other settings ({', '.join(changed)} differ); "
            "convert into a new --output_dir"
        )
    return manifest


def save_manifest(output_dir: str, manifest: dict[str, Any]) -> None:
    """Writes the manifest atomically (a reader never sees half of it)."""
    path = _join(output_dir, MANIFEST_NAME)
    with storage_errors(path):
        write_atomically(as_path(path), json.dumps(manifest, indent=1, sort_keys=True))


def is_done(entry: dict[str, Any] | None, job: FileJob, output_dir: str) -> bool:
    """Whether the manifest's entry is a complete conversion of this very input."""
    if entry is None:
        return False
    if (entry.get("input_bytes"), entry.get("input_mtime_ns")) != (
        job.input_bytes,
        job.input_mtime_ns,
    ):
        return False
    if entry.get("rows") == 0:
        return True
    return _size_or_none(_join(output_dir, job.output)) == entry.get("output_bytes")


def _size_or_none(path: str) -> int | None:
    try:
        return file_size(path)
    except FileNotFoundError:
        return None


def _temporary_name(output: str) -> str:
    folder, name = os.path.split(output)
    return os.path.join(folder, f".{name}.tmp-{os.getpid()}")


def remove_stale_temporaries(output_dir: str) -> int:
    """Deletes temporary files a killed run left behind; returns how many. (A store keeps no
    partial object of a killed upload.)"""
    if is_url(output_dir):
        return 0
    removed = 0
    for folder, _, names in os.walk(output_dir):
        for name in names:
            if name.startswith(".") and ".parquet.tmp-" in name:
                os.remove(os.path.join(folder, name))
                removed += 1
    return removed


# --- converting one file --------------------------------------------------------------------


class _OutputFile:
    """Where one converted file is written so that it never shows partial under its name:
    locally a temporary name renamed into place; on an object store an upload, which makes the
    object appear only when it completes (a store has no rename), discarded on failure."""

    def __init__(self, path: str):
        self.path = path
        self.remote = is_url(path)
        self._sink: Any = None
        if not self.remote:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            self._temporary = _temporary_name(path)

    def open(self) -> Any:
        """What the Parquet writer writes to: a path, or an open upload."""
        if not self.remote:
            return self._temporary
        self._sink = as_path(self.path).open("wb")
        return self._sink

    def commit(self) -> int:
        """Puts the written file in place; returns its size."""
        if self.remote:
            with storage_errors(self.path):
                self._sink.close()
        else:
            os.replace(self._temporary, self.path)
        return file_size(self.path)

    def abort(self) -> None:
        """Drops what was written (after a failure)."""
        if not self.remote:
            if os.path.exists(self._temporary):
                os.remove(self._temporary)
            return
        if self._sink is not None:
            # discard() aborts the upload; closing would complete it with the partial file.
            # It leaves the file open, so it is marked closed: else its finalizer closes it.
            with contextlib.suppress(Exception):
                self._sink.discard()
            self._sink.closed = True
            as_path(self.path).unlink(missing_ok=True)

    def remove_stale(self) -> None:
        """Removes an output of an earlier run (its input now converts to nothing)."""
        if self.remote:
            as_path(self.path).unlink(missing_ok=True)
        elif os.path.exists(self.path):
            os.remove(self.path)


_progress_counter: Any = None


def _init_worker(counter: Any) -> None:
    global _progress_counter
    _progress_counter = counter
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")


def _count_progress(records: int) -> None:
    if _progress_counter is not None and records:
        with _progress_counter.get_lock():
            _progress_counter.value += records


def convert_file(
    job: FileJob, output_dir: str, settings: Settings, skip_corrupt: bool
) -> FileResult:
    """Converts one TFRecord file; the output appears (renamed into place) only when complete.

    Raises:
        TFRecordError: naming the file and record (a broken frame or a record that is not a
            valid tf.Example for the schema), unless ``skip_corrupt``.
    """
    started = time.perf_counter()
    schema = parse_schema(settings.schema, "(converter settings)")
    output = _OutputFile(_join(output_dir, job.output))
    result = FileResult(job=job, rows=0, output_bytes=0, seconds=0.0)
    columns = ExampleColumns(schema)
    writer: SegDenseWriter | None = None
    # Record index of each queued record (framing errors may have skipped some).
    queued: list[int] = []

    def on_corrupt(error: TFRecordError) -> None:
        result.problems.append(str(error))
        if error.recoverable:
            result.skipped_records.append(error.record)
        else:
            result.cut_short = True

    def decode() -> DecodedRecords:
        decoded = columns.take()
        for position, error in decoded.rejected:
            problem = TFRecordError(job.input, queued[position], str(error), recoverable=True)
            if not skip_corrupt:
                raise problem
            on_corrupt(problem)
        queued.clear()
        return decoded

    def flush() -> None:
        nonlocal writer
        decoded = decode()
        if not decoded.rows:
            return
        if writer is None:
            writer = SegDenseWriter(output.open(), schema, settings.write_options())
        writer.write(decoded.columns)
        result.rows += decoded.rows

    pending_progress = 0
    try:
        try:
            for index, data in iter_records(
                job.input,
                compression=settings.compression,
                on_corrupt=on_corrupt if skip_corrupt else None,
            ):
                columns.add(data)
                queued.append(index)
                pending_progress += 1
                if pending_progress >= _PROGRESS_EVERY:
                    _count_progress(pending_progress)
                    pending_progress = 0
                if len(columns) == settings.row_group_size:
                    flush()
        except TFRecordError:
            # A bad record queued before the unreadable one is the first error to report.
            decode()
            raise
        if len(columns):
            flush()
        _count_progress(pending_progress)
        if writer is not None:
            writer.close()
            result.output_bytes = output.commit()
        else:
            # A fully corrupt input under --skip_corrupt: no stale output from an earlier run.
            output.remove_stale()
    except BaseException:
        if writer is not None:
            writer.close()
        output.abort()
        raise
    result.missing = dict(columns.missing)
    result.seconds = time.perf_counter() - started
    return result


# --- verification ---------------------------------------------------------------------------


@contextlib.contextmanager
def _parquet_file(path: str) -> Iterator[pq.ParquetFile]:
    """A Parquet file of ours, local or on a store (closed after use)."""
    source = open_input_file(path)
    try:
        yield pq.ParquetFile(source)
    finally:
        if not isinstance(source, str):
            source.close()


def _parquet_rows(path: str, schema: SegDenseSchema) -> Any:
    """Yields every row of one of our files as feature -> values, one row group in memory."""
    from projects.home.recap.data.parquet_format import ParquetFormat

    dense = [FeatureRead(spec) for spec in schema if spec.is_fixed_numeric]
    others = [spec for spec in schema if not spec.is_fixed_numeric]
    data_file = ParquetFormat().open(path, schema, dense)
    with _parquet_file(path) as parquet:
        for group in range(len(data_file.row_group_rows)):
            arrays = data_file.read(group)
            lists = (
                parquet.read_row_group(group, columns=[spec.name for spec in others]).to_pydict()
                if others
                else {}
            )
            for row in range(data_file.row_group_rows[group]):
                values: dict[str, Any] = {name: array[row] for name, array in arrays.items()}
                for spec in others:
                    values[spec.name] = lists[spec.name][row]
                yield values


def _same(expected: Any, actual: Any, dtype: FeatureDtype) -> int | None:
    """Index of the first differing value (bit-exact for floats), or None when equal."""
    if dtype == FeatureDtype.BYTES_LIST or not isinstance(actual, np.ndarray):
        expected_list = expected if isinstance(expected, list) else list(np.asarray(expected))
        actual_list = actual if isinstance(actual, list) else [actual]
        if len(expected_list) != len(actual_list):
            return min(len(expected_list), len(actual_list))
        for position, (a, b) in enumerate(zip(expected_list, actual_list, strict=True)):
            if a != b:
                return position
        return None
    expected = np.asarray(expected)
    if len(expected) != len(actual):
        return min(len(expected), len(actual))
    if dtype == FeatureDtype.FLOAT_LIST:
        expected, actual = expected.astype(np.float32).view(np.int32), actual.view(np.int32)
    differs = np.flatnonzero(expected != actual)
    return int(differs[0]) if len(differs) else None


def verify_file(
    entry: dict[str, Any], output_dir: str, output: str, schema: SegDenseSchema, sample: int
) -> int:
    """Checks one converted file against its input; returns the rows compared value by value.

    Row count: the output holds every input record but those the manifest says were skipped.
    Values: ``sample`` rows spread over the file, decoded from the input by protobuf (not by the
    converter's own decoder) and compared bit for bit.

    Raises:
        ConvertError: naming the output, row, input record and feature of the first difference.
    """
    path = _join(output_dir, output)
    source = entry["input"]
    rows = entry["rows"]
    if rows == 0:
        if _size_or_none(path) is not None:
            raise ConvertError(f"verify: {path} exists but the manifest records no rows")
        return 0
    with _parquet_file(path) as parquet:
        stored_rows = parquet.metadata.num_rows
    if stored_rows != rows:
        raise ConvertError(f"verify: {path} holds {stored_rows} rows, the manifest says {rows}")
    skipped = set(entry["skipped_records"])
    chosen = set(np.linspace(0, rows - 1, min(sample, rows)).astype(int).tolist())
    records = (
        (index, data)
        for index, data in iter_records(source, on_corrupt=lambda error: None)
        if index not in skipped
    )
    compared = 0
    count = 0
    stored = _parquet_rows(path, schema)
    for index, data in records:
        row, values = count, next(stored, None)
        count += 1
        if values is None or row not in chosen:
            continue
        expected = schema_values(parse_example(data), schema)
        for spec in schema:
            position = _same(expected[spec.name], values[spec.name], spec.dtype)
            if position is not None:
                raise ConvertError(
                    f"verify: {path}: row {row} (record {index} of {source}): feature "
                    f"'{spec.name}' differs at value {position}"
                )
        compared += 1
    if count != rows:
        raise ConvertError(
            f"verify: {source} now yields {count} convertible records, {path} holds {rows}"
        )
    return compared


# --- the command ----------------------------------------------------------------------------


@dataclasses.dataclass
class Summary:
    files: int = 0
    already_done: int = 0
    rows: int = 0
    input_bytes: int = 0
    output_bytes: int = 0
    skipped_records: int = 0
    cut_short: int = 0
    problems: list[str] = dataclasses.field(default_factory=list)
    missing: dict[str, int] = dataclasses.field(default_factory=dict)
    seconds: float = 0.0

    def add(self, result: FileResult) -> None:
        self.files += 1
        self.rows += result.rows
        self.input_bytes += result.job.input_bytes
        self.output_bytes += result.output_bytes
        self.skipped_records += len(result.skipped_records)
        self.cut_short += result.cut_short
        self.problems.extend(result.problems)
        for name, count in result.missing.items():
            self.missing[name] = self.missing.get(name, 0) + count

    def lines(self) -> list[str]:
        rate = self.rows / self.seconds if self.seconds > 0 else 0.0
        lines = [
            f"converted {self.files} files ({self.already_done} already done): {self.rows:,} "
            f"rows, {self.input_bytes / 1e6:,.1f} MB in, {self.output_bytes / 1e6:,.1f} MB out, "
            f"{self.seconds:,.1f} s, {rate:,.0f} records/s"
        ]
        if self.skipped_records or self.cut_short:
            lines.append(
                f"skipped {self.skipped_records} corrupt records; {self.cut_short} files cut "
                "short (the records after the problem are lost):"
            )
            lines.extend(f"  {problem}" for problem in self.problems[:20])
            if len(self.problems) > 20:
                lines.append(f"  ... and {len(self.problems) - 20} more (see the manifest)")
        for name, count in sorted(self.missing.items()):
            lines.append(f"feature '{name}' missing in {count:,} records: filled with the default")
        return lines


def _remote_stat(url: str) -> tuple[int, int]:
    """(size, modification time in ns) of a stored object, for the manifest's "unchanged"."""
    fs, inner = filesystem(url)
    with storage_errors(url):
        info = fs.info(inner)
    # s3fs gives LastModified (a datetime), gcsfs "updated" (ISO text), others "mtime".
    modified = info.get("LastModified") or info.get("updated") or info.get("mtime")
    if isinstance(modified, str):
        modified = datetime.datetime.fromisoformat(modified.replace("Z", "+00:00"))
    if isinstance(modified, datetime.datetime):
        modified = modified.timestamp()
    return int(info["size"]), int(float(modified or 0) * 1e9)


def _jobs(inputs: Sequence[str]) -> list[FileJob]:
    jobs = []
    for path, output in select_inputs(inputs):
        if is_url(path):
            size, mtime_ns = _remote_stat(path)
            jobs.append(FileJob(path, output, size, mtime_ns))
            continue
        stat = os.stat(path)
        jobs.append(FileJob(os.path.abspath(path), output, stat.st_size, stat.st_mtime_ns))
    return jobs


def convert(
    inputs: Sequence[str],
    output_dir: str,
    settings: Settings,
    *,
    num_workers: int = 1,
    skip_corrupt: bool = False,
    progress: bool = True,
) -> Summary:
    """Converts every input not already converted into ``output_dir``.

    Files are converted in parallel by ``num_workers`` processes (in this process for 1). On
    the first error the files still queued are not started; those being converted finish and
    are recorded, so a re-run after fixing the input does only what is left.

    Raises:
        TFRecordError, ConvertError: the first problem, naming its file (and record).
    """
    started = time.perf_counter()
    jobs = _jobs(inputs)
    if is_url(output_dir):
        check_bucket(output_dir)
    else:
        os.makedirs(output_dir, exist_ok=True)
    manifest = load_manifest(output_dir, settings)
    removed = remove_stale_temporaries(output_dir)
    if removed:
        logger.info("removed %d temporary files of an interrupted run", removed)
    summary = Summary()
    todo = []
    for job in jobs:
        if is_done(manifest["files"].get(job.output), job, output_dir):
            summary.already_done += 1
        else:
            todo.append(job)
    total = sum(job.input_bytes for job in todo)
    logger.info(
        "%d files to convert (%.1f MB), %d already done",
        len(todo),
        total / 1e6,
        len(jobs) - len(todo),
    )

    def record(result: FileResult) -> None:
        manifest["files"][result.job.output] = result.to_manifest()
        save_manifest(output_dir, manifest)
        summary.add(result)
        for problem in result.problems:
            logger.warning("skipped: %s", problem)

    counter = multiprocessing.get_context("spawn").Value("q", 0)
    with tqdm(
        total=None, unit=" records", disable=not progress, desc="converting", smoothing=0.1
    ) as bar:
        if num_workers <= 1 or len(todo) <= 1:
            _init_worker(counter)
            for job in todo:
                record(convert_file(job, output_dir, settings, skip_corrupt))
                bar.update(counter.value - bar.n)
        else:
            _convert_parallel(
                todo, output_dir, settings, skip_corrupt, num_workers, counter, bar, record
            )
        bar.update(counter.value - bar.n)
    summary.seconds = time.perf_counter() - started
    return summary


def _convert_parallel(
    todo: list[FileJob],
    output_dir: str,
    settings: Settings,
    skip_corrupt: bool,
    num_workers: int,
    counter: Any,
    bar: tqdm,
    record: Callable[[FileResult], None],
) -> None:
    # spawn, not fork: the parent may hold pyarrow's thread pools, which fork would copy in an
    # unusable state.
    context = multiprocessing.get_context("spawn")
    first_error: BaseException | None = None
    with concurrent.futures.ProcessPoolExecutor(
        max_workers=min(num_workers, len(todo)),
        mp_context=context,
        initializer=_init_worker,
        initargs=(counter,),
    ) as pool:
        pending = {
            pool.submit(convert_file, job, output_dir, settings, skip_corrupt) for job in todo
        }
        while pending:
            done, pending = concurrent.futures.wait(
                pending, timeout=0.5, return_when=concurrent.futures.FIRST_COMPLETED
            )
            bar.update(counter.value - bar.n)
            for future in done:
                if future.cancelled():
                    continue
                error = future.exception()
                if error is None:
                    record(future.result())
                elif first_error is None:
                    first_error = error
                    for other in pending:
                        other.cancel()
    if first_error is not None:
        raise first_error


def _settings(args: argparse.Namespace) -> Settings:
    split_points: dict[str, list[int]] = {}
    if args.config_path:
        # Imported here: the job config pulls in the model's modules, which the worker
        # processes (that import this module) do not need.
        from projects.home.recap.config import RecapConfig
        from projects.home.recap.tools.generate_random_data import config_split_points
        from tml.core.config import load_config_from_yaml

        config = load_config_from_yaml(RecapConfig, args.config_path, [])
        data_config = config.train_data
        schema_path = args.schema_path or data_config.seg_dense_schema.schema_path
        split_points = config_split_points(data_config)
    elif args.schema_path:
        schema_path = args.schema_path
    else:
        raise ConvertError("pass --config_path (a ranker config) or --schema_path")
    schema = load_schema(schema_path)
    if args.row_group_size < 1:
        raise ConvertError(f"--row_group_size must be positive, got {args.row_group_size}")
    return Settings(
        schema=schema.to_json(),
        row_group_size=args.row_group_size,
        split_points=split_points,
        compression=args.compression,
    )


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="tml-recap-convert",
        description="Convert the original's TFRecords of tf.Example into tml's Parquet format.",
    )
    parser.add_argument("inputs", nargs="+", help="Files, globs or folders of TFRecord files.")
    parser.add_argument("--output_dir", required=True, help="Folder for the Parquet files.")
    parser.add_argument(
        "--config_path", help="Ranker config: its train_data schema and truncation cuts."
    )
    parser.add_argument("--schema_path", help="Segdense schema JSON (overrides the config's).")
    parser.add_argument(
        "--num_workers", type=int, default=os.cpu_count() or 1, help="Files converted at once."
    )
    parser.add_argument(
        "--row_group_size", type=int, default=WriteOptions.row_group_size, help="Rows per group."
    )
    parser.add_argument("--compression", choices=COMPRESSIONS, default="auto")
    parser.add_argument(
        "--skip_corrupt",
        action="store_true",
        help="Skip and count corrupt records (or the rest of a file) instead of stopping.",
    )
    parser.add_argument(
        "--verify",
        action="store_true",
        help="Then check row counts and compare sampled records value by value.",
    )
    parser.add_argument(
        "--verify_sample", type=int, default=64, help="Records compared per file by --verify."
    )
    parser.add_argument("--no_progress", action="store_true", help="No progress bar.")
    args = parser.parse_args(argv)
    # Warnings from the libraries, information from this command only.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    logger.setLevel(logging.INFO)
    try:
        settings = _settings(args)
        summary = convert(
            args.inputs,
            args.output_dir,
            settings,
            num_workers=args.num_workers,
            skip_corrupt=args.skip_corrupt,
            progress=not args.no_progress,
        )
        for line in summary.lines():
            print(line)
        if args.verify:
            manifest = load_manifest(args.output_dir, settings)
            schema = parse_schema(settings.schema, "(converter settings)")
            compared = 0
            for output, entry in sorted(manifest["files"].items()):
                compared += verify_file(entry, args.output_dir, output, schema, args.verify_sample)
            print(
                f"verified {len(manifest['files'])} files: row counts match, {compared} records "
                "equal value by value"
            )
    except (UserInputError, DataFileError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
