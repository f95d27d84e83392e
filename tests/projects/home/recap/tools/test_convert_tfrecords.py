"""The TFRecord converter, on files TensorFlow wrote, through the real loader and command."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from projects.home.recap.config import RecapConfig
from projects.home.recap.data.config import RecapDataConfig
from projects.home.recap.data.dataset import ReadOptions, build_dataset
from projects.home.recap.data.schema import load_schema
from projects.home.recap.data.tf_example import encode_example
from projects.home.recap.data.tfrecord import write_records
from projects.home.recap.tools import convert_tfrecords
from tml.core.config import load_config_from_yaml

from ..data.test_tfrecord import FIXTURES, SCHEMA_2022, bits, load_fixture_module

REPO = Path(__file__).parents[5]
LABELS = [spec.name for spec in load_schema(SCHEMA_2022) if spec.name.startswith("recap.")]
IN_ORDER = ReadOptions(shuffle=False, repeat=False, with_labels=True, weigh_by_sampling_rates=False)


def copy_fixtures(tmp_path: Path) -> Path:
    folder = tmp_path / "tfrecords"
    folder.mkdir()
    for name in load_fixture_module().FILES:
        shutil.copy(FIXTURES / name, folder / name)
    return folder


def full_schema_config(inputs: str) -> RecapDataConfig:
    """Reads every feature of the 2022 schema, untruncated."""
    fixtures = load_fixture_module()
    return RecapDataConfig.model_validate(
        {
            "inputs": inputs,
            "global_batch_size": 7,
            "seg_dense_schema": {
                "schema_path": str(SCHEMA_2022),
                "renamed_features": {
                    "continuous": "home_recap_2022_cont__segdense_vals",
                    "binary": "home_recap_2022_binary__segdense_vals",
                    "discrete": "home_recap_2022_discrete__segdense_vals",
                    "user_embedding": fixtures.EMBEDDINGS[0],
                    "user_eng_embedding": fixtures.EMBEDDINGS[1],
                    "author_embedding": fixtures.EMBEDDINGS[2],
                    "meta__user_id": "meta.user_id",
                    "meta__author_id": "meta.author_id",
                    "meta__tweet_id": "meta.tweet_id",
                },
            },
            "tasks": {name: {} for name in LABELS},
        }
    )


def run(*args: str) -> int:
    return convert_tfrecords.main([*map(str, args), "--no_progress"])


def test_tensorflow_files_load_through_the_loader_bit_exact(tmp_path: Path, capsys):
    fixtures = load_fixture_module()
    out = tmp_path / "parquet"
    source = copy_fixtures(tmp_path)
    assert run(source, "--output_dir", out, "--schema_path", SCHEMA_2022, "--verify") == 0
    printed = capsys.readouterr().out
    assert "converted 3 files (0 already done): 35 rows" in printed
    assert "feature 'recap.engagement.is_shared' missing in 8 records" in printed
    assert "verified 3 files: row counts match, 35 records equal value by value" in printed
    manifest = json.loads((out / convert_tfrecords.MANIFEST_NAME).read_text())
    assert {name: entry["rows"] for name, entry in manifest["files"].items()} == {
        "missing_optional.parquet": 8,
        "part-00000.parquet": 24,
        "part-00001.parquet": 3,
    }

    dataset = build_dataset(
        full_schema_config(str(out / "*.parquet")), options=IN_ORDER, tasks=LABELS
    )
    batches = list(dataset)
    expected = [
        record
        for name in (
            "missing_optional.tfrecord.gz",
            "part-00000.tfrecord.gz",
            "part-00001.tfrecord",
        )
        for record in fixtures.fixture_records(name)
    ]
    fields = {
        "continuous_features": "home_recap_2022_cont__segdense_vals",
        "binary_features": "home_recap_2022_binary__segdense_vals",
        "discrete_features": "home_recap_2022_discrete__segdense_vals",
        "user_embedding": fixtures.EMBEDDINGS[0],
        "user_eng_embedding": fixtures.EMBEDDINGS[1],
        "author_embedding": fixtures.EMBEDDINGS[2],
    }
    schema = load_schema(SCHEMA_2022)
    row = 0
    for batch in batches:
        for index in range(batch.batch_size):
            record = expected[row]

            def written(name: str, record=record) -> np.ndarray:
                spec = schema.get(name, where="test")
                return record.get(name, np.zeros(spec.length, spec.numpy_dtype))

            for field, name in fields.items():
                actual = getattr(batch.inputs, field)[index].numpy()
                assert np.array_equal(bits(actual), bits(written(name))), (row, field)
            for column, label in enumerate(LABELS):
                assert batch.labels[index, column].item() == written(label)[0], (row, label)
            for name in ("meta.user_id", "meta.author_id", "meta.tweet_id"):
                extra = batch.extra_features[name.replace(".", "__")][index].numpy()
                assert extra.tolist() == written(name).tolist()
            row += 1
    assert row == len(expected) == 35


def test_local_prod_reads_converted_data(tmp_path: Path, monkeypatch):
    out = tmp_path / "parquet"
    source = copy_fixtures(tmp_path)
    config_path = REPO / "projects/home/recap/config/local_prod.yaml"
    monkeypatch.setenv("TML_BASE", str(REPO))
    assert run(source, "--output_dir", out, "--config_path", config_path) == 0
    config = load_config_from_yaml(
        RecapConfig, str(config_path), [f"train_data.inputs={out}/*.parquet"]
    )
    # The converter cut the columns at local_prod's truncation, so only those chunks are read.
    dataset = build_dataset(config.train_data, options=IN_ORDER, tasks=list(config.model.tasks))
    assert "home_recap_2022_cont__segdense_vals[2048:2117]" in dataset.columns_read
    assert not any("[2117:" in column for column in dataset.columns_read)
    batch = next(iter(dataset))
    assert batch.inputs.continuous_features.shape[1] == 2117
    assert batch.labels.shape[1] == len(config.model.tasks)


@pytest.mark.slow
def test_local_prod_yaml_trains_on_converted_data_with_only_its_input_glob_overridden(
    tmp_path: Path,
):
    """The original's production config, unchanged but for its input glob, trains and evaluates
    on TensorFlow-written records through both real commands (converter, then torchrun).

    For CPU cost the job also runs 2 train steps instead of 1000 (the 35 fixture rows fit one
    eval batch, so its 16 eval steps are cheap); its save_dir stays the config's own, under
    ``$TML_RUN_DIR``. The one ``train_data.inputs`` override also moves the 11 validation
    partitions, which read the same anchored glob in the file.
    """
    config_path = REPO / "projects/home/recap/config/local_prod.yaml"
    config = load_config_from_yaml(RecapConfig, str(config_path))
    out = tmp_path / "converted"
    run_dir = tmp_path / "run"
    environment = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "TML_BASE": str(REPO),
        "TML_RUN_DIR": str(run_dir),
        "OMP_NUM_THREADS": "1",
        "CUDA_VISIBLE_DEVICES": "",
    }
    commands = [
        [
            sys.executable, "-m", "projects.home.recap.tools.convert_tfrecords",
            str(copy_fixtures(tmp_path)), "--output_dir", str(out), "--config_path",
            str(config_path), "--num_workers", "1", "--no_progress",
        ],
        [
            sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
            "1", "-m", "projects.home.recap.main", "--config_path", str(config_path),
            f"train_data.inputs={out}/*.parquet", "training.num_train_steps=2",
        ],
    ]  # fmt: skip
    for command in commands:
        result = subprocess.run(
            command, cwd=REPO, env=environment, capture_output=True, text=True, timeout=300
        )
        assert result.returncode == 0, f"{command[2]}:\n{result.stderr[-4000:]}"

    save_dir = run_dir / "local_prod" / "model"
    trained = [json.loads(line) for line in (save_dir / "train.jsonl").read_text().splitlines()]
    assert trained[-1]["step"] == 2 and np.isfinite(trained[-1]["loss"])
    evaluated = [json.loads(line) for line in (save_dir / "eval.jsonl").read_text().splitlines()]
    examples = {
        key.removesuffix("/examples"): record[key]
        for record in evaluated
        for key in record
        if key.endswith("/examples")
    }
    # Every partition read all 35 converted records: none looked at the config's own glob.
    assert examples == {partition: 35 for partition in config.validation_data}
    assert not (run_dir / "local_prod" / "data").exists()
    assert (save_dir / "checkpoints" / "step_2").is_dir()


def test_date_folder_layout_is_kept(tmp_path: Path):
    root = tmp_path / "root"
    for day in ("2023/04/01", "2023/04/02"):
        (root / day).mkdir(parents=True)
        shutil.copy(FIXTURES / "part-00001.tfrecord", root / day / "part-00001.tfrecord")
    (root / "2023/04/02/_SUCCESS").write_bytes(b"")
    out = tmp_path / "parquet"
    assert run(root, "--output_dir", out, "--schema_path", SCHEMA_2022) == 0
    written = sorted(str(path.relative_to(out)) for path in out.rglob("*.parquet"))
    assert written == ["2023/04/01/part-00001.parquet", "2023/04/02/part-00001.parquet"]


def write_bad_copies(tmp_path: Path) -> Path:
    folder = tmp_path / "bad"
    folder.mkdir()
    plain = (FIXTURES / "part-00001.tfrecord").read_bytes()
    length = int.from_bytes(plain[:8], "little")
    second = 12 + length + 4
    flipped = bytearray(plain)
    flipped[second + 12 + 100] ^= 0x20  # inside record 1's data
    (folder / "flipped.tfrecord").write_bytes(bytes(flipped))
    (folder / "truncated.tfrecord").write_bytes(plain[: second + 12 + 50])
    (folder / "empty.tfrecord.gz").write_bytes(b"")
    return folder


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("flipped.tfrecord", "record 1: corrupt record (data checksum mismatch"),
        ("truncated.tfrecord", "record 1: truncated: the file ends after 50 of the record's"),
        ("empty.tfrecord.gz", "record 0: the file is empty (0 bytes)"),
    ],
)
def test_corrupt_inputs_stop_with_one_line(tmp_path: Path, capsys, name: str, message: str):
    folder = write_bad_copies(tmp_path)
    out = tmp_path / "parquet"
    assert run(folder / name, "--output_dir", out, "--schema_path", SCHEMA_2022) == 2
    error = capsys.readouterr().err.strip()
    assert error == f"error: {folder / name}: {message}" or (
        error.startswith(f"error: {folder / name}: {message}") and "\n" not in error
    )
    assert not list(out.rglob("*.parquet")) and not list(out.rglob(".*tmp*"))


def test_skip_corrupt_converts_the_rest_and_counts(tmp_path: Path, capsys):
    folder = write_bad_copies(tmp_path)
    shutil.copy(FIXTURES / "part-00000.tfrecord.gz", folder / "good.tfrecord.gz")
    out = tmp_path / "parquet"
    assert (
        run(folder, "--output_dir", out, "--schema_path", SCHEMA_2022, "--skip_corrupt", "--verify")
        == 0
    )
    printed = capsys.readouterr().out
    # flipped: records 0 and 2 of 3; truncated: record 0; good: 24; empty: none.
    assert "converted 4 files (0 already done): 27 rows" in printed
    assert "skipped 1 corrupt records; 2 files cut short" in printed
    assert "flipped.tfrecord: record 1: corrupt record" in printed
    manifest = json.loads((out / convert_tfrecords.MANIFEST_NAME).read_text())["files"]
    assert manifest["flipped.parquet"]["skipped_records"] == [1]
    assert manifest["empty.parquet"]["rows"] == 0 and not (out / "empty.parquet").exists()
    assert "verified 4 files" in printed


def write_big_inputs(folder: Path, files: int, records: int) -> None:
    schema = load_schema(SCHEMA_2022)
    rng = np.random.default_rng(0)
    folder.mkdir()
    for index in range(files):
        payloads = []
        for _ in range(records):
            values = {}
            for spec in schema:
                if spec.numpy_dtype == np.float32:
                    values[spec.name] = rng.standard_normal(spec.length).astype(np.float32)
                else:
                    values[spec.name] = rng.integers(0, 1000, spec.length)
            payloads.append(encode_example(values))
        write_records(str(folder / f"part-{index:05d}.tfrecord.gz"), payloads, "gzip")


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_output(tmp_path: Path):
    source = tmp_path / "big"
    write_big_inputs(source, files=6, records=300)
    reference = tmp_path / "reference"
    assert (
        run(
            source,
            "--output_dir",
            reference,
            "--schema_path",
            SCHEMA_2022,
            "--num_workers",
            "2",
            "--row_group_size",
            "128",
        )
        == 0
    )

    out = tmp_path / "resumed"
    command = [
        sys.executable, "-m", "projects.home.recap.tools.convert_tfrecords", str(source),
        "--output_dir", str(out), "--schema_path", str(SCHEMA_2022), "--num_workers", "1",
        "--row_group_size", "128", "--no_progress",
    ]  # fmt: skip
    environment = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(command, env=environment, cwd=REPO)
    manifest_path = out / convert_tfrecords.MANIFEST_NAME
    deadline = time.monotonic() + 120
    # Kill it once it has finished some files but not all.
    while not manifest_path.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done = json.loads(manifest_path.read_text())["files"]
    assert 0 < len(done) < 6
    for name in done:  # whatever the manifest counts is complete
        assert (out / name).read_bytes() == (reference / name).read_bytes()

    assert (
        run(source, "--output_dir", out, "--schema_path", SCHEMA_2022, "--row_group_size", "128")
        == 0
    )
    names = sorted(path.name for path in reference.glob("*.parquet"))
    assert sorted(path.name for path in out.glob("*.parquet")) == names
    assert not [path for path in out.iterdir() if ".tmp-" in path.name]
    for name in names:
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name
    resumed = json.loads(manifest_path.read_text())["files"]
    assert {k: v["rows"] for k, v in resumed.items()} == {name: 300 for name in names}


def test_rerun_skips_done_files_and_redoes_changed_ones(tmp_path: Path, capsys):
    source = copy_fixtures(tmp_path)
    out = tmp_path / "parquet"
    assert run(source, "--output_dir", out, "--schema_path", SCHEMA_2022) == 0
    capsys.readouterr()
    os.utime(source / "part-00001.tfrecord", ns=(1, 1))
    assert run(source, "--output_dir", out, "--schema_path", SCHEMA_2022) == 0
    assert "converted 1 files (2 already done): 3 rows" in capsys.readouterr().out
    assert (
        run(source, "--output_dir", out, "--schema_path", SCHEMA_2022, "--row_group_size", "8") == 2
    )
    assert "converted with other settings (row_group_size differ)" in capsys.readouterr().err


def test_verify_finds_a_difference(tmp_path: Path):
    source = copy_fixtures(tmp_path)
    out = tmp_path / "parquet"
    assert run(source, "--output_dir", out, "--schema_path", SCHEMA_2022) == 0
    manifest = json.loads((out / convert_tfrecords.MANIFEST_NAME).read_text())
    entry = manifest["files"]["part-00001.parquet"]
    # Pretend record 0 was skipped: every output row now faces the wrong input record.
    entry["skipped_records"] = [0]
    entry["rows"] = 3
    with pytest.raises(convert_tfrecords.ConvertError, match=r"row 0 \(record 1 of .*\): feature"):
        convert_tfrecords.verify_file(
            entry, str(out), "part-00001.parquet", load_schema(SCHEMA_2022), 8
        )


def test_inputs_and_output_on_a_bucket(tmp_path: Path, capsys, s3_bucket: str):
    """TFRecords read from and Parquet written to S3 (moto on loopback): the same bytes as a
    local conversion, resumable from the bucket's manifest, verified from the bucket."""
    import fsspec

    fs = fsspec.filesystem("s3")
    source = copy_fixtures(tmp_path)
    fs.put(str(source), f"{s3_bucket}/raw/2023/04/01".removeprefix("s3://"), recursive=True)
    fs.pipe_file(f"{s3_bucket}/raw/_SUCCESS".removeprefix("s3://"), b"")
    local = tmp_path / "local"
    assert run(source, "--output_dir", local, "--schema_path", SCHEMA_2022) == 0
    capsys.readouterr()

    out = f"{s3_bucket}/parquet"
    arguments = [f"{s3_bucket}/raw", "--output_dir", out, "--schema_path", SCHEMA_2022]
    assert run(*arguments, "--num_workers", "2", "--verify") == 0
    printed = capsys.readouterr().out
    assert "converted 3 files (0 already done): 35 rows" in printed
    assert "verified 3 files: row counts match, 35 records equal value by value" in printed
    stored = sorted(fs.find(out.removeprefix("s3://")))
    names = sorted(path.name for path in local.glob("*.parquet"))
    assert stored == sorted(
        [f"{out.removeprefix('s3://')}/{convert_tfrecords.MANIFEST_NAME}"]
        + [f"{out.removeprefix('s3://')}/2023/04/01/{name}" for name in names]
    )
    for name in names:
        assert fs.cat_file(f"{out}/2023/04/01/{name}") == (local / name).read_bytes(), name

    # A re-run finds the bucket's manifest: nothing left to do.
    assert run(*arguments) == 0
    assert "converted 0 files (3 already done)" in capsys.readouterr().out
    # A glob on the bucket keeps the layout under the glob's fixed part.
    glob_out = f"{s3_bucket}/from_glob"
    pattern = f"{s3_bucket}/raw/**/*.tfrecord*"
    assert run(pattern, "--output_dir", glob_out, "--schema_path", SCHEMA_2022) == 0
    assert "converted 3 files (0 already done)" in capsys.readouterr().out
    for name in names:
        assert fs.cat_file(f"{glob_out}/2023/04/01/{name}") == (local / name).read_bytes()

    # One object, named as a file is.
    single = f"{s3_bucket}/raw/2023/04/01/part-00001.tfrecord"
    assert run(single, "--output_dir", f"{s3_bucket}/single", "--schema_path", SCHEMA_2022) == 0
    capsys.readouterr()
    assert (
        fs.cat_file(f"{s3_bucket}/single/part-00001.parquet")
        == (local / "part-00001.parquet").read_bytes()
    )

    # A corrupt input leaves no object behind, and the message names the URL and record.
    plain = (FIXTURES / "part-00001.tfrecord").read_bytes()
    fs.pipe_file(f"{s3_bucket}/bad/cut.tfrecord".removeprefix("s3://"), plain[:-30])
    # (Row groups of 1: the upload has begun when record 2 fails.)
    assert run(f"{s3_bucket}/bad", "--output_dir", f"{s3_bucket}/bad_out", "--schema_path",
               SCHEMA_2022, "--row_group_size", "1") == 2  # fmt: skip
    error = capsys.readouterr().err.strip()
    assert error.startswith(f"error: {s3_bucket}/bad/cut.tfrecord: record 2: truncated")
    assert not fs.exists(f"{s3_bucket}/bad_out/cut.parquet".removeprefix("s3://"))
    assert run(f"{s3_bucket}/missing", "--output_dir", out, "--schema_path", SCHEMA_2022) == 2
    assert f"input '{s3_bucket}/missing': no such file or folder" in capsys.readouterr().err
