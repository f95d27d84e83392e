"""Retraining cycles end to end on generated daily folders, each training on 2 ranks through the
real launcher (docker/entrypoint.sh -> torchrun -> Gloo):

* on a local registry, uninterrupted: day one trains from scratch and is promoted, day two
  warm-starts from it and is promoted, a candidate made worse on purpose (one step from
  scratch) is rejected and the pointer stays; rollback and promotion by hand move it back;
* on the loopback S3 server (data and registry in a bucket), interrupted: the command is killed
  (SIGKILL, every process) while day one trains, then the cycle is run again phase by phase, as
  if killed after each phase; the registry ends as the uninterrupted day one did.

The bucket runs day one only (each cycle is a torchrun launch and an export, and the suite's
time is short); days two and three differ from it only in what the local flow checks.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import fsspec
import pytest

from projects.home.recap.config import RecapConfig
from projects.home.recap.data.parquet_format import WriteOptions
from projects.home.recap.retrain.cycle import (
    Cycle,
    CycleRequest,
    CycleResult,
    Outcome,
    prepare,
    run_cycle,
)
from projects.home.recap.retrain.launch import Children
from projects.home.recap.retrain.main import main as retrain
from projects.home.recap.retrain.outcome import ExitCode
from projects.home.recap.retrain.registry import EXPORTED, PLANNED, Registry
from projects.home.recap.retrain.registry import main as registry_command
from projects.home.recap.tools.generate_random_data import config_split_points, generate_dataset
from tests.projects.home.recap.launched_jobs import descendants
from tml.core.config import load_config_from_yaml
from tml.storage import LockHolder, as_path

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[5]
CONFIG = Path(__file__).parents[1] / "fixtures" / "retrain.yaml"
HANG = Path(__file__).parents[1] / "fixtures" / "hang_injection"
DAYS = ("2026/12/01", "2026/12/02", "2026/12/03", "2026/12/04")
FIRST, SECOND, WORSE_DAY = DAYS[1:]
# A candidate made worse on purpose: one step from scratch instead of warm-starting (on one rank:
# it needs no second one, and a launch with one worker is cheaper).
WORSE = ["training.num_train_steps=1", "retraining.launch.nproc_per_node=1"]
BUCKET = "retrain-cycles"


@contextlib.contextmanager
def environment(run_dir: Path, **extra: str) -> Iterator[None]:
    """What the cycles (and their children) run with: the config's variables, one thread per
    rank, no GPU, the checkout importable, TensorBoard files of bucket jobs in the run folder."""
    values = {
        "TML_TEST_RUN": str(run_dir),
        "OMP_NUM_THREADS": "1",
        "CUDA_VISIBLE_DEVICES": "",
        "TML_TENSORBOARD_DIR": str(run_dir / "tensorboard"),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        **extra,
    }
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    cwd = os.getcwd()
    os.chdir(REPO)
    try:
        yield
    finally:
        os.chdir(cwd)
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def overrides_for(data_root: str | None) -> list[str]:
    return [f"train_data.explicit_date_inputs.data_root={data_root}"] if data_root else []


def request(
    registry: str,
    end: str,
    *overrides: str,
    data_root: str | None = None,
    warm_start: str = "promoted",
) -> CycleRequest:
    config = load_config_from_yaml(RecapConfig, CONFIG, [*overrides_for(data_root), *overrides])
    return CycleRequest(config, Registry(registry), end, warm_start)


def run_steps(cycle_request: CycleRequest, *steps: str) -> None:
    """Runs some phases of a cycle and stops, as a cycle killed right after them would."""
    window, cycle = prepare(cycle_request)
    lease = cycle_request.registry.lock()
    with lease, tempfile.TemporaryDirectory() as work:
        phases = Cycle(cycle_request, window, cycle, lease, Children(), Path(work))
        for step in steps:
            getattr(phases, step)()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """Four daily folders of 256 examples (2 files each); each day draws other examples."""
    run_dir = tmp_path_factory.mktemp("retrain")
    with environment(run_dir):
        data = load_config_from_yaml(RecapConfig, CONFIG).train_data
    options = WriteOptions(row_group_size=64, split_points=config_split_points(data))
    for seed, day in enumerate(DAYS):
        folder = run_dir / "data" / day
        generate_dataset(
            data, str(folder), num_examples=256, num_files=2, seed=seed, options=options
        )
    return run_dir


@pytest.fixture(scope="module")
def local(run_dir) -> tuple[Registry, dict[str, CycleResult]]:
    """Three uninterrupted daily cycles on a local registry."""
    registry = str(run_dir / "registry")
    with environment(run_dir):
        results = {
            "first": run_cycle(request(registry, FIRST)),
            "second": run_cycle(request(registry, SECOND)),
            "worse": run_cycle(request(registry, WORSE_DAY, *WORSE, warm_start="scratch")),
        }
    return Registry(registry), results


@pytest.fixture(scope="module")
def bucket(run_dir, s3_server) -> dict[str, object]:
    """Day one on the bucket, killed while training and then interrupted after every phase."""
    fs = fsspec.filesystem("s3")
    fs.mkdir(BUCKET)
    fs.put(str(run_dir / "data"), f"{BUCKET}/data", recursive=True)
    data_root, root = f"s3://{BUCKET}/data", f"s3://{BUCKET}/registry"
    registry = Registry(root)
    found: dict[str, object] = {"registry": registry}
    arguments = ["--config_path", str(CONFIG), "--registry", root, "--end_date", FIRST]
    arguments += overrides_for(data_root)
    with environment(run_dir):
        first = request(root, FIRST, data_root=data_root)
        _, cycle = prepare(first)
        found["cycle"] = cycle
        job = registry.job_dir(cycle)
        # The real command, killed with every process under it while it trains: a rank hangs
        # after step 5 of 6 (test-only injection, see the fixture's sitecustomize.py).
        marker = run_dir / "hanging"
        hang = {
            "PYTHONPATH": f"{HANG}{os.pathsep}{os.environ['PYTHONPATH']}",
            "TML_TEST_HANG_RANK": "0",
            "TML_TEST_HANG_AT_STEP": "5",
            "TML_TEST_HANG_MARKER": str(marker),
        }
        log = run_dir / "killed.log"
        with log.open("w") as output:
            process = subprocess.Popen(
                [sys.executable, "-m", "projects.home.recap.retrain.main", *arguments],
                env={**os.environ, **hang},
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            deadline = time.monotonic() + 300
            while not marker.exists():
                assert process.poll() is None, log.read_text()[-3000:]
                assert time.monotonic() < deadline, log.read_text()[-3000:]
                time.sleep(0.05)
        finally:
            for pid in [*descendants(process.pid), process.pid]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            process.wait()
        found["killed"] = {
            "phase": registry.require_entry(cycle)["phase"],
            "steps": sorted(path.name for path in (job / "checkpoints").iterdir()),
            "lock": LockHolder.from_json(registry.lock_path.read_text()),
            "pid": process.pid,
        }
        # Run again, stopping after each phase in turn, then to the end through the command.
        run_steps(first, "train")
        run_steps(first, "evaluate_candidate")
        run_steps(first, "evaluate_incumbent", "gate", "export")
        found["exported"] = (registry.require_entry(cycle)["phase"], registry.promoted())
        report_file = run_dir / "report.json"
        found["exit"] = retrain([*arguments, "--report_file", str(report_file)])
        found["report"] = json.loads(report_file.read_text())
    return found


def entry_of(result: CycleResult) -> dict:
    assert result.entry is not None
    return result.entry


def test_day_one_trains_from_scratch_and_is_promoted(local):
    registry, results = local
    first = results["first"]
    assert first.outcome == Outcome.PROMOTED and first.exit_code == ExitCode.PROMOTED
    entry = entry_of(first)
    assert entry["warm_start"]["checkpoint"] is None and entry["incumbent"] is None
    assert entry["window"]["train_data"]["end_date"] == DAYS[0]
    assert entry["checkpoint"].endswith("job/checkpoints/step_6")
    assert as_path(entry["export"]).is_file()
    assert "warm-started" not in registry.log_file(first.cycle, "train-1").read_text()


def test_day_two_warm_starts_from_day_one_and_replaces_it(local):
    registry, results = local
    first, second = entry_of(results["first"]), entry_of(results["second"])
    assert results["second"].outcome == Outcome.PROMOTED
    assert second["warm_start"] == {
        "from": "promoted",
        "cycle": first["cycle"],
        "checkpoint": first["checkpoint"],
    }
    log = registry.log_file(second["cycle"], "train-1").read_text()
    assert f"warm-started the weights from {first['checkpoint']}" in log
    # Both models were measured on day two's held-out folder, and the candidate won.
    assert second["incumbent"]["cycle"] == first["cycle"]
    assert second["metrics"]["incumbent"]["examples"] == 256
    assert second["verdict"]["passed"]
    pointer = registry.promoted()
    assert [record["cycle"] for record in pointer["history"]] == [first["cycle"]]


def test_a_worse_candidate_is_rejected_and_the_pointer_stays(local):
    registry, results = local
    worse = results["worse"]
    assert worse.outcome == Outcome.REJECTED and worse.exit_code == ExitCode.REJECTED
    entry = entry_of(worse)
    assert entry["incumbent"]["cycle"] == results["second"].cycle
    checks = {check["name"]: check for check in entry["verdict"]["checks"]}
    weighted = checks["weighted rce"]
    assert not weighted["passed"] and weighted["candidate"] < weighted["incumbent"] - 50
    assert entry["export"] is None
    assert registry.promoted()["cycle"] == results["second"].cycle
    assert worse.summary.startswith(f"rejected: cycle {worse.cycle} (window {WORSE_DAY}")


def test_the_command_is_idempotent_and_its_exit_codes_say_what_happened(run_dir, local, capsys):
    registry, results = local
    root = str(registry.root)
    before = {cycle: registry.require_entry(cycle) for cycle in registry.cycles()}
    command = ["--config_path", str(CONFIG), "--registry", root]
    with environment(run_dir):
        assert retrain([*command, "--end_date", SECOND]) == ExitCode.PROMOTED
        assert capsys.readouterr().out.startswith(f"already done: cycle {results['second'].cycle}")
        worse = [*command, "--warm_start", "scratch", *WORSE]
        assert retrain(worse) == ExitCode.NO_NEW_DATA  # the newest day is done
        assert retrain([*command, "--end_date", "2026/12/05"]) == ExitCode.NO_NEW_DATA
        assert "2026/12/05 is not a folder with data yet" in capsys.readouterr().out
        with registry.lock():
            assert retrain([*command, "--end_date", WORSE_DAY]) == ExitCode.LOCKED
        assert retrain([*command, "retraining.gate.per_task.max_drop=-1"]) == ExitCode.USER_ERROR
        errors = capsys.readouterr().err.splitlines()
        assert errors[0].startswith("error: another cycle is running: ")
        assert errors[1].startswith("error: ") and "max_drop" in errors[1] and len(errors) == 2
    assert {cycle: registry.require_entry(cycle) for cycle in registry.cycles()} == before


def test_rollback_and_promotion_by_hand_move_the_pointer(local, capsys):
    registry, results = local
    first, second = results["first"].cycle, results["second"].cycle
    root = str(registry.root)
    assert registry_command(["--registry", root, "rollback"]) == 0
    assert registry.promoted()["cycle"] == first
    assert registry.promoted()["export"] == entry_of(results["first"])["export"]
    assert registry_command(["--registry", root, "promote", second]) == 0
    assert registry.promoted()["cycle"] == second
    assert registry_command(["--registry", root, "list"]) == 0
    listed = capsys.readouterr().out.splitlines()[-3:]
    assert [line[0] for line in listed] == [" ", "*", " "]


def test_a_cycle_killed_while_training_resumes_on_the_bucket(bucket):
    killed, registry, cycle = bucket["killed"], bucket["registry"], bucket["cycle"]
    assert killed["phase"] == PLANNED
    assert "step_2" in killed["steps"] and "step_6" not in killed["steps"]
    # Its lock outlived it; the next run took it over at once (its process was gone).
    assert killed["lock"].pid == killed["pid"]
    assert "resumed from step" in registry.log_file(cycle, "train-1").read_text()
    assert bucket["exported"][0] == EXPORTED and bucket["exported"][1] is None


def test_the_command_finishes_the_cycle_on_the_bucket(bucket):
    registry, cycle = bucket["registry"], bucket["cycle"]
    assert bucket["exit"] == ExitCode.PROMOTED
    report = bucket["report"]
    assert report["outcome"] == "promoted" and report["cycle"] == cycle
    assert report["export"] == f"s3://{BUCKET}/registry/cycles/{cycle}/export/model.pt2"
    assert json.loads(registry.report_file(cycle).read_text()) == report
    assert registry.promoted()["cycle"] == cycle
    assert as_path(registry.promoted()["export"]).is_file()
    assert not registry.lock_path.exists()  # released


def comparable(entry: dict) -> dict:
    """What an entry says, without where its files are or when it was written."""
    return {
        "window": entry["window"]["end"],
        "phase": entry["phase"],
        "checks": [(check["name"], check["passed"]) for check in entry["verdict"]["checks"]],
        "warm_start": entry["warm_start"]["cycle"],
        "incumbent": entry["incumbent"],
        "metrics": None,
    }


def test_the_interrupted_cycle_leaves_the_registry_of_the_uninterrupted_one(local, bucket):
    _, results = local
    expected = entry_of(results["first"])
    interrupted = bucket["registry"].require_entry(bucket["cycle"])
    assert comparable(interrupted) == comparable(expected)
    for model, metrics in expected["metrics"].items():
        metrics = {name: value for name, value in metrics.items() if name != "seconds"}
        got = {name: value for name, value in interrupted["metrics"][model].items()}
        assert got.keys() - {"seconds"} == metrics.keys()
        assert {name: got[name] for name in metrics} == pytest.approx(metrics, rel=1e-6)
