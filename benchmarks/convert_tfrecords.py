"""Throughput of the TFRecord converter on the full 2022 schema, beside tf.data's read rate.

    .venv/bin/python benchmarks/convert_tfrecords.py [--num_examples 8192] [--num_files 4]
        [--row_group_size 2048] [--tf_python /tmp/tfenv/bin/python]

Writes production-shaped synthetic examples (the data generator, local_prod.yaml's schema: 6000
continuous, 512 binary, 320 discrete, 13 labels, 3 ids, three 200-wide embeddings) as gzipped
TFRecords of tf.Example, then prints records/s of:

* the converter's stages in one process: framing (gzip, both checksums), then tf.Example
  decoding into columns, and apart from them the Parquet write alone (the decoded columns,
  already in memory, written as the converter writes them);
* floors, each alone on the same data: inflating the files (with zlib, as tf.data does, and
  with ISA-L, as the converter does) and compressing the decoded values with the writer's
  codec. Any converter of these files into compressed Parquet does at least both, so
  ``1 / (1 / inflate + 1 / compress)`` bounds its rate; the last line gives that bound beside
  tf.data's rate and how close the converter comes to it;
* the whole command in one process (read, checksums, decode, write zstd Parquet);
* the converter with one process per core (``--num_workers`` = CPU count);
* tf.data reading the same files (TFRecordDataset + parse_example of every feature, batches of
  512, one thread), when a Python with TensorFlow is given or importable here; otherwise that
  line says it is skipped. The ratio compares per-process rates (the goal is >= 2).

Each one-process figure is given twice: records per second of wall time, and records per
second of the process's CPU time (all its threads), which is what "per core" means and moves
far less with the load of a shared machine. Compare ratios within one run: absolute rates
move with that load.

The default 2,048 rows per file (one row group each) are far smaller than production files
(hundreds of MB), but the per-record cost does not depend on that here: the full schema is 33
Parquet columns, not thousands (long features are stored as 512-value ``fixed_size_list``
chunks), so what is fixed per column chunk, row group or file is small beside ~33 KB of
values per record. Measured on the 2-core development machine (docs/data.md, Converter
throughput), the Parquet write cost 184-219 us of CPU per record at 512, 4,096 and 16,384 rows
per file with 2,048-row groups, and 190-213 us with 8,192- and 16,384-row groups, all within the
run-to-run noise; so the defaults stay small enough for a quick run (``--num_examples`` and
``--num_files`` set the rows per file, ``--row_group_size`` the converter's row groups).
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
from isal import isal_zlib  # noqa: E402

from projects.home.recap.config import RecapConfig  # noqa: E402
from projects.home.recap.data.parquet_format import SegDenseWriter, WriteOptions  # noqa: E402
from projects.home.recap.data.schema import load_schema  # noqa: E402
from projects.home.recap.data.tf_example import ExampleColumns, encode_example  # noqa: E402
from projects.home.recap.data.tfrecord import iter_records, write_records  # noqa: E402
from projects.home.recap.tools.convert_tfrecords import Settings, convert  # noqa: E402
from projects.home.recap.tools.generate_random_data import generate_dataset  # noqa: E402
from tml.core.config import load_config_from_yaml  # noqa: E402

CONFIG = ROOT / "projects/home/recap/config/local_prod.yaml"
REPEATS = 2
PIECE = 1 << 20

# Runs under a Python with TensorFlow: the original's read path over the same files, one thread.
TF_SCRIPT = r"""
import json, sys, time
import tensorflow as tf
schema_path, repeats, files = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
tf.config.threading.set_intra_op_parallelism_threads(1)
tf.config.threading.set_inter_op_parallelism_threads(1)
kinds = {"float_list": (tf.float32, 0.0), "int64_list": (tf.int64, 0)}
spec = {
    e["feature_name"]: tf.io.FixedLenFeature(
        [e["length"]], kinds[e["dtype"]][0], [kinds[e["dtype"]][1]] * e["length"]
    )
    for e in json.load(open(schema_path))["schema"]
}
options = tf.data.Options()
options.threading.private_threadpool_size = 1
dataset = (
    tf.data.TFRecordDataset(files, compression_type="GZIP")
    .batch(512)
    .map(lambda records: tf.io.parse_example(records, spec))
    .with_options(options)
)
best, best_cpu = 0.0, 0.0
for _ in range(repeats):
    start, cpu, count = time.perf_counter(), time.process_time(), 0
    for batch in dataset:
        count += int(next(iter(batch.values())).shape[0])
        {name: value.numpy() for name, value in batch.items()}
    best = max(best, count / (time.perf_counter() - start))
    best_cpu = max(best_cpu, count / (time.process_time() - cpu))
