"""The storage layer against a real S3 server on loopback (moto, see tests/conftest.py)."""

import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tml.core.errors import UserInputError
from tml.storage import (
    RemotePath,
    StorageError,
    as_path,
    file_written_whole,
    list_files,
    remove_tree,
    write_atomically,
)


def test_local_paths_and_file_urls_stay_pathlib(tmp_path):
    assert as_path(str(tmp_path)) == tmp_path
    assert as_path(f"file://{tmp_path}") == tmp_path
    assert isinstance(as_path("s3://bucket/key"), RemotePath)


def test_remote_paths_join_and_name_like_pathlib():
    path = as_path("s3://bucket/job/") / "checkpoints" / "step_3"
    assert str(path) == "s3://bucket/job/checkpoints/step_3"
    assert path.name == "step_3"
    assert str(path.parent) == "s3://bucket/job/checkpoints"
    assert str(path.with_name("step_6")) == "s3://bucket/job/checkpoints/step_6"
    assert (path / "x.parquet").suffix == ".parquet"


@pytest.mark.parametrize("bucket", ["s3_bucket", "gcs_bucket"])
def test_write_read_list_and_remove_on_a_bucket(bucket, request):
    root = as_path(request.getfixturevalue(bucket)) / "job"
    write_atomically(root / "a" / "one.json", '{"a": 1}')
    (root / "a" / "two.parquet").write_bytes(b"x")
    (root / "b" / "c" / "three.parquet").write_text("y")
    assert (root / "a" / "one.json").read_text() == '{"a": 1}'
    assert (root / "a").is_dir() and (root / "a" / "one.json").is_file()
    assert not (root / "missing").exists()
    assert [child.name for child in root.iterdir()] == ["a", "b"]
    assert [path.name for path in (root / "a").glob("*.parquet")] == ["two.parquet"]
    assert list_files(f"{root}/**/*.parquet") == [
        f"{root}/a/two.parquet",
        f"{root}/b/c/three.parquet",
    ]
    remove_tree(root / "a")
    assert not (root / "a").exists()
    assert (root / "b" / "c" / "three.parquet").exists()
    with pytest.raises(ValueError, match="cannot append"):
        (root / "log.jsonl").open("a")


def test_a_missing_gcs_bucket_is_one_line_naming_the_url(gcs_server):
    pattern = "gs://no-such-bucket-10/x/*.parquet"
    with pytest.raises(StorageError, match=f"^{re.escape(pattern)}: no such bucket$"):
        list_files(pattern)
    with pytest.raises(StorageError, match=r"^gs://no-such-bucket-10/x/a\.json: no such bucket$"):
        as_path("gs://no-such-bucket-10/x/a.json").read_text()


def test_a_missing_bucket_is_one_line_naming_the_url(s3_server):
    pattern = "s3://no-such-bucket-10/x/*.parquet"
    with pytest.raises(StorageError, match=f"^{re.escape(pattern)}: no such bucket$"):
        list_files(pattern)
    with pytest.raises(StorageError, match="s3://no-such-bucket-10/job: no such bucket"):
        as_path("s3://no-such-bucket-10/job").mkdir(parents=True, exist_ok=True)
    with pytest.raises(UserInputError, match=r"s3://no-such-bucket-10/a\.json: no such bucket"):
        as_path("s3://no-such-bucket-10/a.json").read_text()


def test_a_missing_key_is_file_not_found_naming_the_url(s3_bucket):
    with pytest.raises(FileNotFoundError, match=f"{s3_bucket}/none.json: no such file"):
        as_path(f"{s3_bucket}/none.json").read_text()


def test_denied_access_is_one_line_naming_the_url(s3_server, s3_bucket):
    (as_path(s3_bucket) / "x.parquet").write_bytes(b"x")
    s3_server.faults.denied_buckets.add(s3_bucket.removeprefix("s3://"))
    with pytest.raises(StorageError, match=f"^{s3_bucket}/x.parquet: access denied"):
        (as_path(s3_bucket) / "x.parquet").read_bytes()
    with pytest.raises(StorageError, match="access denied"):
        list_files(f"{s3_bucket}/*.parquet")


def test_transient_errors_and_slow_answers_are_retried(s3_server, s3_bucket):
    path = as_path(s3_bucket) / "data.bin"
    path.write_bytes(b"payload")
    failed = s3_server.faults.failed
    s3_server.faults.fail_next = 3
    assert path.read_bytes() == b"payload"
    s3_server.faults.fail_next = 2
    (as_path(s3_bucket) / "written.bin").write_bytes(b"abc")
    assert (as_path(s3_bucket) / "written.bin").read_bytes() == b"abc"
    assert s3_server.faults.failed == failed + 5
    s3_server.faults.delay_next, s3_server.faults.delay_seconds = 2, 0.3
    assert path.read_bytes() == b"payload"
    assert s3_server.faults.delay_next == 0


def test_local_write_atomically_leaves_no_temporary(tmp_path: Path):
    write_atomically(tmp_path / "a.json", "{}")
    assert [path.name for path in tmp_path.iterdir()] == ["a.json"]


def _write_parquet(path, fail: bool) -> None:
    table = pa.table({"x": list(range(1000))})
    with file_written_whole(path) as sink, pq.ParquetWriter(sink, table.schema) as writer:
        writer.write_table(table)
        if fail:
            raise RuntimeError("killed half way")


@pytest.mark.parametrize("where", ["local", "bucket"])
def test_a_file_written_whole_shows_under_its_name_only_when_whole(where, tmp_path, request):
    root = as_path(request.getfixturevalue("s3_bucket")) if where == "bucket" else tmp_path
    path = root / "part-0.parquet"
    with pytest.raises(RuntimeError, match="killed half way"):
        _write_parquet(path, fail=True)
    assert not path.exists()
    if where == "local":  # the partial file keeps its temporary name
        assert [child.name for child in tmp_path.iterdir()] == ["part-0.parquet.partial"]
    _write_parquet(path, fail=False)
    with path.open("rb") as source:
        assert pq.read_table(source)["x"].to_pylist() == list(range(1000))
