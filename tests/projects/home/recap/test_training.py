"""Multi-process training on CPU over Gloo: sharded vs unsharded, resume, accumulation, LRs."""

import json
from pathlib import Path

import pytest
import torch

from projects.home.recap.data.parquet_format import WriteOptions
from projects.home.recap.job_folder import JobFolder
from projects.home.recap.tools.generate_random_data import generate_dataset
from projects.home.recap.train import hold_save_dir, save_dir_lock
from tests.helpers.multiprocess import run_on_ranks
from tests.projects.home.recap.distributed_jobs import (
    TASKS,
    fail_while_checkpointing,
    full_parameters,
    tiny_config,
    train_job,
    train_job_recording_rows,
    train_job_statistics,
    train_job_stopped_and_resumed,
)
from tml.core.errors import UserInputError

pytestmark = pytest.mark.slow

# Float32 sums in a different order (two half-batches and an all-reduce vs one batch).
TOLERANCE = {"rtol": 1e-5, "atol": 1e-6}


def logged(save_dir: Path, name: str = "train") -> list[dict]:
    return [json.loads(line) for line in (save_dir / f"{name}.jsonl").read_text().splitlines()]


def losses(save_dir: Path) -> list[float]:
    return [record["loss"] for record in logged(save_dir)]


def assert_same_parameters(first: dict, second: dict) -> None:
    assert first.keys() == second.keys()
    for name in first:
        torch.testing.assert_close(first[name], second[name], **TOLERANCE, msg=name)


FROZEN = [
    "optimizer.multi_task_learning_rates.backbone_learning_rate={constant: 0.0}",
    *(
        f"optimizer.multi_task_learning_rates.tower_learning_rates.{task}={{constant: 0.0}}"
        for task in TASKS
    ),
    "model.large_embeddings.optimizer.learning_rate={constant: 0.0}",
]


@pytest.fixture(scope="module")
def initial_weights(tmp_path_factory) -> Path:
    """A checkpoint of freshly initialised weights (one step at learning rate 0).

    Tables are initialised where sharding places them, so runs on different numbers of ranks
    start from the same weights only through a shared initial checkpoint.
    """
    save_dir = tmp_path_factory.mktemp("initial")
    config = tiny_config(save_dir, "training.num_train_steps=1", *FROZEN)
    run_on_ranks(train_job, 1, config, workdir=save_dir)
    return save_dir


def test_two_sharded_ranks_train_like_one_rank(tmp_path, initial_weights):
    start = f"training.initial_checkpoint_dir={initial_weights}"
    logged_tables = "model.large_embeddings.tables_to_log=[meta__user_id, meta__author_id]"
    one = tiny_config(tmp_path / "one", start, logged_tables)
    two = tiny_config(tmp_path / "two", start, logged_tables)
    assert run_on_ranks(train_job, 1, one, workdir=tmp_path) == [4]
    assert run_on_ranks(train_job, 2, two, workdir=tmp_path) == [4, 4]
    assert losses(tmp_path / "two") == pytest.approx(losses(tmp_path / "one"), rel=1e-5)
    assert_same_parameters(full_parameters(one, 4), full_parameters(two, 4))
    # Table norms logged over the shards of both ranks equal the norms of the whole tables.
    final = full_parameters(two, 4)
    for table in ("meta__user_id", "meta__author_id"):
        expected = final[f"model.large_embeddings.ebc.embedding_bags.{table}.weight"].norm()
        assert logged(tmp_path / "two")[-1][f"norm/{table}"] == pytest.approx(float(expected))
        assert logged(tmp_path / "one")[-1][f"norm/{table}"] == pytest.approx(float(expected))


def test_batch_norm_statistics_are_the_same_on_every_rank_and_in_the_checkpoint(tmp_path):
    # Each rank normalises its own half of every batch, so its running statistics differ from
    # the other rank's unless the trainer averages them (after every step).
    config = tiny_config(
        tmp_path / "bn",
        "model.backbone.mlp_config={layer_sizes: [16, 16], final_layer_activation: true, "
        "batch_norm: {affine: true, momentum: 0.5}}",
        "model.featurization_config={double_norm_log_config: {batch_norm_config: "
        "{affine: false, momentum: 0.5}}}",
    )
    (step_0, rank_0), (step_1, rank_1) = run_on_ranks(
        train_job_statistics, 2, config, workdir=tmp_path
    )
    assert step_0 == step_1 == 4
    assert len(rank_0) == 4  # the featurization's and the backbone's mean and variance
    saved = full_parameters(config, 4)
    for name, statistic in rank_0.items():
        torch.testing.assert_close(rank_1[name], statistic, rtol=0, atol=0, msg=name)
        saved_name = name.removeprefix("_dmp_wrapped_module.").removeprefix("module.")
        torch.testing.assert_close(saved[saved_name], statistic, rtol=0, atol=0, msg=name)
    # Trained statistics, not the initial ones (mean 0, variance 1).
    means = [statistic for name, statistic in rank_0.items() if name.endswith("mean")]
    assert any(not torch.all(mean == 0) for mean in means)


