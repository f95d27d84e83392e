"""Every metric synced over 2 Gloo ranks equals the same metric computed in one process."""

import datetime
import json

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tml.metrics import METRICS

WORLD_SIZE = 2


def make_data(size=4001):
    generator = np.random.default_rng(0)
    predictions = np.round(generator.random(size) ** 3, 3).astype(np.float32)  # with ties
    labels = (generator.random(size) < predictions).astype(np.int64)
    weights = generator.uniform(0.1, 3.0, size).astype(np.float32)
    return predictions, labels, weights


def update(metric, predictions, labels, weights, batches):
    for chunk in np.array_split(np.arange(len(predictions)), batches):
        metric.update(
            torch.as_tensor(predictions[chunk]),
            torch.as_tensor(labels[chunk]),
            torch.as_tensor(weights[chunk]),
        )


def run_rank(rank, store_path, out_dir):
    store = dist.FileStore(store_path, WORLD_SIZE)
    timeout = datetime.timedelta(seconds=60)  # a mismatched collective fails instead of hanging
    dist.init_process_group("gloo", store=store, rank=rank, world_size=WORLD_SIZE, timeout=timeout)
    try:
        data = make_data()
        split = int(0.6 * len(data[0]))  # uneven shares
        share = [array[:split] if rank == 0 else array[split:] for array in data]
        results = {}
        for name, metric_class in METRICS.items():
            metric = metric_class()
            half = len(share[0]) // 2
            update(metric, *[array[:half] for array in share], batches=2)
            results[f"{name}/first_half"] = metric.compute().item()
            update(metric, *[array[half:] for array in share], batches=3)
            results[name] = metric.compute().item()
            # Rank 1 never updates, as when an evaluation set splits unevenly.
            idle = metric_class()
            if rank == 0:
                update(idle, *data, batches=2)
            results[f"{name}/one_rank_idle"] = idle.compute().item()
        with open(f"{out_dir}/{rank}.json", "w") as file:
            json.dump(results, file)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_two_gloo_ranks_match_one_process(tmp_path, monkeypatch, request):
    # Spawned children unpickle run_rank by importing this module from the repository root.
    monkeypatch.syspath_prepend(str(request.config.rootpath))
    mp.spawn(run_rank, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=WORLD_SIZE)
    ranks = [json.loads((tmp_path / f"{rank}.json").read_text()) for rank in range(WORLD_SIZE)]

    data = make_data()
    for name, metric_class in METRICS.items():
        single = metric_class()
        update(single, *data, batches=1)
        expected = single.compute().item()
        assert not np.isnan(expected)
        for results in ranks:
            assert results[name] == pytest.approx(expected, rel=1e-9), name
            assert results[f"{name}/one_rank_idle"] == pytest.approx(expected, rel=1e-9), name
        # Both ranks agree, and the mid-way compute saw only the first halves.
        assert ranks[0][f"{name}/first_half"] == ranks[1][f"{name}/first_half"]
    assert ranks[0]["mean_label/first_half"] != pytest.approx(ranks[0]["mean_label"], rel=1e-6)
