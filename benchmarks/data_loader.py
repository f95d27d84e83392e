"""Throughput and memory of the Parquet loader, beside the raw Parquet read of the same columns.

    .venv/bin/python benchmarks/data_loader.py [--num_examples 20000] [--workers 2 4] [--formats]

Writes production-shaped synthetic data (local_prod.yaml: 6000 continuous values truncated to
2117, 512 binary to 59, 320 discrete, three 200-wide TwHIN embeddings, 10 trained labels) and
prints, at batch 512:

* the raw read: pyarrow decoding the loader's columns into numpy, nothing else (the ceiling);
* the loader with one reader and one batch thread, then with N reader threads;
* torch DataLoader worker processes (each reading its own share), for comparison;
* peak resident memory of each run, and of a run over one file only (memory must not grow with
  the dataset);
* with --formats, file size and raw read rate of alternative layouts and codecs.

Every figure comes from its own subprocess, so peak memory is that run's alone. Compare ratios
within one run: the machine is shared, absolute rates move with its load.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import glob
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pyarrow.parquet as pq  # noqa: E402
import torch  # noqa: E402

from projects.home.recap.config import RecapConfig  # noqa: E402
from projects.home.recap.data.dataset import ReadOptions, build_dataset  # noqa: E402
from projects.home.recap.data.parquet_format import WriteOptions  # noqa: E402
from projects.home.recap.tools.generate_random_data import generate_dataset  # noqa: E402
from tml.core.config import load_config_from_yaml  # noqa: E402

CONFIG = ROOT / "projects/home/recap/config/local_prod.yaml"
BATCH = 512
WARMUP_BATCHES = 3
# Each figure is the best of this many timed repetitions inside its process: other work on a
# shared machine only ever slows a run down.
REPEATS = 2


def _config(data_dir: str, overrides: list[str]) -> RecapConfig:
    return load_config_from_yaml(
        RecapConfig,
        CONFIG,
        [
            f"train_data.inputs={data_dir}/*.parquet",
            f"train_data.global_batch_size={BATCH}",
            *overrides,
        ],
    )


def _current_rss_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class _RssSampler:
    """Highest resident memory seen while timed work runs (sampled every 2 ms)."""

    def __init__(self) -> None:
        self.peak = _current_rss_mib()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, _current_rss_mib())

    def __enter__(self) -> _RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()


class _Timer:
    """Wall time and this process's CPU time (all its threads) of one timed run."""

    def __enter__(self) -> _Timer:
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.wall = time.perf_counter() - self._wall
        self.cpu = time.process_time() - self._cpu


def _result(runs: list[tuple[int, _Timer]], baseline: float, sampler: _RssSampler) -> dict:
    return {
        "examples_per_s": max(rows / timer.wall for rows, timer in runs),
        # CPU cost is steadier than wall time on a busy machine (NaN where work runs in
        # other processes).
        "cpu_us_per_example": min(timer.cpu / rows for rows, timer in runs) * 1e6,
        "peak_rss_mib": sampler.peak,
        "baseline_rss_mib": baseline,
    }


def measure_raw(data_dir: str, use_threads: bool) -> dict:
    """pyarrow decoding the loader's columns of every row group into numpy arrays."""
    config = _config(data_dir, [])
    dataset = build_dataset(
        config.train_data, options=ReadOptions.training(), tasks=list(config.model.tasks)
    )
    columns = dataset.columns_read
    baseline = _current_rss_mib()
    with _RssSampler() as sampler:
        runs = [_raw_pass(data_dir, columns, use_threads) for _ in range(REPEATS)]
    return _result(runs, baseline, sampler)


