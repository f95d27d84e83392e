import itertools
import os
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from projects.home.recap.data.dataset import DatasetError, ReadOptions, build_dataset
from projects.home.recap.data.embedding_ids import hash_ids
from projects.home.recap.data.features import build_input_spec
from projects.home.recap.data.files import FileSelectionError
from projects.home.recap.data.parquet_format import SegDenseWriter, WriteOptions
from projects.home.recap.data.reader import DataFileError
from projects.home.recap.data.reading import ROW_FILE, ROW_IN_FILE
from projects.home.recap.data.schema import load_schema
from projects.home.recap.embedding.config import LargeEmbeddingsConfig
from tml.training.data_position import PositionTrackingIterator

from .conftest import rows_for

TASKS = ["label.c", "label.a"]
TRAIN, EVALUATE, INFERENCE = (
    ReadOptions.training(),
    ReadOptions.evaluation(),
    ReadOptions.inference(),
)


def ids_of(batch):
    return batch.extra_features["meta__tweet_id"].flatten().tolist()


def take(dataset, count):
    return list(itertools.islice(iter(dataset), count))


def test_batch_contents_labels_by_name_and_weights(write_files, make_config):
    write_files([10, 7])
    config = make_config(
        tasks={
            "label.a": {"pos_downsampling_rate": 0.5, "neg_downsampling_rate": 0.25},
            "label.b": {},
            "label.c": {},
        }
    )
    dataset = build_dataset(config, options=EVALUATE, tasks=TASKS)
    batches = list(dataset)
    assert [batch.batch_size for batch in batches] == [4, 4, 4, 4, 1]
    for batch in batches:
        ids = np.array(ids_of(batch))
        expected = rows_for(ids)
        torch.testing.assert_close(
            batch.inputs.continuous_features, torch.from_numpy(expected["cont"])
        )
        assert batch.inputs.binary_features.tolist() == expected["bin"].tolist()
        assert batch.inputs.discrete_features.tolist() == expected["disc"].tolist()
        torch.testing.assert_close(
            batch.inputs.user_embedding, torch.from_numpy(expected["user.emb"])
        )
        assert batch.inputs.user_eng_embedding is None and batch.inputs.author_embedding is None
        # Columns in model task order, matched by name: label.c then label.a.
        labels = np.stack([ids % 7 == 0, ids % 3 == 0], axis=1).astype(np.float32)
        assert batch.labels.tolist() == labels.tolist()
        weights = np.stack([np.ones(len(ids)), np.where(ids % 3 == 0, 2.0, 4.0)], axis=1)
        assert batch.weights.tolist() == weights.tolist()
        assert batch.extra_features["meta__user_id"].flatten().tolist() == (ids * 7919).tolist()
        assert batch.sparse_features is None
    assert sorted(itertools.chain.from_iterable(map(ids_of, batches))) == list(range(17))
    # Training stays in the sampled space (the model's calibration maps back): weights of 1.
    training = next(iter(build_dataset(config, options=TRAIN, tasks=TASKS)))
    assert training.weights.tolist() == [[1.0, 1.0]] * 4


def test_only_needed_columns_are_read(write_files, make_config):
    write_files([3])
    config = make_config(preprocess={"truncate_and_slice": {"continuous_feature_truncation": 4}})
    dataset = build_dataset(config, options=TRAIN, tasks=["label.a"])
    assert set(dataset.columns_read) == {
        "cont[0:5]",
        "bin[0:5]",
        "bin[5:6]",
        "disc",
        "user.emb",
        "meta.user_id",
        "meta.tweet_id",
        "label.a",
    }


def test_training_repeats_and_each_epoch_holds_every_example_once(write_files, make_config):
    write_files([10, 7])
    dataset = build_dataset(make_config(), options=TRAIN, tasks=TASKS, seed=3)
    stream = list(itertools.chain.from_iterable(map(ids_of, take(dataset, 17))))
    assert all(len(ids_of(batch)) == 4 for batch in take(dataset, 3))
    for epoch in range(4):
        assert sorted(stream[epoch * 17 : (epoch + 1) * 17]) == list(range(17))
    assert stream[:17] != stream[17:34]  # reshuffled every epoch


