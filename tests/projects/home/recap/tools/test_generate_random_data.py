import itertools
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from projects.home.recap.config import RecapConfig
from projects.home.recap.data.dataset import ReadOptions, build_dataset
from projects.home.recap.data.parquet_format import METADATA_KEY
from projects.home.recap.tools.generate_random_data import generate_dataset, main
from tml.core.config import load_config_from_yaml

LOCAL_CPU = Path(__file__).parents[5] / "projects/home/recap/config/local_cpu.yaml"


def test_cli_writes_each_partition_where_the_config_reads_it(tmp_path, monkeypatch):
    monkeypatch.setenv("TML_RUN_DIR", str(tmp_path))
    arguments = ["--config_path", str(LOCAL_CPU), "--seed", "1"]
    assert main([*arguments, "--num_examples", "300", "--num_files", "2"]) == 0
    assert main([*arguments, "--num_examples", "50", "--partition", "validation"]) == 0
    train = sorted((tmp_path / "local_cpu/data/train").glob("*.parquet"))
    assert [path.name for path in train] == ["part-00000.parquet", "part-00001.parquet"]
    stored = json.loads(pq.read_schema(train[0]).metadata[METADATA_KEY])
    assert len(stored["schema"]) == 22
    # Cut at the config's truncation points, so the reader decodes only what it keeps.
    cuts = [start for _, start, _ in stored["layout"]["home_recap_2022_cont__segdense_vals"]]
    assert 2117 in cuts

    config = load_config_from_yaml(RecapConfig, LOCAL_CPU)
    tasks = list(config.model.tasks)
    evaluation = build_dataset(config.train_data, options=ReadOptions.evaluation(), tasks=tasks)
    assert [batch.batch_size for batch in evaluation] == [256, 44]
    validation = build_dataset(
        config.validation_data["validation"],
        options=ReadOptions.evaluation(),
        tasks=tasks,
        large_embeddings=config.model.large_embeddings,
    )
    (batch,) = list(validation)
    assert batch.batch_size == 50 and batch.labels.shape == (50, 10)
    assert batch.sparse_features.keys() == ["meta__user_id", "meta__author_id"]
    train_ids = set(
        itertools.chain.from_iterable(
            b.extra_features["meta__tweet_id"].flatten().tolist() for b in evaluation
        )
    )
    assert not train_ids & set(batch.extra_features["meta__tweet_id"].flatten().tolist())


def test_unknown_partition_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TML_RUN_DIR", str(tmp_path))
    status = main(["--config_path", str(LOCAL_CPU), "--num_examples", "5", "--partition", "x"])
    assert status == 2
    assert "no partition 'x'; the config has: train, validation" in capsys.readouterr().err


def _log_loss(probability, labels):
    probability = probability.clamp(1e-6, 1 - 1e-6)
    return float(-(labels * probability.log() + (1 - labels) * (1 - probability).log()).mean())


def test_labels_are_learnable_from_features_and_embeddings(tmp_path, make_config):
    paths = generate_dataset(make_config(), str(tmp_path / "gen"), num_examples=20_000, seed=5)
    table = pq.read_table(paths[0])

    def matrix(prefix):
        columns = [name for name in table.column_names if name.split("[")[0] == prefix]
        return np.concatenate(
            [np.stack(table.column(name).to_numpy(zero_copy_only=False)) for name in columns],
            axis=1,
        ).astype(np.float32)

    labels = table.column("label.a").to_numpy().astype(np.float32)
    assert 0.01 < labels.mean() < 0.04
    features = np.concatenate([np.log1p(matrix("cont")), matrix("bin"), matrix("user.emb")], axis=1)
    features = (features - features.mean(0)) / (features.std(0) + 1e-6)
    x, y = torch.from_numpy(features), torch.from_numpy(labels)
    train, test = slice(0, 15_000), slice(15_000, None)
    weights = torch.zeros(x.shape[1], requires_grad=True)
    bias = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.LBFGS([weights, bias], max_iter=100)

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(
            x[train] @ weights + bias, y[train]
        )
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        model = _log_loss(torch.sigmoid(x[test] @ weights + bias), y[test])
    constant = _log_loss(torch.full_like(y[test], float(y[train].mean())), y[test])
    # A linear model on a few of the inputs already beats the constant predictor clearly.
    assert model < 0.95 * constant