def _raw_pass(data_dir: str, columns: list[str], use_threads: bool) -> tuple[int, _Timer]:
    rows = 0
    timer = _Timer().__enter__()
    for path in sorted(glob.glob(f"{data_dir}/*.parquet")):
        parquet = pq.ParquetFile(path)
        for row_group in range(parquet.num_row_groups):
            table = parquet.read_row_group(row_group, columns=columns, use_threads=use_threads)
            for column in table.columns:
                array = column.combine_chunks()
                values = array.flatten() if hasattr(array, "flatten") else array
                values.to_numpy(zero_copy_only=False)
            rows += table.num_rows
    timer.__exit__()
    return rows, timer


def measure_loader(data_dir: str, batches: int, overrides: list[str]) -> dict:
    """The loader in training mode: ``batches`` batches after a short warm-up."""
    config = _config(data_dir, overrides)
    dataset = build_dataset(
        config.train_data, options=ReadOptions.training(), tasks=list(config.model.tasks), seed=1
    )
    baseline = _current_rss_mib()
    with _RssSampler() as sampler:
        runs = _timed_batches(iter(dataset), batches, WARMUP_BATCHES)
    return _result(runs, baseline, sampler)


def _timed_batches(iterator, batches: int, warmup: int) -> list[tuple[int, _Timer]]:
    for _ in range(warmup):
        next(iterator)
    runs = []
    for _ in range(REPEATS):
        with _Timer() as timer:
            rows = sum(next(iterator).batch_size for _ in range(batches))
        runs.append((rows, timer))
    return runs


class _WorkerShare(torch.utils.data.IterableDataset):
    """Each DataLoader worker process reads its own share, as a rank would; its state is the
    share's loader state (what torchdata's StatefulDataLoader snapshots)."""

    def __init__(self, data_dir: str):
        self.data_dir = data_dir
        self.dataset = None
        self.restored: dict | None = None

    def state_dict(self) -> dict:
        return self.dataset.state_dict() if self.dataset is not None else {}

    def load_state_dict(self, state: dict) -> None:
        self.restored = state or None

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        # Each worker yields whole batches of BATCH examples.
        config = _config(
            self.data_dir,
            [
                f"train_data.global_batch_size={BATCH * info.num_workers}",
                "train_data.interleave_num_parallel_calls=1",
                "train_data.map_num_parallel_calls=1",
            ],
        )
        self.dataset = build_dataset(
            config.train_data,
            options=ReadOptions.training(),
            tasks=list(config.model.tasks),
            rank=info.id,
            world_size=info.num_workers,
        )
        if self.restored is not None:
            self.dataset.load_state_dict(self.restored)
        return iter(self.dataset)


def measure_processes(data_dir: str, batches: int, workers: int, stateful: bool) -> dict:
    """DataLoader worker processes, batches pickled back through shared memory; ``stateful``:
    torchdata's StatefulDataLoader, which also snapshots every worker's state each batch."""
    loader_type = torch.utils.data.DataLoader
    if stateful:
        from torchdata.stateful_dataloader import StatefulDataLoader

        loader_type = StatefulDataLoader
    loader = loader_type(
        _WorkerShare(data_dir), batch_size=None, num_workers=workers, prefetch_factor=2
    )
    baseline = _current_rss_mib()
    with _RssSampler() as sampler:
        runs = _timed_batches(iter(loader), batches, WARMUP_BATCHES * workers)
    result = _result(runs, baseline, sampler)
    return {**result, "cpu_us_per_example": float("nan")}


FORMATS = {
    # name -> WriteOptions fields ("cut": add the config's truncation points as split points).
    "one fixed_size_list per feature": {"chunk_size": 10**6, "cut": False},
    "cut at the truncation points only": {"chunk_size": 10**6},
    "chunks of 512 + cuts (default)": {},
    "chunks of 256 + cuts": {"chunk_size": 256},
    "chunks of 1024 + cuts": {"chunk_size": 1024},
    "uncompressed": {"compression": "none", "compression_level": None},
    "snappy": {"compression": "snappy", "compression_level": None},
    "lz4": {"compression": "lz4", "compression_level": None},
    "zstd level 3": {"compression_level": 3},
    "no byte_stream_split": {"byte_stream_split": "none"},
    "byte_stream_split on integers too": {"byte_stream_split": "all"},
    "dictionary pages": {"use_dictionary": True},
    "row groups of 512": {"row_group_size": 512},
    "row groups of 8192": {"row_group_size": 8192},
}


