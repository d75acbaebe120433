"""The import layers docs/architecture.md draws, enforced over every import in raykd/ (module
level and inside functions): a module imports its own package or a lower layer, never upward or
sideways into another package of its layer, and no package's modules import each other in a circle
across packages."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

LAYERS = {
    "raykd.errors": 0, "raykd.uri": 0, "raykd.stop_reasons": 0, "raykd.metric_names": 0,
    "raykd.console": 0,
    "raykd.ray_address": 1, "raykd.ownership": 1, "raykd.epoch_record": 1,
    "raykd.config": 2, "raykd.distill": 2, "raykd.tracking": 2, "raykd.results": 2,
    "raykd.models": 3, "raykd.data": 3,
    "raykd.train": 4,
    "raykd.analyze": 5, "raykd.visualize": 5, "raykd.export": 5,
    "raykd.search": 6,
    "raykd.submit": 7,
    "raykd.config_command": 8, "raykd.cli": 8, "raykd.__main__": 8, "raykd": 8, "command": 8,
}
"""Layer of each unit (a top-level module or a package), bottom up: docs/architecture.md's table.
A package's ``__main__`` is its command: it belongs to the command layer and may wire packages."""

ALLOWED = {
    # raykd.config's distillation keys live beside the losses they configure
    ("raykd.config", "raykd.distill"),
    # a trial's experiment rebuilt from its space file, imported inside the function that needs it
    ("raykd.visualize", "raykd.search"),
    # `python -m raykd.results.compact` runs the results command
    ("raykd.results", "command"),
}
"""Edges across packages of one layer or upward, each with its reason; nothing else may appear."""


def unit(module: str) -> str:
    parts = module.split(".")
    if len(parts) > 2 and parts[-1] == "__main__":
        return "command"
    return ".".join(parts[:2]) if len(parts) > 1 else module


def imports() -> list[tuple[str, str, str]]:
    """(importing module, imported module, where) for every raykd import in raykd/."""
    found = []
    for path in sorted((ROOT / "raykd").rglob("*.py")):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module] + [f"raykd.{a.name}" for a in node.names if node.module == "raykd"
                                         and ((ROOT / "raykd" / a.name).is_dir() or (ROOT / "raykd" / f"{a.name}.py").is_file())]
            found += [(module, name, f"{path.relative_to(ROOT)}:{node.lineno}") for name in names
                      if name == "raykd" or name.startswith("raykd.")]
    return found


def test_every_unit_has_a_layer():
    units = {unit(m) for m, _, _ in imports()} | {unit(t) for _, t, _ in imports()}
    assert sorted(units - set(LAYERS)) == []


def test_nothing_imports_upward_or_sideways():
    wrong = []
    for module, target, where in imports():
        a, b = unit(module), unit(target)
        if a == b or b == "raykd" or LAYERS[a] == LAYERS["command"]:  # __version__; commands call commands
            continue
        if (LAYERS[b] > LAYERS[a] or (LAYERS[b] == LAYERS[a] and a != b)) and (a, b) not in ALLOWED:
            wrong.append(f"{where}: {module} (layer {LAYERS[a]}) imports {target} (layer {LAYERS[b]})")
    assert wrong == []


def test_no_circles_between_packages():
    edges: dict[str, set[str]] = {}
    for module, target, _ in imports():
        if unit(module) != unit(target) and target != "raykd" and unit(module) != "command":
            edges.setdefault(unit(module), set()).add(unit(target))

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        return any(n == goal or (n not in seen and reaches(n, goal, seen | {n})) for n in edges.get(start, ()))

    assert sorted(a for a in edges if reaches(a, a, {a})) == []


def test_the_allowed_edges_are_still_needed():
    present = {(unit(m), unit(t)) for m, t, _ in imports()}
    assert ALLOWED <= present, ALLOWED - present


def _runtime_imports(path: Path, module: str) -> set[str]:
    """The raykd modules ``module`` imports when it is imported (module level and inside functions;
    not under ``if TYPE_CHECKING:`` nor ``if __name__ == "__main__":``, its run as a script).
    ``from pkg import name`` is an edge to ``pkg.name`` when that is a module, else to ``pkg``."""
    tree = ast.parse(path.read_text())

    def unimported(test: ast.expr) -> bool:
        if getattr(test, "id", getattr(test, "attr", None)) == "TYPE_CHECKING":
            return True
        return isinstance(test, ast.Compare) and getattr(test.left, "id", None) == "__name__"

    hidden = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If) and unimported(block.test)
              for stmt in block.body for n in ast.walk(stmt)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in hidden:
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("raykd")}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and node.module.startswith("raykd"):
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                is_module = (ROOT / Path(*sub.split("."))).with_suffix(".py").is_file() \
                    or (ROOT / Path(*sub.split(".")) / "__init__.py").is_file()
                found.add(sub if is_module else node.module)
    return found - {module}


def test_no_module_imports_itself_back():
    """No circle between modules, inside a package or across: each module's dependencies are
    importable before it (the package ``__init__`` re-exporting its modules is not a circle)."""
    graph = {}
    for path in sorted((ROOT / "raykd").rglob("*.py")):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        graph[module] = _runtime_imports(path, module)
    packages = {m for m in graph if (ROOT / Path(*m.split(".")) / "__init__.py").is_file()}

    def deps(module: str) -> set[str]:
        # a module importing its own package's __init__ for a name is a real circle; the
        # package __init__ importing its modules is the direction imports run
        return {t for t in graph.get(module, ()) if t in graph and not (module in packages and t.startswith(f"{module}."))}

    circles = []
    for start in sorted(graph):
        stack, seen = [(start, (start,))], set()
        while stack:
            node, trail = stack.pop()
            for nxt in deps(node):
                if nxt == start:
                    circles.append(" -> ".join((*trail, start)))
                elif nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, (*trail, nxt)))
    assert circles == []