def test_warm_start_loads_weights_and_restarts_its_own_schedule(tmp_path, initial_weights):
    config = tiny_config(
        tmp_path / "warm", f"training.initial_checkpoint_dir={initial_weights}", *FROZEN
    )
    assert run_on_ranks(train_job, 2, config, workdir=tmp_path) == [4, 4]
    records = logged(tmp_path / "warm")
    assert [record["step"] for record in records] == [1, 2, 3, 4]
    initial = full_parameters(tiny_config(initial_weights), 1)
    assert_same_parameters(full_parameters(config, 4), initial)

    ramping = tiny_config(tmp_path / "ramp", f"training.initial_checkpoint_dir={initial_weights}")
    run_on_ranks(train_job, 1, ramping, workdir=tmp_path)
    first = logged(tmp_path / "ramp")[0]
    assert first["step"] == 1 and first["lr/backbone"] == 0.0  # the ramp starts again at step 0
    trained = full_parameters(ramping, 4)
    assert any(not torch.equal(trained[name], initial[name]) for name in initial)


def test_each_group_follows_its_schedule_and_a_tower_at_zero_stays(tmp_path, initial_weights):
    frozen, stepped = TASKS[0], TASKS[1]
    config = tiny_config(
        tmp_path / "lr",
        f"training.initial_checkpoint_dir={initial_weights}",
        f"optimizer.multi_task_learning_rates.tower_learning_rates.{frozen}={{constant: 0.0}}",
        f"optimizer.multi_task_learning_rates.tower_learning_rates.{stepped}="
        "{piecewise_constant: {learning_rate_boundaries: [1, 3], "
        "learning_rate_values: [0.1, 0.02, 0.003]}}",
        "model.large_embeddings.optimizer.learning_rate="
        "{linear_ramp_to_cosine: {learning_rate: 0.4, final_learning_rate: 0.1, "
        "num_ramp_steps: 1, final_num_steps: 3}}",
    )
    run_on_ranks(train_job, 2, config, workdir=tmp_path)
    records = {record["step"]: record for record in logged(tmp_path / "lr")}
    # The line logged after step k holds the rates step k used: schedule(k - 1).
    assert [records[k][f"lr/tower/{stepped}"] for k in (1, 2, 3, 4)] == [0.1, 0.02, 0.02, 0.003]
    assert [records[k]["lr/backbone"] for k in (1, 2, 3, 4)] == [0.0, 0.005, 0.01, 0.01]
    assert [records[k]["lr/large_embeddings_fused"] for k in (1, 2, 3)] == pytest.approx(
        [0.0, 0.4, 0.25]
    )
    assert all(records[k][f"lr/tower/{frozen}"] == 0.0 for k in records)

    initial = full_parameters(tiny_config(initial_weights), 1)
    final = full_parameters(config, 4)
    frozen_key = f".{frozen.replace('.', '__')}."
    stepped_key = f".{stepped.replace('.', '__')}."
    frozen_names = [name for name in final if frozen_key in name]
    assert frozen_names
    for name in frozen_names:
        torch.testing.assert_close(final[name], initial[name], rtol=0, atol=0)
    assert any(not torch.equal(final[name], initial[name]) for name in final if stepped_key in name)


