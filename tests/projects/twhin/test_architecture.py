"""TwHIN keeps the layering of docs/architecture.md: its modes stand side by side, its model
never reads its data stage or job config, and it never reaches into the ranker."""

from __future__ import annotations

import pytest

from tests.projects.home.recap.test_architecture import MODULES, closure, imports_of

TWHIN = "projects.twhin"
MODES = {f"{TWHIN}.{name}" for name in ("train", "export")}


@pytest.mark.parametrize("mode", sorted(MODES))
def test_no_mode_reaches_another(mode):
    assert closure(mode) & (MODES - {mode}) == set()


def test_the_model_never_reads_the_data_stage_or_the_job_config():
    model = sorted(name for name in MODULES if name.startswith(f"{TWHIN}.model"))
    reached = {name for module in model for name in closure(module)}
    assert not {n for n in reached if n.startswith(f"{TWHIN}.data") or n == f"{TWHIN}.config"}


def test_twhin_uses_the_shared_library_not_the_ranker():
    # One walk from every TwHIN module at once (each import parsed once).
    seen = {name for name in MODULES if name.startswith(TWHIN)}
    stack = list(seen)
    while stack:
        for imported in imports_of(stack.pop()) - seen:
            seen.add(imported)
            stack.append(imported)
    assert not {name for name in seen if name.startswith("projects.home")}
