"""The inspection command on converted Parquet and on TensorFlow's TFRecord files."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np

from projects.home.recap.tools import convert_tfrecords, inspect_data

from ..data.test_tfrecord import FIXTURES, SCHEMA_2022, load_fixture_module


def stats_row(lines: list[str], feature: str) -> list[str]:
    rows = [line.split() for line in lines if line.split()[:1] == [feature] and " = " not in line]
    return rows[-1]  # the statistics table comes after the schema table


def test_parquet_folder_report(tmp_path: Path, capsys):
    fixtures = load_fixture_module()
    source = tmp_path / "in"
    source.mkdir()
    shutil.copy(FIXTURES / "part-00000.tfrecord.gz", source)
    out = tmp_path / "out"
    convert_tfrecords.main(
        [str(source), "--output_dir", str(out), "--schema_path", str(SCHEMA_2022),
         "--row_group_size", "10", "--no_progress"]
    )  # fmt: skip
    capsys.readouterr()
    assert inspect_data.main([str(out), "--rows", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"{out}: Parquet, 1 files, 24 rows, 3 row groups (4..10 rows each)"
    records = fixtures.fixture_records("part-00000.tfrecord.gz")
    labels = np.array([r["recap.engagement.is_favorited"][0] for r in records])
    row = stats_row(lines, "recap.engagement.is_favorited")
    assert row[-1] == f"{labels.mean():.4%}"
    continuous = np.stack([r["home_recap_2022_cont__segdense_vals"] for r in records])
    row = stats_row(lines, "home_recap_2022_cont__segdense_vals")
    # Each record holds one NaN; min and max are the special values written.
    assert row[1:5] == ["float_list", "6000", "-1.5e-39", "3.40282e+38"]
    assert int(row[-2]) == int(np.isnan(continuous).sum()) == 24
    assert sum(line.startswith("  row ") for line in lines) == 2


def test_tfrecord_report_counts_missing_features(capsys):
    path = FIXTURES / "missing_optional.tfrecord.gz"
    assert inspect_data.main([str(path), "--rows", "0"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"{path}: TFRecord of tf.Example, 8 records read, 18 features"
    # The extra feature of record 0 is absent from the 7 others.
    assert stats_row(lines, "not.in.schema")[1:3] == ["bytes_list", "1"]
    assert stats_row(lines, "not.in.schema")[-3] == "7"
    assert not any(re.search(r"twhin", line) for line in lines)


def test_unreadable_path_is_one_line(tmp_path: Path, capsys):
    bad = tmp_path / "x.tfrecord"
    bad.write_bytes(b"garbage that is no record")
    assert inspect_data.main([str(bad)]) == 0  # the problem is reported, not fatal
    assert "is this a TFRecord file?" in capsys.readouterr().out
    assert inspect_data.main([str(tmp_path / "nothing")]) == 2
    assert (
        capsys.readouterr().err.strip() == f"error: {tmp_path / 'nothing'}: no such file or folder"
    )
