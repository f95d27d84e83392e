"""Every metric synced over 2 Gloo ranks equals the same metric computed in one process."""

import numpy as np
import pytest
import torch

from tests.helpers.multiprocess import run_on_ranks
from tml.distributed import distributed_environment
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


def rank_results():
    """This rank's metrics; runs on each of WORLD_SIZE ranks (tests.helpers.multiprocess)."""
    with distributed_environment("cpu") as environment:
        rank = environment.rank
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
        return results


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_two_gloo_ranks_match_one_process(tmp_path):
    ranks = run_on_ranks(rank_results, WORLD_SIZE, workdir=tmp_path)

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
