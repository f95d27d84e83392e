import pytest

from projects.home.recap.data.config import ExplicitDateInputs, ExplicitDatetimeInputs
from projects.home.recap.data.files import (
    FileSelectionError,
    date_folders,
    datetime_folders,
    select_files,
)


def _touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return str(path)


def test_glob_selects_sorted_files_and_keeps_the_first_n(tmp_path, make_config):
    paths = [_touch(tmp_path / "data" / f"f{i}.parquet") for i in (3, 1, 2)]
    _touch(tmp_path / "data" / "other.txt")
    assert select_files(make_config()) == sorted(paths)
    assert select_files(make_config(num_files_to_keep=2)) == sorted(paths)[:2]


def test_glob_matching_nothing_names_the_pattern(tmp_path, make_config):
    with pytest.raises(FileSelectionError, match=r"no file matches the glob '.*data/\*\.parquet'"):
        select_files(make_config())


def test_date_window_ends_at_end_date_inclusive(tmp_path):
    inputs = ExplicitDateInputs(data_root=str(tmp_path), end_date="2023/03/01", days=3)
    assert date_folders(inputs) == [
        str(tmp_path / "2023/02/27"),
        str(tmp_path / "2023/02/28"),
        str(tmp_path / "2023/03/01"),
    ]


def test_datetime_window_is_the_hours_before_the_end(tmp_path):
    inputs = ExplicitDatetimeInputs(data_root=str(tmp_path), end_datetime="2023/03/01/01", hours=3)
    assert datetime_folders(inputs) == [
        str(tmp_path / "2023/02/28/22"),
        str(tmp_path / "2023/02/28/23"),
        str(tmp_path / "2023/03/01/00"),
    ]


def test_date_inputs_tolerate_missing_days_up_to_the_limit(tmp_path, make_config):
    kept = _touch(tmp_path / "2023/03/01/a.parquet")
    _touch(tmp_path / "2023/02/28/b.parquet")
    (tmp_path / "2023/02/27").mkdir(parents=True)  # empty: counts as missing
    dates = {"data_root": str(tmp_path), "end_date": "2023/03/01", "days": 4}
    config = make_config(inputs=None, explicit_date_inputs={**dates, "num_missing_days_tol": 2})
    assert select_files(config) == [str(tmp_path / "2023/02/28/b.parquet"), kept]
    config = make_config(inputs=None, explicit_date_inputs={**dates, "num_missing_days_tol": 1})
    with pytest.raises(FileSelectionError) as error:
        select_files(config)
    message = str(error.value)
    assert "explicit_date_inputs: 2 of 4 day folders are missing" in message
    assert "more than the 1 tolerated" in message and "2023/02/26" in message


def test_datetime_inputs_read_hour_folders(tmp_path, make_config):
    first = _touch(tmp_path / "2023/03/01/00/a.parquet")
    _touch(tmp_path / "2023/03/01/01/not_read.parquet")  # the end hour itself is excluded
    hours = {"data_root": str(tmp_path), "end_datetime": "2023/03/01/01", "hours": 2}
    config = make_config(
        inputs=None, explicit_datetime_inputs={**hours, "num_missing_hours_tol": 1}
    )
    assert select_files(config) == [first]
    config = make_config(inputs=None, explicit_datetime_inputs=hours)
    with pytest.raises(FileSelectionError, match=r"1 of 2 hour folders are missing"):
        select_files(config)


def test_every_folder_missing_within_tolerance_is_still_an_error(tmp_path, make_config):
    dates = {"data_root": str(tmp_path), "end_date": "2023/03/01", "days": 2}
    config = make_config(inputs=None, explicit_date_inputs={**dates, "num_missing_days_tol": 5})
    with pytest.raises(FileSelectionError, match=r"no .parquet file in any of the 2 folders"):
        select_files(config)
