"""Every import resolves from a declared dependency: raykd/ from the core list (or, lazily, an
extra), tests/ from the core list plus the ``test`` extra.

A package that happens to be installed (pulled in by Ray or torch, or left on the machine by
hand) is not enough: a fresh ``pip install -e .`` would not bring it. ``.ci/run`` proves the
same thing by running the suite in a fresh virtual environment; this test says which import
broke the rule, on any machine.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Import:
    """One ``import x`` / ``from x import y`` statement: its top-level package and place."""

    package: str
    file: Path
    line: int
    lazy: bool  # inside a function body: a missing package fails only when the feature runs


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _names(requirements: list[str]) -> set[str]:
    """Distribution names of PEP 508 strings (``ray[tune]==2.6`` -> ``ray``), normalised."""
    return {_norm(re.match(r"[A-Za-z0-9._-]+", r.strip()).group(0)) for r in requirements}


def declared() -> tuple[set[str], dict[str, set[str]]]:
    """(core distributions, extra name -> its distributions) from pyproject.toml."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = {name: _names(reqs) for name, reqs in project.get("optional-dependencies", {}).items()}
    return _names(project["dependencies"]), extras


def imports_of(source: str, file: Path) -> list[Import]:
    """Absolute imports in ``source``, each with whether it sits in a function body."""
    found: list[Import] = []

    def visit(node: ast.AST, lazy: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                found.extend(Import(a.name.split(".")[0], file, child.lineno, lazy) for a in child.names)
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                found.append(Import(child.module.split(".")[0], file, child.lineno, lazy))
            visit(child, lazy or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)))

    visit(ast.parse(source, filename=str(file)), False)
    return found


def _local_modules(folder: Path) -> set[str]:
    """Modules a test file imports from its own folder (conftest helpers, drivers)."""
    return {p.stem for p in folder.rglob("*.py")} | {p.name for p in folder.rglob("*") if p.is_dir()}


def problems(found: list[Import], allowed: set[str], lazily_allowed: set[str], local: set[str]) -> list[str]:
    """One line per import that no allowed distribution provides."""
    providers = importlib.metadata.packages_distributions()
    lines = []
    for imp in found:
        if imp.package in sys.stdlib_module_names or imp.package in local or imp.package == "raykd":
            continue
        # An extra's package need not be installed here: then its module name is its name.
        dists = {_norm(d) for d in providers.get(imp.package, [imp.package])}
        ok = allowed | (lazily_allowed if imp.lazy else set())
        if not dists & ok:
            where = f"{imp.file.relative_to(ROOT)}:{imp.line}"
            lines.append(f"{where}: import {imp.package} (distribution {sorted(dists)}) is not a declared dependency")
    return lines


def _scan(folder: Path) -> list[Import]:
    return [imp for p in sorted(folder.rglob("*.py")) for imp in imports_of(p.read_text(), p)]


def test_raykd_imports_come_from_declared_dependencies():
    core, extras = declared()
    optional = set().union(*(names for extra, names in extras.items() if extra != "test"))
    found = _scan(ROOT / "raykd")
    assert len(found) > 100  # the scan really read the package
    assert problems(found, core, optional, set()) == []


def test_test_imports_come_from_core_and_the_test_extra():
    core, extras = declared()
    found = _scan(ROOT / "tests")
    assert problems(found, core | extras["test"], set(), _local_modules(ROOT / "tests")) == []


def test_analysis_statistics_and_importances_are_core():
    core, _ = declared()
    assert {"scipy", "scikit-learn"} <= core


@pytest.mark.parametrize("source, lazy_ok, expected", [
    ("import requests\n", False, 1),                 # installed (Ray pulls it in) but not declared
    ("from pydantic import BaseModel\n", False, 0),  # core
    ("import cmaes\n", True, 1),                     # an extra's package at module level breaks `import raykd`
    ("def f():\n    import cmaes\n", True, 0),       # ... inside the feature that documents the extra: fine
    ("import json, os.path\nfrom . import x\n", False, 0),  # standard library, relative
])
def test_the_guard_flags_undeclared_imports(source, lazy_ok, expected):
    core, extras = declared()
    file = ROOT / "raykd" / "probe.py"
    found = imports_of(source, file)
    assert len(problems(found, core, extras["cmaes"] if lazy_ok else set(), set())) == expected