def test_stop_and_resume_equals_straight_through(tmp_path, initial_weights):
    # Stops past the pipeline's read-ahead, and resumes twice (from a checkpoint written after
    # a resume), so every data position saved is checked.
    start = f"training.initial_checkpoint_dir={initial_weights}"
    length = ("training.num_train_steps=10", "training.checkpoint_every_n=3")
    straight = tiny_config(tmp_path / "straight", start, *length)
    run_on_ranks(train_job, 2, straight, workdir=tmp_path)

    stopped = tiny_config(tmp_path / "stopped", start, *length, "training.num_train_steps=6")
    assert run_on_ranks(train_job, 2, stopped, workdir=tmp_path) == [6, 6]
    torn = tmp_path / "stopped" / "checkpoints" / "step_7"
    torn.mkdir()
    (torn / "__0_0.distcp").write_bytes(b"half a write")
    # As a job killed at step 8 leaves its log: steps past its newest checkpoint, the last
    # record cut short. The resumed job trains them again and logs each step once.
    with (tmp_path / "stopped" / "train.jsonl").open("a") as log:
        log.write('{"step": 7, "loss": 1.0}\n{"step": 8, "loss": 1.0}\n{"step": 9, "lo')
    once = tiny_config(tmp_path / "stopped", start, *length, "training.num_train_steps=8")
    assert run_on_ranks(train_job, 2, once, workdir=tmp_path) == [8, 8]
    assert not torn.exists()
    resumed = tiny_config(tmp_path / "stopped", start, *length)
    assert run_on_ranks(train_job, 2, resumed, workdir=tmp_path) == [10, 10]

    assert [r["step"] for r in logged(tmp_path / "stopped")] == list(range(1, 11))
    assert losses(tmp_path / "stopped") == pytest.approx(losses(tmp_path / "straight"), rel=1e-6)
    assert_same_parameters(full_parameters(resumed, 10), full_parameters(straight, 10))

    # Already at num_train_steps: the job ends at once, training nothing.
    assert run_on_ranks(train_job, 2, resumed, workdir=tmp_path) == [10, 10]
    assert len(logged(tmp_path / "stopped")) == 10


# The user table trains with row-wise Adagrad on a schedule of its own; the author table keeps
# the collection's SGD (0.5). A checkpoint after every step keeps the first step's weights.
TABLE_OPTIMIZERS = (
    "model.large_embeddings.tables.0.optimizer={init_learning_rate: 0.2, rowwise_adagrad: {}, "
    "learning_rate: {piecewise_constant: {learning_rate_boundaries: [2], "
    "learning_rate_values: [0.2, 0.05]}}}",
    "training.checkpoint_every_n=1",
)
USER_TABLE = "model.large_embeddings.ebc.embedding_bags.meta__user_id.weight"


def test_table_optimizers_resume_exactly_and_train_alike_on_one_and_two_ranks(
    tmp_path, initial_weights
):
    start = f"training.initial_checkpoint_dir={initial_weights}"
    one = tiny_config(tmp_path / "one", start, *TABLE_OPTIMIZERS)
    assert run_on_ranks(train_job, 1, one, workdir=tmp_path) == [4]
    # Two ranks, stopped after step 2 and resumed: the accumulators come from the checkpoint.
    stopped = tiny_config(tmp_path / "two", start, *TABLE_OPTIMIZERS, "training.num_train_steps=2")
    two = tiny_config(tmp_path / "two", start, *TABLE_OPTIMIZERS)
    steps = run_on_ranks(train_job_stopped_and_resumed, 2, stopped, two, workdir=tmp_path)
    assert steps == [(2, 4), (2, 4)]

    assert losses(tmp_path / "two") == pytest.approx(losses(tmp_path / "one"), rel=1e-5)
    assert_same_parameters(full_parameters(two, 4), full_parameters(one, 4))
    for records in (logged(tmp_path / "one"), logged(tmp_path / "two")):
        rates = [r["lr/large_embeddings_fused/meta__user_id"] for r in records]
        assert rates == [0.2, 0.2, 0.05, 0.05]
        assert all(r["lr/large_embeddings_fused"] == 0.5 for r in records)

    # Row-wise Adagrad's first step moves every row it looks up by the rate exactly (root mean
    # square over the row): it is the algorithm at work, at its own schedule's rate.
    initial = full_parameters(tiny_config(initial_weights), 1)[USER_TABLE]
    moved = full_parameters(one, 1)[USER_TABLE] - initial
    looked_up = moved.abs().sum(dim=1) > 0
    assert looked_up.sum() >= 8
    step_sizes = moved[looked_up].pow(2).mean(dim=1).sqrt()
    torch.testing.assert_close(step_sizes, torch.full_like(step_sizes, 0.2), rtol=1e-4, atol=0)


def test_gradient_accumulation_equals_a_batch_n_times_larger(tmp_path, initial_weights):
    start = f"training.initial_checkpoint_dir={initial_weights}"
    large = tiny_config(tmp_path / "large", start, "training.num_train_steps=3")
    accumulated = tiny_config(
        tmp_path / "accumulated",
        start,
        "training.num_train_steps=3",
        "train_data.global_batch_size=8",
        "training.gradient_accumulation=2",
        *(
            f"model.large_embeddings.tables.{index}.sharding_types=[data_parallel]"
            for index in range(2)
        ),
    )
    run_on_ranks(train_job, 2, large, workdir=tmp_path)
    run_on_ranks(train_job, 2, accumulated, workdir=tmp_path)
    assert losses(tmp_path / "accumulated") == pytest.approx(losses(tmp_path / "large"), rel=1e-5)
    assert_same_parameters(full_parameters(accumulated, 3), full_parameters(large, 3))