print(json.dumps({"records_per_s": best, "records_per_cpu_s": best_cpu}))
"""


def write_tfrecords(folder: str, num_examples: int, num_files: int) -> tuple[list[str], str]:
    """Generated examples as gzipped TFRecord files; returns them and the schema path."""
    config = load_config_from_yaml(RecapConfig, CONFIG, [])
    schema_path = config.train_data.seg_dense_schema.schema_path
    schema = load_schema(schema_path)
    parquet_dir = os.path.join(folder, "generated")
    generate_dataset(
        config.train_data, parquet_dir, num_examples=num_examples, num_files=num_files, seed=1
    )
    paths = []
    for index, path in enumerate(sorted(glob.glob(f"{parquet_dir}/*.parquet"))):
        table = pq.read_table(path)
        layout = json.loads(table.schema.metadata[b"tml.segdense"])["layout"]
        features = {}
        for spec in schema:
            parts = [
                np.stack(table.column(column).to_numpy(zero_copy_only=False))
                if spec.length > 1
                else table.column(column).to_numpy()[:, None]
                for column, _, _ in layout[spec.name]
            ]
            features[spec.name] = np.concatenate(parts, axis=1)
        records = (
            encode_example({name: values[row] for name, values in features.items()})
            for row in range(table.num_rows)
        )
        output = os.path.join(folder, "tfrecords", f"part-{index:05d}.tfrecord.gz")
        os.makedirs(os.path.dirname(output), exist_ok=True)
        write_records(output, records, "gzip")
        paths.append(output)
    return paths, schema_path


def _best(rates: dict[str, tuple[float, float]], stage: str, count: int, start: tuple) -> None:
    wall, cpu = rates.get(stage, (0.0, 0.0))
    rates[stage] = (
        max(wall, count / (time.perf_counter() - start[0])),
        max(cpu, count / (time.process_time() - start[1])),
    )


def _decoded(files: list[str], schema: Any, row_group_size: int) -> list[list[dict[str, Any]]]:
    """Every file's records decoded into the converter's batches (one list per file)."""
    decoded: list[list[dict[str, Any]]] = []
    for path in files:
        columns = ExampleColumns(schema)
        decoded.append([])
        for _, data in iter_records(path):
            columns.add(data)
            if len(columns) == row_group_size:
                decoded[-1].append(columns.take().columns)
        if len(columns):
            decoded[-1].append(columns.take().columns)
    return decoded


def stage_rates(
    files: list[str], schema_path: str, row_group_size: int, scratch: str
) -> dict[str, tuple[float, float]]:
    """(records/s of wall time, of CPU time) of the converter's stages in this process:
    framing with checksums (and gzip), then tf.Example decoding into columns on top; and the
    Parquet write alone, of the decoded columns held in memory, one output file per input."""
    schema = load_schema(schema_path)
    options = dataclasses.replace(WriteOptions(), row_group_size=row_group_size)
    rates: dict[str, tuple[float, float]] = {}
    for _ in range(REPEATS):
        start, count = (time.perf_counter(), time.process_time()), 0
        for path in files:
            for _ in iter_records(path):
                count += 1
        _best(rates, "read", count, start)
        start = (time.perf_counter(), time.process_time())
        for path in files:
            columns = ExampleColumns(schema)
            for _, data in iter_records(path):
                columns.add(data)
                if len(columns) == row_group_size:
                    columns.take()
            columns.take()
        _best(rates, "read + decode", count, start)
    decoded = _decoded(files, schema, row_group_size)
    for _ in range(REPEATS):
        start = (time.perf_counter(), time.process_time())
        for index, batches in enumerate(decoded):
            output = os.path.join(scratch, f"write-{index}.parquet")
            with SegDenseWriter(output, schema, options) as writer:
                for batch in batches:
                    writer.write(batch)
            os.remove(output)
        _best(rates, "Parquet write alone", count, start)
    # Floors: work any converter of these files into compressed Parquet must do, each alone,
    # in pieces of the size the real pipelines use (a stream read 1 MiB at a time, Parquet
    # pages of ~1 MiB), so that neither pays for one huge buffer the pipelines never make.
    compressed = [Path(path).read_bytes() for path in files]
    values = memoryview(
        b"".join(
            np.ascontiguousarray(column).tobytes()
            for batches in decoded
            for batch in batches
            for column in batch.values()
        )
    )
    codec = pa.Codec(options.compression, options.compression_level)
    for _ in range(REPEATS):
        for name, module in (("zlib", zlib), ("ISA-L", isal_zlib)):
            start = (time.perf_counter(), time.process_time())
            for data in compressed:
                inflate = module.decompressobj(wbits=31)
                for piece in range(0, len(data), PIECE):
                    inflate.decompress(data[piece : piece + PIECE])
            _best(rates, f"floor: inflate, {name}", count, start)
        start = (time.perf_counter(), time.process_time())
        for piece in range(0, len(values), PIECE):
            codec.compress(values[piece : piece + PIECE])
        _best(rates, f"floor: {options.compression} of the values", count, start)
    return rates


def converter_cpu_rate(folder: str, schema_path: str, scratch: str, row_group_size: int) -> float:
    """Records per CPU-second of the whole conversion in this process (one worker), best of
    REPEATS; the command's own start-up (imports) is left out, as for the other stages."""
    settings = Settings(
        schema=load_schema(schema_path).to_json(),
        row_group_size=row_group_size,
        split_points={},
        compression="auto",
    )
    best = 0.0
    for repeat in range(REPEATS):
        cpu = time.process_time()
        summary = convert(
            [folder], os.path.join(scratch, f"cpu-{repeat}"), settings, progress=False
        )
        best = max(best, summary.rows / (time.process_time() - cpu))
    return best