# Runs under a separate Python that has TensorFlow (and pyarrow, numpy), not torch: converts the
# first examples of the Parquet data to gzipped tf.Example records and times the original's
# input pipeline on them (interleave, shuffle, batch, parse_example, truncate, to numpy).
TFRECORD_SCRIPT = r"""
import glob, json, os, sys, time
import numpy as np, pyarrow.parquet as pq, tensorflow as tf
data_dir, out_dir, limit, batch, repeats = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:6])
used = json.loads(sys.argv[6])
truncation = json.loads(sys.argv[7])
files = sorted(glob.glob(data_dir + "/*.parquet"))
meta = json.loads(pq.read_schema(files[0]).metadata[b"tml.segdense"])
specs = {entry["feature_name"]: entry for entry in meta["schema"]}
path = out_dir + "/data.tfrecord.gz"


def convert():
    table = pq.read_table(files[0]).slice(0, limit)
    features = {}
    for name, chunks in meta["layout"].items():
        if specs[name]["length"] == 1:
            features[name] = table.column(chunks[0][0]).to_numpy()[:, None]
        else:
            parts = [np.stack(table.column(c).to_numpy(zero_copy_only=False)) for c, _, _ in chunks]
            features[name] = np.concatenate(parts, axis=1)
    with tf.io.TFRecordWriter(path, "GZIP") as writer:
        for row in range(table.num_rows):
            feature = {}
            for name, values in features.items():
                value = values[row].tolist()
                if specs[name]["dtype"] == "float_list":
                    feature[name] = tf.train.Feature(float_list=tf.train.FloatList(value=value))
                else:
                    feature[name] = tf.train.Feature(int64_list=tf.train.Int64List(value=value))
            example = tf.train.Example(features=tf.train.Features(feature=feature))
            writer.write(example.SerializeToString())


# Converted once, timed in every round.
if not os.path.exists(path):
    convert()
kinds = {"float_list": tf.float32, "int64_list": tf.int64}
schema = {
    name: tf.io.FixedLenFeature([specs[name]["length"]], kinds[specs[name]["dtype"]])
    for name in used
}
def parse(serialized):
    parsed = tf.io.parse_example(serialized, schema)
    for name, keep in truncation.items():
        parsed[name] = parsed[name][:, :keep]
    return parsed
dataset = (
    tf.data.Dataset.from_tensor_slices([path]).repeat()
    .interleave(lambda f: tf.data.TFRecordDataset(f, compression_type="GZIP"),
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)
    .shuffle(1024).batch(batch, drop_remainder=True)
    .map(parse, num_parallel_calls=tf.data.AUTOTUNE).prefetch(2)
)
iterator = iter(dataset)
steps = max(8, limit // batch)
for _ in range(3):
    next(iterator)
rates, costs = [], []
for _ in range(repeats):
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        {name: value.numpy() for name, value in next(iterator).items()}
    rates.append(steps * batch / (time.perf_counter() - start))
    costs.append((time.process_time() - cpu) / (steps * batch) * 1e6)
nan = float("nan")
result = {"examples_per_s": max(rates), "cpu_us_per_example": min(costs)}
print(json.dumps({**result, "peak_rss_mib": nan, "baseline_rss_mib": nan}))
"""


