"""The ranker's metric collection: names, sets, task subsets, stratifiers, errors, 2 ranks."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from projects.home.recap.config import RecapConfig
from projects.home.recap.evaluation.metric_sets import METRICS_OF_SET, MetricSet
from projects.home.recap.evaluation.metrics import build_metrics
from projects.home.recap.model.config import StratifierConfig
from tests.helpers.multiprocess import run_on_ranks
from tml.core.config import ConfigError, load_config_from_yaml
from tml.distributed import distributed_environment
from tml.metrics import METRICS

TASKS = ["recap.engagement.is_favorited", "recap.engagement.is_replied", "recap.engagement.is_x"]
FAVORITED, REPLIED, OTHER = TASKS
STRATIFIERS = [
    StratifierConfig(name="in_network", index=3, value=1),
    StratifierConfig(name="video", index=7, value=2),
]
LOCAL_CPU = Path(__file__).resolve().parents[5] / "projects/home/recap/config/local_cpu.yaml"
WORLD_SIZE = 2


def make_outputs(size=3000, seed=0, stratifiers=STRATIFIERS):
    """Model outputs; column j of "stratifiers" is discrete feature stratifiers[j].index."""
    generator = np.random.default_rng(seed)
    discrete = generator.integers(0, 4, (size, 8))
    discrete[:, 3] %= 2
    probabilities = generator.random((size, len(TASKS))) ** np.array([1.0, 4.0, 2.0])
    labels = (generator.random((size, len(TASKS))) < probabilities).astype(np.int64)
    return {
        "probabilities": torch.as_tensor(probabilities, dtype=torch.float32),
        "calibrated_probabilities": torch.as_tensor(probabilities**2, dtype=torch.float32),
        "labels": torch.as_tensor(labels),
        "weights": torch.as_tensor(generator.uniform(0.5, 2.0, labels.shape), dtype=torch.float32),
        "stratifiers": torch.as_tensor(discrete[:, [s.index for s in stratifiers]]),
    }


def batches(outputs, count):
    size = len(outputs["labels"])
    for chunk in np.array_split(np.arange(size), count):
        chunk = torch.as_tensor(chunk, dtype=torch.long)
        yield {key: value[chunk] for key, value in outputs.items()}


def reference_auroc(predictions, labels, weights):
    predictions, labels, weights = (
        np.asarray(a, dtype=np.float64) for a in (predictions, labels, weights)
    )
    positive, negative = labels == 1, labels == 0
    above = predictions[positive, None] > predictions[None, negative]
    tied = predictions[positive, None] == predictions[None, negative]
    pairs = weights[positive, None] * weights[None, negative] * (above + 0.5 * tied)
    return pairs.sum() / (weights[positive].sum() * weights[negative].sum())


def reference_mean(values, weights):
    return float(np.sum(np.asarray(weights, np.float64) * values.numpy()) / weights.double().sum())


def test_names_cover_every_metric_task_and_slice():
    metrics = build_metrics(TASKS, None, STRATIFIERS)
    expected = {
        f"{metric}/{task}{suffix}"
        for metric in METRICS_OF_SET[MetricSet.ALL]
        for task in TASKS
        for suffix in ("", "/in_network", "/video")
    }
    assert set(metrics.metric_names) == expected
    assert len(metrics.metric_names) == 7 * 3 * 3
    for batch in batches(make_outputs(), 3):
        metrics.update(batch)
    assert list(metrics.compute()) == metrics.metric_names


def test_values_per_task_and_per_stratifier_match_numpy():
    outputs = make_outputs()
    metrics = build_metrics(TASKS, MetricSet.ALL, STRATIFIERS)
    for batch in batches(outputs, 4):
        metrics.update(batch)
    results = metrics.compute()
    assert all(isinstance(value, float) for value in results.values())
    for column, task in enumerate(TASKS):
        for suffix, selected in [
            ("", torch.ones(len(outputs["labels"]), dtype=torch.bool)),
            ("/in_network", outputs["stratifiers"][:, 0] == 1),
            ("/video", outputs["stratifiers"][:, 1] == 2),
        ]:
            predictions = outputs["probabilities"][selected, column]
            labels = outputs["labels"][selected, column]
            weights = outputs["weights"][selected, column]
            assert results[f"auroc/{task}{suffix}"] == pytest.approx(
                reference_auroc(predictions, labels, weights), abs=1e-12
            )
            assert results[f"mean_label/{task}{suffix}"] == pytest.approx(
                reference_mean(labels, weights), rel=1e-12
            )
            assert results[f"mean_prediction/{task}{suffix}"] == pytest.approx(
                reference_mean(predictions, weights), rel=1e-9
            )
    # The slices really differ from the whole.
    assert results[f"mean_label/{FAVORITED}/video"] != results[f"mean_label/{FAVORITED}"]


@pytest.mark.parametrize("metric_set", list(MetricSet))
def test_each_metric_set_computes_its_metrics(metric_set):
    metrics = build_metrics(TASKS, metric_set)
    assert {name.split("/")[0] for name in metrics.metric_names} == set(METRICS_OF_SET[metric_set])


def test_metric_sets_name_known_metrics_and_all_is_everything():
    assert set(METRICS_OF_SET) == set(MetricSet)
    for names in METRICS_OF_SET.values():
        assert set(names) <= set(METRICS)
    assert set(METRICS_OF_SET[MetricSet.ALL]) == set(METRICS)
    assert not {"auroc", "nrce"} & set(METRICS_OF_SET[MetricSet.CONSTANT_MEMORY])


def test_which_metrics_in_the_config_takes_a_set_name():
    config = load_config_from_yaml(RecapConfig, LOCAL_CPU, ["which_metrics=auroc_rce"])
    assert config.which_metrics is MetricSet.AUROC_RCE
    assert load_config_from_yaml(RecapConfig, LOCAL_CPU).which_metrics is None
    with pytest.raises(ConfigError, match=r"which_metrics.*'all', 'auroc_rce'"):
        load_config_from_yaml(RecapConfig, LOCAL_CPU, ["which_metrics=auroc_only"])


def test_evaluation_tasks_restrict_the_tasks_and_pick_the_right_columns():
    outputs = make_outputs()
    metrics = build_metrics(TASKS, MetricSet.AUROC_RCE, evaluation_tasks=[REPLIED])
    assert metrics.metric_names == [f"auroc/{REPLIED}", f"rce/{REPLIED}"]
    metrics.update(outputs)
    column = TASKS.index(REPLIED)
    assert metrics.compute()[f"auroc/{REPLIED}"] == pytest.approx(
        reference_auroc(
            outputs["probabilities"][:, column],
            outputs["labels"][:, column],
            outputs["weights"][:, column],
        ),
        abs=1e-12,
    )


def test_empty_evaluation_tasks_mean_every_task():
    assert (
        build_metrics(TASKS, evaluation_tasks=[]).metric_names == build_metrics(TASKS).metric_names
    )


def test_calibrated_probabilities_can_be_chosen():
    outputs = make_outputs()
    metrics = build_metrics(TASKS, MetricSet.CALIBRATION, prediction_key="calibrated_probabilities")
    metrics.update(outputs)
    assert metrics.compute()[f"mean_prediction/{OTHER}"] == pytest.approx(
        reference_mean(outputs["calibrated_probabilities"][:, 2], outputs["weights"][:, 2]),
        rel=1e-9,
    )


def test_weights_default_to_one_and_threshold_reaches_precision_and_recall():
    outputs = make_outputs()
    del outputs["weights"], outputs["stratifiers"]
    metrics = build_metrics(TASKS, MetricSet.ALL, threshold=0.25)
    metrics.update(outputs)
    results = metrics.compute()
    predicted = outputs["probabilities"][:, 0] >= 0.25
    positive = outputs["labels"][:, 0] == 1
    expected_precision = (predicted & positive).sum().item() / predicted.sum().item()
    assert results[f"precision/{FAVORITED}"] == pytest.approx(expected_precision, rel=1e-12)
    assert results[f"mean_label/{FAVORITED}"] == pytest.approx(positive.double().mean().item())


def test_a_stratifier_value_never_seen_gives_nan():
    never = [StratifierConfig(name="n", index=0, value=9)]
    outputs = make_outputs(stratifiers=never)
    metrics = build_metrics(TASKS, MetricSet.AUROC_RCE, never)
    metrics.update(outputs)
    results = metrics.compute()
    assert math.isnan(results[f"auroc/{FAVORITED}/n"]) and math.isnan(results[f"rce/{FAVORITED}/n"])
    assert not math.isnan(results[f"auroc/{FAVORITED}"])


def test_reset_starts_over():
    first, second = make_outputs(seed=1), make_outputs(seed=2)
    metrics = build_metrics(TASKS, MetricSet.AUROC_RCE)
    metrics.update(first)
    metrics.reset()
    metrics.update(second)
    fresh = build_metrics(TASKS, MetricSet.AUROC_RCE)
    fresh.update(second)
    assert metrics.compute() == fresh.compute()


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        pytest.param(lambda o: o.pop("labels"), KeyError, "no 'labels' entry", id="no-labels"),
        pytest.param(
            lambda o: o.pop("stratifiers"), KeyError, "no 'stratifiers'", id="no-stratifiers"
        ),
        pytest.param(
            lambda o: o.update(labels=o["labels"][:, :2]),
            ValueError,
            r"outputs\['labels'\] must have shape \[3000, 3\] .* got \[3000, 2\]",
            id="labels-too-narrow",
        ),
        pytest.param(
            lambda o: o.update(probabilities=o["probabilities"][:, 0]),
            ValueError,
            r"outputs\['probabilities'\] must have shape \[batch, 3\]",
            id="predictions-one-dimensional",
        ),
        pytest.param(
            lambda o: o.update(weights=o["weights"][:10]),
            ValueError,
            r"outputs\['weights'\] must have shape \[3000, 3\]",
            id="weights-short",
        ),
        pytest.param(
            lambda o: o.update(stratifiers=o["stratifiers"][:, :1]),
            ValueError,
            r"outputs\['stratifiers'\] must have shape \[3000, 2\] \(batch, number of strat",
            id="stratifiers-too-narrow",
        ),
        pytest.param(
            lambda o: o.update(stratifiers=o["stratifiers"].float()),
            ValueError,
            "integer feature values",
            id="stratifiers-float",
        ),
    ],
)
def test_bad_outputs_are_refused_with_the_tensor_named(change, error, message):
    outputs = make_outputs()
    change(outputs)
    with pytest.raises(error, match=message):
        build_metrics(TASKS, MetricSet.AUROC_RCE, STRATIFIERS).update(outputs)


def test_logits_instead_of_probabilities_are_refused_at_compute():
    outputs = make_outputs()
    outputs["probabilities"] = torch.logit(outputs["probabilities"].clamp(0.01, 0.99))
    metrics = build_metrics(TASKS, MetricSet.AUROC_RCE)
    metrics.update(outputs)
    with pytest.raises(ValueError, match="logits"):
        metrics.compute()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        pytest.param({"evaluation_tasks": ["recap.engagement.is_y"]}, "not model tasks", id="task"),
        pytest.param({"prediction_key": "logits"}, "prediction_key must be one of", id="key"),
        pytest.param(
            {"stratifiers": [STRATIFIERS[0], STRATIFIERS[0]]}, "stratifier names", id="strat"
        ),
        pytest.param({"which_metrics": "auroc_only"}, "auroc_only", id="set"),
        pytest.param({"threshold": 2.0}, "threshold", id="threshold"),
    ],
)
def test_bad_builder_arguments_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_metrics(TASKS, **kwargs)


# A third slice whose examples all fall in rank 0's share: rank 1 updates it with empty batches.
TWO_RANK_STRATIFIERS = [*STRATIFIERS, StratifierConfig(name="rank0_only", index=5, value=0)]


def two_rank_outputs():
    outputs = make_outputs(stratifiers=TWO_RANK_STRATIFIERS)
    rank_one = outputs["stratifiers"][len(outputs["labels"]) // 3 :, 2]
    rank_one[rank_one == 0] = 3
    return outputs


def rank_results():
    """This rank's metrics; runs on each of WORLD_SIZE ranks (tests.helpers.multiprocess)."""
    with distributed_environment("cpu") as environment:
        rank = environment.rank
        outputs = two_rank_outputs()
        size = len(outputs["labels"])
        share = slice(0, size // 3) if rank == 0 else slice(size // 3, size)
        metrics = build_metrics(TASKS, None, TWO_RANK_STRATIFIERS)
        for batch in batches({key: value[share] for key, value in outputs.items()}, 3):
            metrics.update(batch)
        return metrics.compute()


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_two_gloo_ranks_match_one_process(tmp_path):
    ranks = run_on_ranks(rank_results, WORLD_SIZE, workdir=tmp_path)

    single = build_metrics(TASKS, None, TWO_RANK_STRATIFIERS)
    single.update(two_rank_outputs())
    expected = single.compute()
    assert not any(math.isnan(value) for value in expected.values())
    for results in ranks:
        assert results.keys() == expected.keys()
        for name, value in expected.items():
            assert results[name] == pytest.approx(value, rel=1e-9, abs=1e-12), name
