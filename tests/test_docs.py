"""Docs the code cites exist, and docs/architecture.md names files and modules that exist."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _exists(name: str) -> bool:
    return any((base / name).is_file() for base in (ROOT, ROOT / "docs"))


def test_every_markdown_file_cited_in_the_code_is_in_the_repository():
    cited = {}
    for path in sorted((ROOT / "raykd").rglob("*.py")):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            for name in re.findall(r"\b(docs/[\w./-]+\.md|[A-Z][A-Z_]*\.md)\b", line):  # docs, not outputs
                cited.setdefault(name, f"{path.relative_to(ROOT)}:{n}")
    assert "docs/architecture.md" in cited
    missing = {name: where for name, where in cited.items() if not _exists(name)}
    assert missing == {}, "cite docs/architecture.md (or another file in the repository)"


def test_architecture_names_what_exists():
    text = (ROOT / "docs" / "architecture.md").read_text()
    for section in ("## Data flow, stage by stage", "## Layers: what may import what",
                    "## Assumptions about Ray Tune's internals, and where"):
        assert section in text
    files = set(re.findall(r"`(raykd/[\w/]+\.py)`", text))
    modules = set(re.findall(r"`(raykd(?:\.\w+)+)`", text))
    assert len(files) >= 10 and len(modules) >= 20
    assert sorted(f for f in files if not (ROOT / f).is_file()) == []
    unknown = []
    for dotted in modules:  # a module, or an attribute of one (raykd.results.load)
        parts = dotted.split(".")
        if not any(importlib.util.find_spec(".".join(parts[:k])) for k in range(len(parts), 1, -1)
                   if (ROOT / Path(*parts[:k])).with_suffix(".py").is_file() or (ROOT / Path(*parts[:k])).is_dir()):
            unknown.append(dotted)
    assert unknown == []