def test_seed_fixes_the_order(write_files, make_config):
    write_files([10, 7])
    orders = [
        [
            ids_of(batch)
            for batch in build_dataset(make_config(), options=EVALUATE, tasks=TASKS, seed=seed)
        ]
        for seed in (1, 1, 2)
    ]
    assert orders[0] == orders[1] != orders[2]


def test_without_example_shuffling_rows_stay_in_row_group_order(write_files, make_config):
    write_files([8, 8])
    config = make_config(examples_shuffle_buffer_size=0)
    for batch in build_dataset(config, options=EVALUATE, tasks=TASKS):
        ids = ids_of(batch)
        assert ids == list(range(ids[0], ids[0] + 4)) and ids[0] % 4 == 0


def test_a_pass_without_labels_keeps_every_row_in_file_order(write_files, make_config):
    write_files([10, 7])
    config = make_config(preprocess={"truncate_and_slice": {"continuous_feature_truncation": 3}})
    unlabelled = ReadOptions(
        shuffle=False, repeat=False, with_labels=False, weigh_by_sampling_rates=False
    )
    batches = list(build_dataset(config, options=unlabelled, tasks=TASKS))
    assert list(itertools.chain.from_iterable(map(ids_of, batches))) == list(range(17))
    assert batches[-1].batch_size == 1
    for batch in batches:
        assert batch.labels.shape == (batch.batch_size, 0)
        assert batch.weights.shape == (batch.batch_size, 0)
        assert batch.inputs.continuous_features.shape == (batch.batch_size, 3)
        assert ROW_FILE not in batch.extra_features


def test_inference_reads_every_row_once_with_labels_weights_and_its_place(write_files, make_config):
    paths = write_files([10, 7], row_group_size=3)
    config = make_config(
        tasks={"label.a": {"pos_downsampling_rate": 0.5}, "label.b": {}, "label.c": {}},
        # Would drop negatives; inference keeps every row.
        preprocess={"downsample_negatives": {"batch_multiplier": 2, "num_engagements": 2}},
    )
    dataset = build_dataset(config, options=INFERENCE, tasks=TASKS)
    batches = list(dataset)
    assert dataset.file_paths == paths
    ids = list(itertools.chain.from_iterable(map(ids_of, batches)))
    assert ids == list(range(17))
    files = torch.cat([batch.extra_features[ROW_FILE] for batch in batches]).tolist()
    rows = torch.cat([batch.extra_features[ROW_IN_FILE] for batch in batches]).tolist()
    assert files == [0] * 10 + [1] * 7
    assert rows == [*range(10), *range(7)]
    labels = torch.cat([batch.labels for batch in batches])
    weights = torch.cat([batch.weights for batch in batches])
    expected_c = [float(i % 7 == 0) for i in ids]
    expected_a = [float(i % 3 == 0) for i in ids]
    assert labels[:, 0].tolist() == expected_c and labels[:, 1].tolist() == expected_a
    # label.a's positives were kept at rate 0.5: they weigh 2, as in evaluation.
    assert weights[:, 1].tolist() == [2.0 if a else 1.0 for a in expected_a]


def test_row_ids_of_two_ranks_sharing_row_groups_cover_the_file_once(write_files, make_config):
    (path,) = write_files([17], row_group_size=3)
    config = make_config(cache=True)
    seen = []
    for rank in (0, 1):
        dataset = build_dataset(config, options=INFERENCE, tasks=TASKS, rank=rank, world_size=2)
        assert dataset.file_paths == [path]
        for batch in dataset:
            places = batch.extra_features[ROW_IN_FILE].tolist()
            assert places == ids_of(batch)  # one file: the id is the row
            seen += places
    assert sorted(seen) == list(range(17))


@pytest.mark.parametrize("sizes", [[5, 6, 7], [17]], ids=["files", "row_groups"])
def test_two_ranks_read_disjoint_shares_covering_every_example(write_files, make_config, sizes):
    write_files(sizes, row_group_size=3)
    config = make_config(global_batch_size=4)
    seen = []
    for rank in (0, 1):
        dataset = build_dataset(config, options=EVALUATE, tasks=TASKS, rank=rank, world_size=2)
        assert dataset.batch_size == 2
        seen.append(list(itertools.chain.from_iterable(map(ids_of, dataset))))
    for rank in (0, 1):
        dataset = build_dataset(config, options=EVALUATE, tasks=TASKS, rank=rank, world_size=2)
        assert dataset.batches_per_pass == len(list(dataset))
    assert not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == list(range(sum(sizes)))
    # Training: each rank's stream covers its own share once per epoch.
    for rank in (0, 1):
        dataset = build_dataset(config, options=TRAIN, tasks=TASKS, rank=rank, world_size=2)
        share = dataset.rows_per_epoch
        stream = list(itertools.chain.from_iterable(map(ids_of, take(dataset, share))))
        assert sorted(stream[:share]) == sorted(seen[rank])


