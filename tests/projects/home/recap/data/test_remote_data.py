"""The loader on an S3 bucket (moto on loopback, tests/conftest.py) and a Google Cloud Storage
one (an emulator on loopback): the same batches as from disk, ranged reads of only the needed
column chunks, files opened together, faults retried, one-line errors."""

import itertools
import time

import fsspec
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from projects.home.recap.data.dataset import ReadOptions, build_dataset
from projects.home.recap.data.files import select_files
from projects.home.recap.data.reader import DataFileError
from tml.storage import StorageError


def upload(local_folder, url: str) -> None:
    fs = fsspec.filesystem("s3")
    fs.put(str(local_folder), url.removeprefix("s3://"), recursive=True)
    fs.invalidate_cache()


def remote_config(make_config, bucket: str, tmp_path, **overrides):
    schema = {"schema_path": f"{bucket}/segdense.json", **overrides.pop("seg_dense_schema", {})}
    return make_config(inputs=f"{bucket}/data/*.parquet", seg_dense_schema=schema, **overrides)


def batch_values(dataset) -> list[list[torch.Tensor]]:
    return [
        [
            batch.inputs.continuous_features,
            batch.inputs.binary_features,
            batch.labels,
            batch.extra_features["meta__tweet_id"],
        ]
        for batch in dataset
    ]


def test_a_dataset_on_a_bucket_reads_the_batches_it_reads_from_disk(
    tmp_path, write_files, make_config, s3_bucket
):
    write_files([10, 7, 5])
    upload(tmp_path / "data", f"{s3_bucket}/data")
    upload(tmp_path / "segdense.json", f"{s3_bucket}/segdense.json")
    np.save(tmp_path / "mask.npy", np.array([1, 0, 1, 1]))
    upload(tmp_path / "mask.npy", f"{s3_bucket}/mask.npy")
    preprocess = {
        "truncate_and_slice": {
            "continuous_feature_truncation": 4,
            "continuous_feature_mask_path": "{}/mask.npy",
        }
    }

    def config_at(root):
        options = {
            "preprocess": {
                "truncate_and_slice": {
                    **preprocess["truncate_and_slice"],
                    "continuous_feature_mask_path": f"{root}/mask.npy",
                }
            }
        }
        if str(root).startswith("s3://"):
            return remote_config(make_config, root, tmp_path, **options)
        return make_config(**options)

    local = build_dataset(config_at(tmp_path), options=ReadOptions.evaluation(), tasks=["label.a"])
    remote = build_dataset(
        config_at(s3_bucket), options=ReadOptions.evaluation(), tasks=["label.a"]
    )
    assert select_files(config_at(s3_bucket).model_copy()) == [
        f"{s3_bucket}/data/part-{index:05d}.parquet" for index in range(3)
    ]
    # Remote reads wait on the store: twice the default readers keep the CPUs busy.
    assert remote.reader_threads == 2 * local.reader_threads
    expected, got = batch_values(local), batch_values(remote)
    assert len(got) == len(expected) == 6
    for left, right in zip(expected, got, strict=True):
        for a, b in zip(left, right, strict=True):
            torch.testing.assert_close(a, b)
    assert got[0][0].shape[1] == 3  # the remote mask was applied


def test_a_dataset_on_a_gcs_bucket_reads_the_batches_it_reads_from_disk(
    tmp_path, write_files, make_config, gcs_bucket
):
    write_files([10, 7, 5], row_group_size=3)
    fs = fsspec.filesystem("gs")
    fs.put(str(tmp_path / "data"), f"{gcs_bucket}/data", recursive=True)
    fs.put(str(tmp_path / "segdense.json"), f"{gcs_bucket}/segdense.json")
    local = build_dataset(make_config(), options=ReadOptions.evaluation(), tasks=["label.a"])
    remote = build_dataset(
        remote_config(make_config, gcs_bucket, tmp_path),
        options=ReadOptions.evaluation(),
        tasks=["label.a"],
    )
    assert remote.file_paths == [
        f"{gcs_bucket}/data/part-{index:05d}.parquet" for index in range(3)
    ]
    expected, got = batch_values(local), batch_values(remote)
    assert len(got) == len(expected) == 6
    for left, right in zip(expected, got, strict=True):
        for a, b in zip(left, right, strict=True):
            torch.testing.assert_close(a, b)


