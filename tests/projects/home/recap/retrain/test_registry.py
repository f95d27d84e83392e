"""The registry: entries, the promoted pointer (written whole, with its history for rollback),
and the registry command (list, show, promote, rollback; exit 75 while a cycle holds the lock)."""

from __future__ import annotations

import json
import threading

import pytest

from projects.home.recap.retrain.outcome import ExitCode
from projects.home.recap.retrain.registry import PROMOTED, REJECTED, Registry, main
from tml.core.errors import UserInputError


def add_cycle(registry: Registry, cycle: str, phase: str = PROMOTED) -> None:
    registry.save_entry(
        {
            "cycle": cycle,
            "window": {"end": f"2026/12/{cycle[-2:]}"},
            "warm_start": {"from": "promoted", "cycle": None, "checkpoint": None},
            "phase": phase,
            "verdict": {"passed": phase == PROMOTED, "reason": "all 3 checks passed"},
            "checkpoint": f"/jobs/{cycle}/checkpoints/step_4",
            "export": f"/jobs/{cycle}/model.pt2",
        }
    )


@pytest.fixture
def registry(tmp_path) -> Registry:
    registry = Registry(tmp_path / "registry")
    for cycle in ("c01", "c02", "c03"):
        add_cycle(registry, cycle)
    return registry


def test_promotions_stack_up_and_rollback_unwinds_them(registry):
    assert registry.promoted() is None
    registry.promote("c01", "passed the gate")
    registry.promote("c02", "passed the gate")
    assert registry.promote("c02", "again")["reason"] == "passed the gate"  # no change
    pointer = registry.promote("c03", "passed the gate")
    assert pointer["export"] == "/jobs/c03/model.pt2"
    assert [record["cycle"] for record in pointer["history"]] == ["c02", "c01"]
    back = registry.rollback()
    assert back["cycle"] == "c02" and back["reason"] == "rollback from c03"
    assert [record["cycle"] for record in back["history"]] == ["c01"]
    assert registry.rollback()["cycle"] == "c01"
    with pytest.raises(UserInputError, match="no earlier promoted model to roll back to"):
        registry.rollback()


def test_a_reader_never_sees_a_partial_pointer(registry):
    registry.promote("c01", "first")
    seen, errors, done = [], [], threading.Event()

    def read() -> None:
        while not done.is_set():
            try:
                seen.append(json.loads(registry.pointer_file.read_text())["cycle"])
            except (ValueError, KeyError, FileNotFoundError) as error:  # torn or missing
                errors.append(error)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for _ in range(100):
            registry.promote("c02", "flip")
            registry.rollback()
    finally:
        done.set()
        reader.join()
    assert not errors and set(seen) <= {"c01", "c02"} and len(seen) > 10


def test_the_command_lists_shows_promotes_and_rolls_back(registry, capsys):
    add_cycle(registry, "c04", REJECTED)
    root = str(registry.root)
    assert main(["--registry", root, "promote", "c01"]) == 0
    assert main(["--registry", root, "promote", "c02"]) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith("promoted: c02 (promoted by hand)")
    assert main(["--registry", root, "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].startswith("* c02  window 2026/12/02  promoted") and lines[0][0] == " "
    assert "rejected" in lines[3]
    assert main(["--registry", root, "rollback"]) == 0
    assert main(["--registry", root, "show"]) == 0
    assert json.loads(capsys.readouterr().out.split("\n", 1)[1])["cycle"] == "c01"
    assert main(["--registry", root, "show", "c04"]) == 0
    assert json.loads(capsys.readouterr().out)["phase"] == REJECTED


def test_command_mistakes_are_one_line_and_a_held_lock_exits_75(registry, capsys):
    root = str(registry.root)
    assert main(["--registry", root, "promote", "c99"]) == ExitCode.USER_ERROR
    assert capsys.readouterr().err.strip().endswith("no cycle 'c99'")
    assert main(["--registry", root, "rollback"]) == ExitCode.USER_ERROR
    with registry.lock():
        assert main(["--registry", root, "promote", "c01"]) == ExitCode.LOCKED
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: ") and "is in use by another job (process" in error
    assert registry.promoted() is None