def test_files_are_shared_out_balanced_by_rows(write_files, make_config):
    # Every other file would give one rank 20 rows and the other 2.
    write_files([10, 1, 1, 1, 9], row_group_size=3)
    config = make_config(global_batch_size=4)
    rows = [
        build_dataset(config, options=TRAIN, tasks=TASKS, rank=rank, world_size=2).rows_per_epoch
        for rank in (0, 1)
    ]
    assert rows == [11, 11]


def test_global_batch_must_divide_by_world_size(write_files, make_config):
    write_files([4])
    with pytest.raises(DatasetError, match=r"global_batch_size: 5 does not divide by the 2 ranks"):
        build_dataset(make_config(global_batch_size=5), options=TRAIN, tasks=TASKS, world_size=2)


def test_too_few_row_groups_for_the_ranks_is_an_error(write_files, make_config):
    write_files([3], row_group_size=4)
    with pytest.raises(DatasetError, match=r"1 row groups in all cannot be shared among 2 ranks"):
        build_dataset(make_config(), options=TRAIN, tasks=TASKS, rank=0, world_size=2)


@pytest.mark.parametrize("consumed", [1, 3, 5, 9])
def test_resume_continues_with_the_next_unseen_batch(write_files, make_config, consumed):
    write_files([10, 7, 6], row_group_size=3)
    config = make_config(examples_shuffle_buffer_size=5, file_batch_size=2)
    reference = [
        ids_of(batch) for batch in take(build_dataset(config, options=TRAIN, tasks=TASKS), 14)
    ]
    first = build_dataset(config, options=TRAIN, tasks=TASKS)
    assert [ids_of(batch) for batch in take(first, consumed)] == reference[:consumed]
    state = first.state_dict()
    resumed = build_dataset(config, options=TRAIN, tasks=TASKS)
    resumed.load_state_dict(state)
    assert [ids_of(batch) for batch in take(resumed, 14 - consumed)] == reference[consumed:]


def test_a_moved_data_folder_still_resumes_exactly(tmp_path, write_files, make_config):
    write_files([10, 7], row_group_size=3)
    config = make_config()
    reference = [
        ids_of(batch) for batch in take(build_dataset(config, options=TRAIN, tasks=TASKS), 6)
    ]
    first = build_dataset(config, options=TRAIN, tasks=TASKS)
    take(first, 2)
    (tmp_path / "data").rename(tmp_path / "moved")
    moved = make_config(inputs=str(tmp_path / "moved" / "*.parquet"))
    resumed = build_dataset(moved, options=TRAIN, tasks=TASKS)
    resumed.load_state_dict(first.state_dict())
    assert [ids_of(batch) for batch in take(resumed, 4)] == reference[2:6]


def test_state_recorded_before_read_ahead_batches_resumes_before_them(write_files, make_config):
    # A train pipeline holds batches it has not trained on yet; the trainer's position tracker
    # records the state as each batch leaves the loader, so a checkpoint resumes before them.
    write_files([10, 7])
    config = make_config()
    reference = [
        ids_of(batch) for batch in take(build_dataset(config, options=TRAIN, tasks=TASKS), 6)
    ]
    dataset = build_dataset(config, options=TRAIN, tasks=TASKS)
    tracker = PositionTrackingIterator(dataset)
    take(tracker, 4)
    resumed = build_dataset(config, options=TRAIN, tasks=TASKS)
    resumed.load_state_dict(tracker.position_after(2))
    assert [ids_of(batch) for batch in take(resumed, 4)] == reference[2:6]