def test_remote_reads_fetch_only_the_needed_column_chunks(
    tmp_path, write_files, make_config, s3_bucket, s3_server
):
    write_files([400], row_group_size=400, chunk_size=2)
    upload(tmp_path / "data", f"{s3_bucket}/data")
    upload(tmp_path / "segdense.json", f"{s3_bucket}/segdense.json")
    size = (tmp_path / "data" / "part-00000.parquet").stat().st_size
    config = remote_config(
        make_config,
        s3_bucket,
        tmp_path,
        preprocess={"truncate_and_slice": {"continuous_feature_truncation": 2}},
    )
    dataset = build_dataset(config, options=ReadOptions.evaluation(), tasks=["label.a"])
    before = s3_server.faults.bytes_sent
    rows = sum(batch.batch_size for batch in dataset)
    fetched = s3_server.faults.bytes_sent - before
    assert rows == 400
    metadata = pq.read_metadata(tmp_path / "data" / "part-00000.parquet")
    group = metadata.row_group(0)
    chunks = {
        group.column(i).path_in_schema.split(".list")[0]: group.column(i)
        for i in range(group.num_columns)
    }
    needed = sum(chunks[name].total_compressed_size for name in dataset.columns_read)
    skipped = size - needed
    # The columns read, plus at most the small gaps fetch_ranges reads over between them.
    assert needed <= fetched < needed + skipped / 2, (needed, fetched, size)


def test_transient_errors_while_loading_are_retried(
    tmp_path, write_files, make_config, s3_bucket, s3_server
):
    write_files([10, 7])
    upload(tmp_path / "data", f"{s3_bucket}/data")
    upload(tmp_path / "segdense.json", f"{s3_bucket}/segdense.json")
    s3_server.faults.fail_next = 3
    s3_server.faults.delay_next, s3_server.faults.delay_seconds = 3, 0.2
    dataset = build_dataset(
        remote_config(make_config, s3_bucket, tmp_path),
        options=ReadOptions.evaluation(),
        tasks=["label.a"],
    )
    ids = [batch.extra_features["meta__tweet_id"].flatten().tolist() for batch in dataset]
    assert sorted(itertools.chain.from_iterable(ids)) == list(range(17))
    assert s3_server.faults.fail_next == 0 and s3_server.faults.delay_next == 0


def test_files_on_a_bucket_open_together_in_order_and_a_bad_one_is_named(
    tmp_path, write_files, make_config, s3_bucket, s3_server
):
    write_files([3] * 20)
    (tmp_path / "data" / "part-00007.parquet").write_bytes(b"garbage")
    upload(tmp_path / "data", f"{s3_bucket}/data")
    upload(tmp_path / "segdense.json", f"{s3_bucket}/segdense.json")
    bad = f"{s3_bucket}/data/part-00007.parquet"
    with pytest.raises(DataFileError, match=rf"^cannot read Parquet file {bad}"):
        build_dataset(
            remote_config(make_config, s3_bucket, tmp_path),
            options=ReadOptions.inference(),
            tasks=["label.a"],
        )
    # Each file's size and footer are slow answers: opened one after the other, 20 files
    # would take 20 x 2 x 0.2 s.
    s3_server.faults.delay_next, s3_server.faults.delay_seconds = 40, 0.2
    started = time.monotonic()
    dataset = build_dataset(
        remote_config(make_config, s3_bucket, tmp_path, ignore_data_errors=True),
        options=ReadOptions.inference(),
        tasks=["label.a"],
    )
    assert time.monotonic() - started < 4
    assert dataset.skipped_files == [bad]
    expected = [f"{s3_bucket}/data/part-{index:05d}.parquet" for index in range(20) if index != 7]
    assert dataset.file_paths == expected
    ids = [batch.extra_features["meta__tweet_id"].flatten().tolist() for batch in dataset]
    assert list(itertools.chain.from_iterable(ids)) == [i for i in range(60) if i // 3 != 7]


def test_date_folders_under_a_bucket(tmp_path, make_config, s3_bucket):
    for day in ("2023/02/28", "2023/03/01"):
        (tmp_path / "days" / day).mkdir(parents=True)
        (tmp_path / "days" / day / "a.parquet").write_bytes(b"")
    upload(tmp_path / "days", f"{s3_bucket}/days")
    dates = {"data_root": f"{s3_bucket}/days", "end_date": "2023/03/01", "days": 3}
    config = make_config(inputs=None, explicit_date_inputs={**dates, "num_missing_days_tol": 1})
    assert select_files(config) == [
        f"{s3_bucket}/days/2023/02/28/a.parquet",
        f"{s3_bucket}/days/2023/03/01/a.parquet",
    ]


def test_a_missing_bucket_or_denied_access_is_one_line_naming_the_url(
    tmp_path, make_config, s3_bucket, s3_server
):
    config = make_config(inputs="s3://no-such-bucket-10/data/*.parquet")
    with pytest.raises(StorageError, match=r"^s3://no-such-bucket-10/data/\*\.parquet: no such"):
        select_files(config)
    s3_server.faults.denied_buckets.add(s3_bucket.removeprefix("s3://"))
    with pytest.raises(StorageError, match=f"^{s3_bucket}/data/.*: access denied"):
        select_files(make_config(inputs=f"{s3_bucket}/data/*.parquet"))
