"""A cycle's planning (the warm start it records and passes to training) and its answer to a
pointer moved by hand between two runs; in-process, without training."""

from __future__ import annotations

from pathlib import Path

import pytest

from projects.home.recap.config import RecapConfig
from projects.home.recap.retrain.cycle import Cycle, CycleRequest, load_recorded_config, prepare
from projects.home.recap.retrain.launch import Children
from projects.home.recap.retrain.registry import GATED, PROMOTED, TRAINED, Registry
from tml.core.config import load_config_from_yaml
from tml.core.errors import UserInputError

CONFIG = Path(__file__).parents[1] / "fixtures" / "retrain.yaml"


@pytest.fixture
def registry(tmp_path, monkeypatch) -> Registry:
    monkeypatch.setenv("TML_TEST_RUN", str(tmp_path))
    for day in ("2026/12/01", "2026/12/02"):
        (tmp_path / "data" / day).mkdir(parents=True)
        (tmp_path / "data" / day / "part-0.parquet").write_bytes(b"")
    registry = Registry(tmp_path / "registry")
    for cycle in ("20261130-a", "20261201-b"):
        registry.save_entry(
            {
                "cycle": cycle,
                "window": {"end": "2026/11/30"},
                "phase": PROMOTED,
                "checkpoint": f"{tmp_path}/{cycle}/checkpoints/step_6",
                "export": f"{tmp_path}/{cycle}/model.pt2",
            }
        )
    return registry


def planned(registry: Registry, warm_start: str, tmp_path: Path) -> tuple[dict, RecapConfig]:
    config = load_config_from_yaml(RecapConfig, CONFIG)
    request = CycleRequest(config, registry, None, warm_start)
    window, cycle = prepare(request)
    with registry.lock() as lease:
        phases = Cycle(request, window, cycle, lease, Children(), tmp_path)
        phases.plan()
    return registry.require_entry(cycle), load_recorded_config(registry, cycle)


def test_the_warm_start_is_recorded_and_given_to_training(registry, tmp_path):
    entry, job = planned(registry, "scratch", tmp_path)
    assert entry["warm_start"]["checkpoint"] is None and entry["incumbent"] is None
    assert job.training.initial_checkpoint_dir is None
    assert job.training.save_dir == str(registry.job_dir(entry["cycle"]))
    assert job.train_data.explicit_date_inputs.end_date == "2026/12/01"

    registry.promote("20261201-b", "test")
    entry, job = planned(registry, "promoted", tmp_path)
    promoted = registry.require_entry("20261201-b")["checkpoint"]
    assert entry["warm_start"] == {
        "from": "promoted",
        "cycle": "20261201-b",
        "checkpoint": promoted,
    }
    assert entry["incumbent"]["cycle"] == "20261201-b"
    assert job.training.initial_checkpoint_dir == promoted

    entry, job = planned(registry, "20261130-a", tmp_path)
    assert job.training.initial_checkpoint_dir.endswith("20261130-a/checkpoints/step_6")
    assert entry["incumbent"]["cycle"] == "20261201-b"  # compared with what serves

    folder = tmp_path / "elsewhere" / "checkpoints" / "step_9"
    folder.mkdir(parents=True)
    (folder / "COMPLETE").write_text("{}")
    entry, job = planned(registry, str(tmp_path / "elsewhere"), tmp_path)
    assert job.training.initial_checkpoint_dir == str(folder)

    with pytest.raises(UserInputError, match="neither a cycle of the registry nor a checkpoint"):
        planned(registry, str(tmp_path / "nothing"), tmp_path)


def test_a_pointer_moved_by_hand_makes_the_cycle_compare_again(registry, tmp_path):
    registry.promote("20261130-a", "test")
    config = load_config_from_yaml(RecapConfig, CONFIG)
    request = CycleRequest(config, registry, None)
    window, cycle = prepare(request)
    with registry.lock() as lease:
        phases = Cycle(request, window, cycle, lease, Children(), tmp_path)
        phases.plan()
        phases.entry.update(
            phase=GATED,
            metrics={"candidate": {"examples": 1.0}, "incumbent": {"examples": 1.0}},
            verdict={"passed": True, "reason": "", "checks": []},
        )
        phases.reconcile_incumbent()  # nothing moved
        assert phases.entry["phase"] == GATED
        registry.promote("20261201-b", "by hand")
        phases.reconcile_incumbent()
    entry = registry.require_entry(cycle)
    assert entry["phase"] == TRAINED and entry["verdict"] is None
    assert entry["incumbent"]["cycle"] == "20261201-b"
    assert entry["metrics"] == {"candidate": {"examples": 1.0}}
