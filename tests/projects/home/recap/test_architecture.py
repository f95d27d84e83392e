"""The import graph keeps the layering of docs/architecture.md: modes stand side by side, the
model never reads the data stage, the shared library never reads a project."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[4]
RECAP = "projects.home.recap"
MODES = {f"{RECAP}.{name}" for name in ("train", "evaluate", "inference", "export")}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {
        _module_name(path): path
        for root in ("projects", "tml")
        for path in sorted((REPO / root).rglob("*.py"))
    }


MODULES = _modules()


def imports_of(module: str) -> set[str]:
    """The project modules ``module`` imports directly (``from a import b`` counts ``a.b`` when
    that is a module, else ``a``)."""
    tree = ast.parse(MODULES[module].read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
        else:
            continue
        found.update(name for name in names if name in MODULES)
    return found


def closure(module: str) -> set[str]:
    """Every project module ``module`` imports, directly or through others."""
    seen: set[str] = set()
    stack = [module]
    while stack:
        for imported in imports_of(stack.pop()):
            if imported not in seen:
                seen.add(imported)
                stack.append(imported)
    return seen


def within(prefix: str) -> list[str]:
    return sorted(name for name in MODULES if name == prefix or name.startswith(prefix + "."))


def test_the_modes_exist_where_the_docs_say():
    assert set(MODULES) >= MODES


@pytest.mark.parametrize("mode", sorted(MODES))
def test_no_mode_reaches_another(mode):
    assert closure(mode) & (MODES - {mode}) == set()


@pytest.mark.parametrize("module", within(f"{RECAP}.model"))
def test_the_model_never_reads_the_data_stage_or_the_job_config(module):
    forbidden = {name for name in closure(module) if name.startswith(f"{RECAP}.data")}
    forbidden |= {name for name in closure(module) if name == f"{RECAP}.config"}
    assert forbidden == set()


@pytest.mark.parametrize("module", within(f"{RECAP}.data"))
def test_the_data_stage_never_reads_the_model(module):
    assert {name for name in closure(module) if name.startswith(f"{RECAP}.model")} == set()


@pytest.mark.parametrize("module", within("tml"))
def test_the_shared_library_never_reads_a_project(module):
    assert {name for name in imports_of(module) if name.startswith("projects")} == set()


def test_only_the_entry_point_imports_the_modes():
    importers = {module for module in MODULES if imports_of(module) & MODES and module not in MODES}
    assert importers == {f"{RECAP}.main"}


def test_the_graph_walk_sees_real_edges():
    # Guards the checks above against vacuous success: known edges must be found.
    assert f"{RECAP}.build" in imports_of(f"{RECAP}.train")
    assert f"{RECAP}.inputs" in closure(f"{RECAP}.model.ranking_model")
    assert closure(f"{RECAP}.main") | {f"{RECAP}.export"} >= MODES