def test_evaluation_resumes_mid_pass_and_the_next_pass_starts_over(write_files, make_config):
    write_files([10, 7])
    config = make_config()
    dataset = build_dataset(config, options=EVALUATE, tasks=TASKS)
    head = [ids_of(batch) for batch in take(dataset, 2)]
    resumed = build_dataset(config, options=EVALUATE, tasks=TASKS)
    resumed.load_state_dict(dataset.state_dict())
    rest = [ids_of(batch) for batch in resumed]
    assert sorted(itertools.chain.from_iterable(head + rest)) == list(range(17))
    assert sorted(itertools.chain.from_iterable(map(ids_of, resumed))) == list(range(17))


def test_state_from_another_share_is_refused(write_files, make_config):
    write_files([10, 7])
    state = build_dataset(
        make_config(), options=TRAIN, tasks=TASKS, rank=0, world_size=2
    ).state_dict()
    other = build_dataset(make_config(), options=TRAIN, tasks=TASKS)
    with pytest.raises(DatasetError, match=r"saved with world_size=2, this loader has 1"):
        other.load_state_dict(state)


def test_reader_and_batch_threads_do_not_change_the_batches(write_files, make_config):
    write_files([10, 7, 9], row_group_size=2)
    orders = []
    for threads in (1, 3):
        config = make_config(interleave_num_parallel_calls=threads, map_num_parallel_calls=threads)
        orders.append(
            [ids_of(batch) for batch in take(build_dataset(config, options=TRAIN, tasks=TASKS), 20)]
        )
    assert orders[0] == orders[1]


def test_cache_keeps_decoded_row_groups(write_files, make_config):
    write_files([10, 7])
    plain = take(build_dataset(make_config(), options=TRAIN, tasks=TASKS), 10)
    cached_dataset = build_dataset(make_config(cache=True), options=TRAIN, tasks=TASKS)
    cached = take(cached_dataset, 10)
    assert list(map(ids_of, plain)) == list(map(ids_of, cached))
    assert cached_dataset._reader.cached_row_groups == 5


def test_large_embedding_ids_and_extra_features(write_files, make_config):
    write_files([6])
    tables = LargeEmbeddingsConfig.model_validate(
        {
            "tables": [{"name": "meta__user_id", "num_embeddings": 97, "embedding_dim": 4}],
            "optimizer": {"init_learning_rate": 0.1},
        }
    )
    config = make_config(
        seg_dense_schema={"features": ["ts.served"]},
        preprocess={
            "extract_features": {
                "extract_feature_table": [
                    {"name": "disc2", "source_tensor": "discrete", "index": 2}
                ]
            }
        },
    )
    batch = next(
        iter(build_dataset(config, options=INFERENCE, tasks=TASKS, large_embeddings=tables))
    )
    ids = np.array(ids_of(batch))
    assert batch.sparse_features.keys() == ["meta__user_id"]
    assert batch.sparse_features.values().tolist() == hash_ids(ids * 7919, 97).tolist()
    assert batch.sparse_features.lengths().tolist() == [1] * len(ids)
    assert set(batch.extra_features) == {
        "meta__user_id",
        "meta__tweet_id",
        "ts.served",
        "disc2",
        ROW_FILE,
        ROW_IN_FILE,
    }
    assert batch.extra_features["disc2"].flatten().tolist() == (ids * 10 + 2).tolist()


def test_large_table_needs_its_renamed_feature(write_files, make_config):
    write_files([4])
    tables = LargeEmbeddingsConfig.model_validate(
        {
            "tables": [{"name": "meta__author_id", "num_embeddings": 9, "embedding_dim": 4}],
            "optimizer": {"init_learning_rate": 0.1},
        }
    )
    with pytest.raises(
        ValueError, match=r"tables.meta__author_id: a table reads the renamed feature"
    ):
        build_dataset(make_config(), options=TRAIN, tasks=TASKS, large_embeddings=tables)


@pytest.mark.parametrize(
    ("downcast", "message"),
    [
        ({"meta__user_id": "float16"}, "feeds a large embedding table; its ids must stay int64"),
        ({"continuous": "uint8"}, "uint8 cannot hold the values of this float_list feature"),
        ({"nothing": "bool"}, "no feature of that name is read"),
    ],
)
def test_downcasts_that_would_corrupt_values_are_refused(
    write_files, make_config, downcast, message
):
    write_files([4])
    tables = LargeEmbeddingsConfig.model_validate(
        {
            "tables": [{"name": "meta__user_id", "num_embeddings": 9, "embedding_dim": 4}],
            "optimizer": {"init_learning_rate": 0.1},
        }
    )
    config = make_config(preprocess={"downcast": {"features": downcast}})
    with pytest.raises(ValueError, match=f"preprocess.downcast.features.*{message}"):
        build_dataset(config, options=TRAIN, tasks=TASKS, large_embeddings=tables)