def converter_rate(
    folder: str, schema_path: str, scratch: str, workers: int, row_group_size: int
) -> float:
    """Records/s of the whole command (worker start-up included), best of REPEATS runs."""
    best = 0.0
    for repeat in range(REPEATS):
        output = subprocess.run(
            [
                sys.executable,
                "-m",
                "projects.home.recap.tools.convert_tfrecords",
                folder,
                "--output_dir",
                os.path.join(scratch, f"out-{workers}-{repeat}"),
                "--schema_path",
                schema_path,
                "--num_workers",
                str(workers),
                "--row_group_size",
                str(row_group_size),
                "--no_progress",
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        # "converted N files (...): R rows, ..., S s, X records/s"
        rate = float(output.split(" s, ")[1].split(" records/s")[0].replace(",", ""))
        best = max(best, rate)
    return best


def tf_python(requested: str | None) -> str | None:
    if requested:
        return requested
    if importlib.util.find_spec("tensorflow") is not None:
        return sys.executable
    return None


def tf_rate(python: str, files: list[str], schema_path: str) -> dict[str, float]:
    output = subprocess.run(
        [python, "-c", TF_SCRIPT, schema_path, str(REPEATS), *files],
        capture_output=True,
        text=True,
    )
    if output.returncode:
        raise RuntimeError(f"the tf.data script failed:\n{output.stderr[-3000:]}")
    return json.loads(output.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num_examples", type=int, default=8192)
    parser.add_argument("--num_files", type=int, default=4)
    parser.add_argument(
        "--row_group_size",
        type=int,
        default=WriteOptions.row_group_size,
        help="Rows per Parquet row group, in the converter and the write stage.",
    )
    parser.add_argument("--tf_python", help="A Python with tensorflow-cpu, for tf.data's rate.")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as scratch:
        files, schema_path = write_tfrecords(scratch, args.num_examples, args.num_files)
        size = sum(os.path.getsize(path) for path in files)
        print(
            f"{args.num_examples} examples of the full 2022 schema in {len(files)} gzipped "
            f"TFRecord files ({size / 1e6:.1f} MB), Parquet row groups of {args.row_group_size}"
        )
        folder = os.path.dirname(files[0])
        stages = stage_rates(files, schema_path, args.row_group_size, scratch)
        for stage, (rate, cpu_rate) in stages.items():
            print(
                f"  stage {stage + ':':<30} {rate:9,.0f} records/s, {cpu_rate:9,.0f} per CPU-second"
            )
        one = converter_rate(folder, schema_path, scratch, 1, args.row_group_size)
        one_cpu = converter_cpu_rate(folder, schema_path, scratch, args.row_group_size)
        print(
            f"converter (+ Parquet write), 1 process: {one:9,.0f} records/s, {one_cpu:9,.0f} "
            "per CPU-second"
        )
        every = converter_rate(folder, schema_path, scratch, cores, args.row_group_size)
        print(f"converter, {cores} processes:{'':<17}{every:9,.0f} records/s ({every / one:.2f}x)")
        python = tf_python(args.tf_python)
        if python is None:
            print("tf.data: skipped (TensorFlow is not importable; pass --tf_python)")
            return
        reference = tf_rate(python, files, schema_path)
        wall, cpu = reference["records_per_s"], reference["records_per_cpu_s"]
        print(f"tf.data read + parse, 1 thread: {wall:9,.0f} records/s, {cpu:9,.0f} per CPU-second")
        floor_cpu = 1 / (
            1 / stages["floor: inflate, ISA-L"][1]
            + 1 / stages[f"floor: {WriteOptions.compression} of the values"][1]
        )
        print(
            f"converter / tf.data: {one / wall:.2f} per process (wall), {one_cpu / cpu:.2f} per "
            f"CPU-second; read + decode stage / tf.data: {stages['read + decode'][1] / cpu:.2f}, "
            f"Parquet write alone / tf.data: {stages['Parquet write alone'][1] / cpu:.2f} per "
            "CPU-second"
        )
        print(
            f"floors / tf.data per CPU-second: inflate alone (ISA-L) "
            f"{stages['floor: inflate, ISA-L'][1] / cpu:.2f}, inflate (zlib, as tf.data) "
            f"{stages['floor: inflate, zlib'][1] / cpu:.2f}; inflate + compress alone, the most "
            f"any converter to compressed Parquet could reach here: {floor_cpu / cpu:.2f} "
            f"(the converter is at {one_cpu / floor_cpu:.2f} of it)"
        )


if __name__ == "__main__":
    main()
