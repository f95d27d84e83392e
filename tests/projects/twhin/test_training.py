"""TwHIN trains through tml's trainer: link prediction far above random on a planted graph,
relation vectors that train, 2 sharded ranks equal to 1, stop/resume equal to straight, and an
export that a recap model loads as its pretrained table."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from projects.home.recap.build import build_whole_model as build_recap_model
from projects.home.recap.build import model_input_spec
from projects.home.recap.model.embeddings import load_pretrained_embeddings
from projects.twhin.build import build_whole_model as build_twhin_model
from projects.twhin.evaluation import random_mrr
from projects.twhin.export import TABLES, VECTORS, VocabError, export_model, run_export
from projects.twhin.job_folder import EVAL, TRAIN, TwhinJobFolder
from tests.helpers.multiprocess import run_on_ranks
from tests.projects.home.recap.distributed_jobs import tiny_config as tiny_recap_config
from tests.projects.twhin.jobs import parameters_at, tiny_config, train_job, write_graph
from tml.checkpoint import checkpoint_folder


def records(config, stream):
    path = TwhinJobFolder(config.training.save_dir).metrics_file(stream)
    return [json.loads(line) for line in path.read_text().splitlines()]


def losses(config):
    return {record["step"]: record["loss"] for record in records(config, TRAIN)}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("edges")
    write_graph(folder, tiny_config(folder, folder))
    return folder


@pytest.fixture(scope="module")
def learned(tmp_path_factory, data_dir):
    """120 steps (2.4 epochs) with evaluation at the end."""
    config = tiny_config(
        tmp_path_factory.mktemp("learned"),
        data_dir,
        "training.num_train_steps=120",
        "training.checkpoint_every_n=60",
        "training.num_epochs=3",
    )
    assert train_job(config) == 120
    return config


@pytest.fixture(scope="module")
def straight(tmp_path_factory, data_dir):
    """4 steps on one rank, checkpoints at 2 and 4."""
    config = tiny_config(tmp_path_factory.mktemp("straight"), data_dir)
    assert train_job(config) == 4
    return config


def test_link_prediction_is_far_above_random(learned):
    final = records(learned, EVAL)[-1]
    chance = random_mrr(20)  # 20 global negatives per validation edge: 0.174
    assert final["step"] == 120 and final["edges"] == 400
    assert final["mrr"] > 2 * chance, (final["mrr"], chance)
    assert final["auroc"] > 0.8
    for relation in ("fav", "follow"):
        assert final[f"mrr/{relation}"] > 1.5 * chance


def test_relation_vectors_change_during_training(learned):
    middle, end = parameters_at(learned, 60)["relations"], parameters_at(learned, 120)["relations"]
    assert middle.abs().sum() > 0  # they start at zero
    assert not torch.allclose(middle, end)


def test_stop_and_resume_equals_a_straight_run(tmp_path, data_dir, straight):
    stopped = tiny_config(tmp_path, data_dir, "training.num_train_steps=2")
    assert train_job(stopped) == 2
    resumed = tiny_config(tmp_path, data_dir)
    assert train_job(resumed) == 4
    for name, value in parameters_at(straight, 4).items():
        torch.testing.assert_close(parameters_at(resumed, 4)[name], value, rtol=0, atol=0)
    assert losses(resumed) == losses(straight)


def test_two_sharded_ranks_train_like_one_rank(tmp_path, data_dir, straight):
    config = tiny_config(tmp_path / "two", data_dir, "train_data.per_replica_batch_size=16")
    assert run_on_ranks(train_job, 2, config, workdir=tmp_path) == [4, 4]
    one, two = losses(straight), losses(config)
    assert one.keys() == two.keys() == {1, 2, 3, 4}
    for step in one:
        assert two[step] == pytest.approx(one[step], rel=1e-5)
    expected = parameters_at(straight, 4)
    for name, value in parameters_at(config, 4).items():
        torch.testing.assert_close(value, expected[name], rtol=1e-5, atol=1e-6)


def test_recap_warm_started_from_the_export_holds_the_tables(tmp_path, learned):
    export = run_export(learned, None, str(tmp_path / "export"))
    user = parameters_at(learned, 120)["tables.embedding_bags.user.weight"]
    vectors = pq.read_table(export / VECTORS / "user.parquet")
    assert vectors.column("id").to_pylist() == list(range(64))
    torch.testing.assert_close(torch.tensor(vectors.column("embedding").to_pylist()), user)

    recap = tiny_recap_config(
        tmp_path / "recap",
        "model.large_embeddings.tables.0.num_embeddings=64",
        "model.large_embeddings.tables.0.embedding_dim=8",
        "model.large_embeddings.tables.0.pretrained="
        f"{{emb_name: user, embedding_snapshot_uri: '{export / TABLES}'}}",
    )
    model = build_recap_model(recap, model_input_spec(recap))
    assert load_pretrained_embeddings(model.large_embeddings) == ["meta__user_id"]
    torch.testing.assert_close(
        model.large_embeddings.table_weights()["meta__user_id"], user, rtol=0, atol=0
    )

    # The TwHIN checkpoint itself serves as well, under the table's name in the model.
    checkpoint = checkpoint_folder(TwhinJobFolder(learned.training.save_dir).checkpoints, 120)
    recap = tiny_recap_config(
        tmp_path / "recap",
        "model.large_embeddings.tables.0.num_embeddings=64",
        "model.large_embeddings.tables.0.embedding_dim=8",
        "model.large_embeddings.tables.0.pretrained={emb_name: "
        f"model.tables.embedding_bags.user.weight, embedding_snapshot_uri: '{checkpoint}'}}",
    )
    model = build_recap_model(recap, model_input_spec(recap))
    assert load_pretrained_embeddings(model.large_embeddings) == ["meta__user_id"]
    torch.testing.assert_close(
        model.large_embeddings.table_weights()["meta__user_id"], user, rtol=0, atol=0
    )


def test_a_vocab_keys_the_exported_vectors_by_raw_id(tmp_path, data_dir):
    config = tiny_config(tmp_path / "job", data_dir)
    vocab = tmp_path / "vocab"
    vocab.mkdir()
    raw = [10**12 + 7 * row for row in range(5)]
    pq.write_table(pa.table({"id": raw, "row": [4, 3, 2, 1, 0]}), vocab / "part.parquet")
    model = build_twhin_model(config)
    export_model(model, tmp_path / "export", {"user": str(vocab)})
    vectors = pq.read_table(tmp_path / "export" / VECTORS / "user.parquet")
    assert vectors.column("id").to_pylist() == raw
    user = model.tables.state_dict()["embedding_bags.user.weight"]
    torch.testing.assert_close(
        torch.tensor(vectors.column("embedding").to_pylist()), user[[4, 3, 2, 1, 0]]
    )
    pq.write_table(pa.table({"id": [1], "row": [64]}), vocab / "part.parquet")
    with pytest.raises(VocabError, match="outside the table's 64 rows"):
        export_model(model, tmp_path / "again", {"user": str(vocab)})