def test_downsample_and_rectify_in_the_loader(write_files, make_config):
    write_files([16], row_group_size=8)
    config = make_config(
        examples_shuffle_buffer_size=0,
        preprocess={
            "downsample_negatives": {
                "batch_multiplier": 2,
                "engagements_list": ["label.a"],
                "num_engagements": 2,
            },
            # label.a of id i is engaged at i * 2000 ms after serving: rectification with a
            # 0.005 h (18 s) window keeps ids below 9.
            "rectify_labels": {
                "label_rectification_window_in_hours": 0.005,
                "served_timestamp_field": "ts.served",
                "impressed_timestamp_field": "ts.impressed",
                "label_to_engaged_timestamp_field": {"label.a": "ts.engaged_a"},
            },
        },
    )
    batches = list(build_dataset(config, options=INFERENCE, tasks=TASKS))
    assert [batch.batch_size for batch in batches] == [4] * 4  # no downsampling at inference
    batches = list(build_dataset(config, options=EVALUATE, tasks=TASKS))
    assert [batch.batch_size for batch in batches] == [4, 4]
    # Each batch reads one row group of 8 rows in order; positives on label.a come first.
    first, second = sorted(batches, key=lambda batch: min(ids_of(batch)))
    assert ids_of(first) == [0, 3, 6, 1]
    assert ids_of(second) == [9, 12, 15, 8]
    # Negatives stand for the 5 read: weight (8 - 3) / (4 - 3) on every task.
    for batch in (first, second):
        assert batch.weights.tolist() == [[1.0, 1.0]] * 3 + [[5.0, 5.0]]
    assert first.labels[:, 1].tolist() == [1.0, 1.0, 1.0, 0.0]
    # Rectified after downsampling: 9, 12 and 15 were engaged too late.
    assert second.labels[:, 1].tolist() == [0.0, 0.0, 0.0, 0.0]


def write_rows(tmp_path, schema_path, values, name="x.parquet", row_group_size=4) -> str:
    (tmp_path / "data").mkdir(exist_ok=True)
    path = str(tmp_path / "data" / name)
    options = WriteOptions(row_group_size=row_group_size)
    with SegDenseWriter(path, load_schema(schema_path), options) as writer:
        writer.write(values)
    return path


def test_nan_and_inf_in_continuous_are_counted_logged_and_passed_on(
    tmp_path, make_config, schema_path, caplog
):
    values = rows_for(np.arange(8))
    values["cont"][1, 2] = np.nan
    values["cont"][2, 3] = np.inf
    values["cont"][6, 0] = -np.inf
    path = write_rows(tmp_path, schema_path, values)
    dataset = build_dataset(make_config(), options=INFERENCE, tasks=TASKS)
    continuous = torch.cat([batch.inputs.continuous_features for batch in dataset])
    assert torch.isnan(continuous[1, 2]) and torch.isinf(continuous[2, 3])
    assert dataset.non_finite_rows == 3
    # Once per file (for whichever of its row groups is read first).
    assert caplog.text.count("hold NaN or inf") == 1
    assert re.search(
        rf"{re.escape(path)}: column 'cont': [12] rows of row group [01] hold NaN or inf, which "
        r"the model replaces by 0",
        caplog.text,
    )


@pytest.mark.parametrize("label", [2, -1, 1_000_000])
def test_a_label_other_than_0_or_1_names_the_file_column_and_row(
    tmp_path, make_config, schema_path, label
):
    values = rows_for(np.arange(8))
    values["label.a"][5, 0] = label
    path = write_rows(tmp_path, schema_path, values)
    dataset = build_dataset(make_config(), options=TRAIN, tasks=TASKS)
    with pytest.raises(DataFileError) as error:
        take(dataset, 4)
    assert str(error.value) == (
        f"{path}: column 'label.a': 1 rows of row group 1 hold a label other than 0 or 1, the "
        f"first at row 5 of the file ({label})"
    )
    # Skipped with ignore_data_errors, as a row group that does not decode.
    dataset = build_dataset(make_config(ignore_data_errors=True), options=EVALUATE, tasks=TASKS)
    assert sorted(itertools.chain.from_iterable(map(ids_of, dataset))) == [0, 1, 2, 3]
    assert dataset.skipped_row_groups == 1