def test_bf16_autocast_trains_close_to_fp32(tmp_path, initial_weights):
    start = f"training.initial_checkpoint_dir={initial_weights}"
    fp32 = tiny_config(tmp_path / "fp32", start)
    bf16 = tiny_config(tmp_path / "bf16", start, "training.bf16_autocast=true")
    run_on_ranks(train_job, 2, fp32, workdir=tmp_path)
    run_on_ranks(train_job, 2, bf16, workdir=tmp_path)
    # bfloat16 keeps 8 bits of mantissa: losses agree to about 1 %, parameters stay float32.
    assert losses(tmp_path / "bf16") == pytest.approx(losses(tmp_path / "fp32"), rel=0.02)
    assert losses(tmp_path / "bf16") != losses(tmp_path / "fp32")
    assert all(p.dtype == torch.float32 for p in full_parameters(bf16, 4).values())


def test_a_model_without_large_tables_trains_in_one_process(tmp_path):
    # Nothing is sharded and one process needs no data parallelism, so torchrec's pipeline
    # traces the whole forward, shape checks included.
    config = tiny_config(
        tmp_path / "dense", "model.large_embeddings=null", "training.num_train_steps=2"
    )
    assert run_on_ranks(train_job, 1, config, workdir=tmp_path) == [2]
    assert len(losses(tmp_path / "dense")) == 2


def test_a_failure_inside_the_trainer_finishes_its_checkpoint_and_closes_its_loggers(tmp_path):
    config = tiny_config(tmp_path / "failing")
    [found] = run_on_ranks(fail_while_checkpointing, 1, config, workdir=tmp_path)
    assert found == {"complete": True, "loggers_open": False}


def test_a_second_job_on_a_save_dir_in_use_stops_with_one_line(tmp_path, single_process_group):
    job = JobFolder(tmp_path / "model")
    with save_dir_lock(job):
        with pytest.raises(UserInputError) as error, hold_save_dir(job, single_process_group):
            pass
        assert error.value.same_on_every_rank
        assert str(error.value).startswith(f"training.save_dir: {job.root} is in use by another")
    with hold_save_dir(job, single_process_group):
        assert job.lock_file.is_file()
    assert not job.lock_file.exists()


def test_resumes_on_1_then_2_ranks_see_every_example_of_the_epoch_once_per_window(tmp_path):
    # 96 examples in 3 files of row groups of 8, windows of 16 rows: an epoch is 6 steps of 16.
    data = tmp_path / "data"
    generate_dataset(
        tiny_config(tmp_path).train_data,
        str(data),
        num_examples=96,
        num_files=3,
        options=WriteOptions(row_group_size=8, chunk_size=8),
        progress=False,
    )
    inputs = [f"train_data.inputs={data}/*.parquet", "train_data.examples_shuffle_buffer_size=12"]
    save_dir = tmp_path / "job"
    seen: list[tuple[str, int]] = []
    read_again = 0
    # 2 ranks to step 3 (each half way through a window), 1 rank to step 5 (still in epoch 0),
    # then 2 ranks past its end.
    for world_size, steps in ((2, 3), (1, 5), (2, 11)):
        config = tiny_config(save_dir, *inputs, f"training.num_train_steps={steps}")
        ranks = run_on_ranks(train_job_recording_rows, world_size, config, workdir=tmp_path)
        for start, step, batches, report in ranks:
            rows = [row for batch in batches[: step - start] for row in batch]
            if report is not None:
                assert report.epoch == 0 and report.old_world_size == 3 - world_size
                # Past the end of epoch 0, only the rest of the epoch counts.
                assert len(rows) >= report.rows_for_this_rank or step < 11
                rows = rows[: report.rows_for_this_rank]
            seen += rows
        # Every new rank reports the same rows read again (those of the whole old job).
        if ranks[0][3] is not None:
            read_again += ranks[0][3].rows_read_again
    counts = {row: seen.count(row) for row in set(seen)}
    assert len(counts) == 96  # no example of the epoch skipped
    # Only rows of windows an old rank had partly read come twice (each rank reports them all).
    assert len(seen) - 96 == read_again
    assert max(counts.values()) <= 2
