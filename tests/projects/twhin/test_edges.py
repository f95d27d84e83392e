"""Edge files: checked ids, one error line naming the file, deterministic resumable batches."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from projects.twhin.data.edges import EdgeDataset, EdgeFileError, Graph
from projects.twhin.main import main
from tests.projects.twhin.jobs import ROWS, tiny_config, write_graph


@pytest.fixture
def config(tmp_path):
    config = tiny_config(tmp_path / "job", tmp_path / "edges")
    write_graph(tmp_path / "edges", config, num_edges=300)
    return config


def dataset(config, rank=0, world_size=1, training=True):
    return EdgeDataset(
        config.train_data,
        Graph.of(config.model),
        rank=rank,
        world_size=world_size,
        training=training,
        where="train_data",
    )


def write_bad(folder, **columns):
    folder.mkdir()
    path = folder / "bad.parquet"
    pq.write_table(pa.table({k: pa.array(v, pa.int64()) for k, v in columns.items()}), path)
    return path


@pytest.mark.parametrize(
    ("columns", "message"),
    [
        (
            {"lhs": [0, 1], "rel": [0, 0], "rhs": [0, ROWS["tweet"]]},
            "row 1: rhs 48 is not a row of table 'tweet'",
        ),
        ({"lhs": [0, 1], "rel": [0, 2], "rhs": [0, 1]}, "row 1: rel 2 is not a relation"),
        ({"lhs": [0], "rhs": [0]}, "no column \\['rel'\\]"),
    ],
)
def test_a_bad_edge_is_one_error_naming_the_file(tmp_path, columns, message):
    path = write_bad(tmp_path / "bad", **columns)
    config = tiny_config(tmp_path / "job", tmp_path / "bad")
    with pytest.raises(EdgeFileError, match=message) as error:
        dataset(config)
    assert str(path) in str(error.value)


def test_epochs_cover_the_split_with_the_last_partial_batch(config):
    edges = dataset(config, training=False)
    batches = list(edges)
    assert edges.batches_per_epoch == 10  # 300 edges, batches of 32
    assert [b.num_edges for b in batches] == [32] * 9 + [12]
    assert batches[-1].edges_per_rank.item() == 12


def test_two_ranks_split_each_global_batch_of_one_rank(config):
    whole = next(iter(dataset(config)))
    halves = [next(iter(dataset(config, rank, 2))) for rank in range(2)]
    assert torch.equal(torch.cat([h.relations for h in halves])[:32], whole.relations)
    assert all(h.num_edges == 32 and h.edges_per_rank.item() == 32 for h in halves)


def test_the_position_resumes_at_the_next_batch(config):
    straight = dataset(config)
    stream = iter(straight)
    for _ in range(13):  # into the second epoch
        next(stream)
    state = straight.state_dict()
    expected = next(stream)
    resumed = dataset(config)
    resumed.load_state_dict(state)
    batch = next(iter(resumed))
    assert torch.equal(batch.nodes.values(), expected.nodes.values())
    assert torch.equal(batch.relations, expected.relations)


def test_the_command_line_reports_a_bad_edge_in_one_line(tmp_path, monkeypatch, capsys):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    path = write_bad(tmp_path / "bad", lhs=[0, 64], rel=[1, 1], rhs=[0, 1])
    config = tiny_config(tmp_path / "job", tmp_path / "bad")
    config_path = tmp_path / "twhin.yaml"
    config_path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    assert main(["--config_path", str(config_path)]) == 2
    stderr = capsys.readouterr().err
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert "Traceback" not in stderr and len(errors) == 1
    assert f"{path}: row 1: lhs 64 is not a row of table 'user'" in errors[0]
    assert not (tmp_path / "job" / "checkpoints").exists()