def test_nan_in_an_input_nothing_cleans_names_the_file_and_column(
    tmp_path, make_config, schema_path
):
    values = rows_for(np.arange(4))
    values["user.emb"][3, 1] = np.nan
    path = write_rows(tmp_path, schema_path, values)
    with pytest.raises(DataFileError) as error:
        list(build_dataset(make_config(), options=EVALUATE, tasks=TASKS))
    assert str(error.value) == (
        f"{path}: column 'user.emb': 1 rows of row group 0 hold NaN or inf, which nothing in "
        "the model cleans, the first at row 3 of the file"
    )


def test_no_matching_files_names_the_pattern(make_config):
    with pytest.raises(FileSelectionError, match=r"no file matches the glob '.*\*\.parquet'"):
        build_dataset(make_config(), options=TRAIN, tasks=TASKS)


def _plain_copy(source, target, drop=None, replace=None):
    table = pq.read_table(source)
    if drop:
        table = table.drop_columns([drop])
    if replace:
        name, column = replace
        table = table.set_column(table.column_names.index(name), name, column)
    pq.write_table(table.replace_schema_metadata(None), target)


def test_file_missing_a_column_is_named(write_files, make_config, tmp_path):
    (path,) = write_files([4], folder="source", chunk_size=100)
    (tmp_path / "data").mkdir()
    _plain_copy(path, tmp_path / "data" / "bad.parquet", drop="disc")
    with pytest.raises(
        DataFileError, match=r"bad\.parquet: column 'disc' \(feature 'disc'\) is missing"
    ):
        build_dataset(make_config(), options=TRAIN, tasks=TASKS)


def test_file_with_a_wrong_length_is_named(write_files, make_config, tmp_path):
    (path,) = write_files([2], folder="source", chunk_size=100)
    (tmp_path / "data").mkdir()
    short = pa.array([[1, 2, 3], [4, 5, 6]], pa.list_(pa.int64()))
    _plain_copy(path, tmp_path / "data" / "bad.parquet", replace=("disc", short))
    dataset = build_dataset(make_config(), options=EVALUATE, tasks=TASKS)
    with pytest.raises(
        DataFileError, match=r"bad\.parquet: column 'disc': row 0 .* holds 3 values, expected 4"
    ):
        list(dataset)


def test_unreadable_file_fails_or_is_skipped_and_counted(write_files, make_config, tmp_path):
    write_files([5, 6])
    (tmp_path / "data" / "part-00002.parquet").write_bytes(b"garbage")
    with pytest.raises(DataFileError, match=r"cannot read Parquet file .*part-00002\.parquet"):
        build_dataset(make_config(), options=TRAIN, tasks=TASKS)
    dataset = build_dataset(make_config(ignore_data_errors=True), options=EVALUATE, tasks=TASKS)
    assert len(dataset.skipped_files) == 1 and dataset.skipped_files[0].endswith(
        "part-00002.parquet"
    )
    assert sorted(itertools.chain.from_iterable(map(ids_of, dataset))) == list(range(11))


def test_row_group_failing_at_read_time_is_skipped_when_ignoring_errors(
    write_files, make_config, tmp_path
):
    (path,) = write_files([4], folder="source", row_group_size=2, chunk_size=100)
    write_files([3])
    # Same footer, rows of the wrong length: fails only when its row group is decoded.
    short = pa.array([[1, 2, 3]] * 4, pa.list_(pa.int64()))
    _plain_copy(path, tmp_path / "data" / "part-00009.parquet", replace=("disc", short))
    dataset = build_dataset(make_config(ignore_data_errors=True), options=EVALUATE, tasks=TASKS)
    assert sorted(itertools.chain.from_iterable(map(ids_of, dataset))) == [0, 1, 2]
    assert dataset.skipped_row_groups == 1


def test_input_spec_comes_from_the_plan_without_reading_the_schema_again(
    write_files, make_config, schema_path
):
    write_files([4])
    config = make_config()
    dataset = build_dataset(config, options=TRAIN, tasks=TASKS)
    expected = build_input_spec(config, TASKS)
    os.remove(schema_path)
    assert dataset.input_spec == expected