def measure_tfrecord(tf_python: str, data_dir: str, scratch: str, examples: int) -> dict:
    """The original's TFRecord + tf.data path on the same examples, in TensorFlow's venv."""
    config = _config(data_dir, [])
    data = config.train_data
    renamed = data.seg_dense_schema.renamed_features
    steps = data.preprocess.truncate_and_slice
    used = [*renamed.values(), *config.model.tasks]
    truncation = {
        renamed["continuous"]: steps.continuous_feature_truncation,
        renamed["binary"]: steps.binary_feature_truncation,
    }
    arguments = [data_dir, scratch, str(examples), str(BATCH), str(REPEATS)]
    output = subprocess.run(
        [tf_python, "-c", TFRECORD_SCRIPT, *arguments, json.dumps(used), json.dumps(truncation)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(output.strip().splitlines()[-1])


def write_data(directory: str, num_examples: int, num_files: int, fields: dict) -> None:
    config = _config(directory, [])
    fields = dict(fields)
    cut = fields.pop("cut", True)
    points = {}
    if cut:
        renamed = config.train_data.seg_dense_schema.renamed_features
        points = {renamed["continuous"]: [2117], renamed["binary"]: [59]}
    options = WriteOptions(split_points=points, **fields)
    generate_dataset(
        config.train_data,
        directory,
        num_examples=num_examples,
        num_files=num_files,
        seed=0,
        options=options,
        progress=False,
    )


def _run(*arguments: str) -> dict:
    """Runs one measurement in a fresh process and returns its JSON result."""
    output = subprocess.run(
        [sys.executable, __file__, "--measure", *arguments],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(output.strip().splitlines()[-1])


def _measure_main(arguments: list[str]) -> None:
    kind, data_dir, *rest = arguments
    if kind == "raw":
        result = measure_raw(data_dir, use_threads=rest[0] == "threads")
    elif kind == "loader":
        result = measure_loader(data_dir, int(rest[0]), rest[1:])
    elif kind in ("processes", "stateful"):
        result = measure_processes(data_dir, int(rest[0]), int(rest[1]), kind == "stateful")
    else:
        raise SystemExit(f"unknown measurement {kind}")
    print(json.dumps(result))


@dataclasses.dataclass
class _Line:
    label: str
    result: dict

    def show(self, reference: float) -> str:
        rate = self.result["examples_per_s"]
        cpu = self.result["cpu_us_per_example"]
        line = f"  {self.label:<48} {rate:>8,.0f} ex/s {rate / reference:5.2f}x raw"
        line += f"  {cpu:5.1f} CPU us/ex" if cpu == cpu else " " * 16
        peak, baseline = self.result["peak_rss_mib"], self.result["baseline_rss_mib"]
        if peak == peak:  # not NaN
            line += f"  peak {peak:>6,.0f} MiB (+{peak - baseline:,.0f} over start)"
        return line


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num_examples", type=int, default=20_000)
    parser.add_argument("--num_files", type=int, default=4)
    parser.add_argument("--workers", type=int, nargs="*", default=[2, 4])
    parser.add_argument("--data_dir", help="Reuse data written by an earlier run.")
    parser.add_argument("--formats", action="store_true", help="Also compare on-disk formats.")
    parser.add_argument(
        "--tf_python",
        help="Python of a separate venv with tensorflow-cpu, pyarrow and numpy: also time the "
        "original's TFRecord + tf.data path on the same examples.",
    )
    parser.add_argument("--tf_examples", type=int, default=4096, help="Examples converted.")
    parser.add_argument("--rounds", type=int, default=3, help="Interleaved measurement rounds.")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tml_bench_") as scratch:
        data_dir = args.data_dir or os.path.join(scratch, "data")
        if not glob.glob(f"{data_dir}/*.parquet"):
            print(f"writing {args.num_examples} production-shaped examples to {data_dir} ...")
            start = time.perf_counter()
            write_data(data_dir, args.num_examples, args.num_files, {})
            elapsed = time.perf_counter() - start
            print(f"  {args.num_examples / elapsed:,.0f} ex/s written")
        files = sorted(glob.glob(f"{data_dir}/*.parquet"))
        examples = sum(pq.read_metadata(path).num_rows for path in files)
        size = sum(os.path.getsize(path) for path in files)
        batches = max(16, examples // BATCH)
        print(
            f"\n{examples} examples in {len(files)} files, {size / examples:,.0f} bytes/example; "
            f"batch {BATCH}; best of {args.rounds} rounds x {REPEATS} runs of {batches} "
            "batches; process peaks (for DataLoader workers: the main process only)\n"
        )
        single = [
            "train_data.interleave_num_parallel_calls=1",
            "train_data.map_num_parallel_calls=1",
        ]
        runs: dict[str, Callable[[], dict]] = {
            "raw pyarrow read, same columns, 1 thread": lambda: _run("raw", data_dir, "single"),
            "raw pyarrow read, same columns, arrow threads": lambda: _run(
                "raw", data_dir, "threads"
            ),
            "loader, 1 reader + 1 batch thread": lambda: _run(
                "loader", data_dir, str(batches), *single
            ),
        }
        for workers in args.workers:
            threads = [
                f"train_data.interleave_num_parallel_calls={workers}",
                "train_data.map_num_parallel_calls=1",
            ]
            runs[f"loader, {workers} reader threads + 1 batch thread"] = functools.partial(
                _run, "loader", data_dir, str(batches), *threads
            )
        for workers in args.workers:
            runs[f"torch DataLoader, {workers} worker processes"] = functools.partial(
                _run, "processes", data_dir, str(batches), str(workers)
            )
        if importlib.util.find_spec("torchdata") is not None:
            for workers in args.workers:
                runs[f"torchdata StatefulDataLoader, {workers} processes"] = functools.partial(
                    _run, "stateful", data_dir, str(batches), str(workers)
                )
        runs["loader, 1 file only (memory vs dataset size)"] = functools.partial(
            _run, "loader", data_dir, str(batches), *single, "train_data.num_files_to_keep=1"
        )
        if args.tf_python:
            runs["original: gzipped TFRecord + tf.data (AUTOTUNE)"] = functools.partial(
                measure_tfrecord, args.tf_python, data_dir, scratch, args.tf_examples
            )
        # Rounds interleave the configurations, so a busy spell on a shared machine hits them
        # alike; each keeps its best rate and its highest memory peak.
        best: dict[str, dict] = {}
        for _ in range(args.rounds):
            for label, run in runs.items():
                result = run()
                kept = best.setdefault(label, result)
                if result["examples_per_s"] > kept["examples_per_s"]:
                    best[label] = {
                        **result,
                        "peak_rss_mib": max(kept["peak_rss_mib"], result["peak_rss_mib"]),
                    }
        lines = [_Line(label, result) for label, result in best.items()]
        reference = lines[0].result["examples_per_s"]
        print("\n".join(line.show(reference) for line in lines))
        if not args.tf_python:
            print("\n(original's TFRecord path not timed: pass --tf_python; issue 3 measured")
            print(" ~4,300 ex/s for it on this kind of machine)")
        if args.formats:
            _compare_formats(scratch, min(args.num_examples, 8192))


def _compare_formats(scratch: str, num_examples: int) -> None:
    print(f"\non-disk formats, {num_examples} examples, raw read of the loader's columns:")
    for name, fields in FORMATS.items():
        directory = os.path.join(scratch, "format")
        for path in glob.glob(f"{directory}/*.parquet"):
            os.remove(path)
        start = time.perf_counter()
        write_data(directory, num_examples, 1, fields)
        written = num_examples / (time.perf_counter() - start)
        size = sum(os.path.getsize(p) for p in glob.glob(f"{directory}/*.parquet")) / num_examples
        result = _run("raw", directory, "single")
        print(
            f"  {name:<50} {size:>7,.0f} B/ex  read {result['examples_per_s']:>8,.0f} ex/s  "
            f"generate+write {written:>7,.0f} ex/s"
        )


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--measure":
        _measure_main(sys.argv[2:])
    else:
        main()
