"""The job folder's answers about what is whole: predictions folders and their marker."""

from __future__ import annotations

import pytest

from projects.home.recap.job_folder import IncompletePredictionsError, JobFolder


def test_predictions_count_only_once_the_folder_is_marked_complete(tmp_path):
    job = JobFolder(tmp_path)
    folder = tmp_path / "predictions" / "step_6"
    folder.mkdir(parents=True)
    assert job.complete_predictions_files(folder) == []
    for rank in range(2):
        JobFolder.predictions_file(folder, rank, 2).write_bytes(b"rows")
    (folder / "predictions-1-of-2.parquet.partial").write_bytes(b"half")
    assert job.partial_predictions_files(folder) == [folder / "predictions-1-of-2.parquet.partial"]
    with pytest.raises(IncompletePredictionsError) as error:
        job.complete_predictions_files(folder)
    assert str(error.value) == (
        f"{folder}: the predictions are incomplete (no COMPLETE marker: the inference that "
        "wrote them did not finish); rerun --mode inference"
    )
    assert job.all_predictions_files() == []
    JobFolder.predictions_marker(folder).write_text("{}")
    expected = [folder / "predictions-0-of-2.parquet", folder / "predictions-1-of-2.parquet"]
    assert job.complete_predictions_files(folder) == expected
    assert job.all_predictions_files() == expected