def test_weighing_by_sampling_rates_needs_labels():
    with pytest.raises(ValueError, match="weigh_by_sampling_rates needs with_labels"):
        ReadOptions(shuffle=False, repeat=False, with_labels=False, weigh_by_sampling_rates=True)


def test_a_file_with_0_rows_is_skipped_naming_it(write_files, make_config, tmp_path, caplog):
    paths = write_files([5, 6, 0])
    # Two ranks, two files with rows: each rank gets one, as without the empty file.
    shares = [
        build_dataset(make_config(), options=EVALUATE, tasks=TASKS, rank=rank, world_size=2)
        for rank in range(2)
    ]
    assert f"skipping 1 files with 0 rows: {paths[2]}" in caplog.text
    ids = [sorted(itertools.chain.from_iterable(map(ids_of, share))) for share in shares]
    assert sorted(ids) == [list(range(5)), list(range(5, 11))]
    for path in paths[:2]:
        os.remove(path)
    with pytest.raises(DatasetError) as error:
        build_dataset(make_config(), options=TRAIN, tasks=TASKS)
    assert str(error.value) == f"every file read has 0 rows: {paths[2]}"


def _read_on_ranks(config, world_size, batches, states=None):
    """Each rank's ids for ``batches`` batches, and its state after them; ``states`` (the old
    ranks' states) resume each rank resharded."""
    ids, after = [], []
    for rank in range(world_size):
        dataset = build_dataset(
            config, options=TRAIN, tasks=TASKS, rank=rank, world_size=world_size, seed=5
        )
        if states is not None:
            dataset.load_resharded_state_dicts(states)
        ids.append([i for batch in take(dataset, batches) for i in ids_of(batch)])
        after.append(dataset.state_dict())
    return ids, after


@pytest.mark.parametrize(
    ("sizes", "old", "new", "batches"),
    [([10, 7, 6, 9], 2, 1, 4), ([10, 7, 6, 9], 1, 2, 3), ([23], 2, 1, 4)],
)
def test_a_resume_on_another_number_of_ranks_finishes_the_epoch_once_per_window(
    write_files, make_config, sizes, old, new, batches
):
    write_files(sizes, row_group_size=3)
    total = sum(sizes)
    # A window is 4 rows rounded up to whole row groups of 3: 6 rows.
    config = make_config(examples_shuffle_buffer_size=4, file_batch_size=2)
    before, states = _read_on_ranks(config, old, batches)
    probe = build_dataset(config, options=TRAIN, tasks=TASKS, world_size=new, seed=5)
    report = probe.load_resharded_state_dicts(states)
    assert report.epoch == 0 and report.rows_in_epoch == total
    assert report.rows_skipped + report.rows_remaining == total
    assert report.rows_skipped > 0 and report.rows_read_again > 0  # both cases are met
    # Enough batches on every new rank to pass the end of the epoch.
    after, new_states = _read_on_ranks(config, new, total, states)
    seen = [i for ids in before for i in ids]
    for rank, ids in enumerate(after):
        dataset = build_dataset(
            config, options=TRAIN, tasks=TASKS, rank=rank, world_size=new, seed=5
        )
        seen += ids[: dataset.load_resharded_state_dicts(states).rows_for_this_rank]
        # Past the rest of the epoch, the rank's own share starts epoch 1.
        assert new_states[rank]["epoch"] >= 1
    counts = np.bincount(seen, minlength=total)
    assert counts.min() == 1  # no example skipped
    # Only rows of windows partly read before the resume come twice, and no more of them.
    assert counts.sum() - total == report.rows_read_again
    assert counts.max() <= 2
    # The resharded position survives a same-size resume mid-way through the rest.
    first = _resharded(config, new, states)
    head = [ids_of(batch) for batch in take(first, 2)]
    resumed = build_dataset(config, options=TRAIN, tasks=TASKS, world_size=new, seed=5)
    resumed.load_state_dict(first.state_dict())
    assert head + [ids_of(b) for b in take(resumed, 3)] == [
        ids_of(b) for b in take(_resharded(config, new, states), 5)
    ]


def _resharded(config, world_size, states):
    dataset = build_dataset(config, options=TRAIN, tasks=TASKS, world_size=world_size, seed=5)
    dataset.load_resharded_state_dicts(states)
    return dataset
