"""Nothing in raykd deserialises a user's file with a loader that can run code.

User files are YAML (safe loader), JSON, images and PyTorch checkpoints (``weights_only=True``).
The bad-input cases in tests/e2e/bad_inputs/ show a Python tag in a space or experiment file and a
checkpoint carrying a payload refused without running it; this scan keeps unsafe loaders out.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "raykd"

UNSAFE = {
    "pickle.load", "pickle.loads", "pickle.Unpickler", "cloudpickle.load", "cloudpickle.loads", "dill.load",
    "dill.loads", "marshal.load", "marshal.loads", "shelve.open", "yaml.load", "yaml.load_all", "yaml.full_load",
    "yaml.unsafe_load", "yaml.unsafe_load_all", "pandas.read_pickle", "pd.read_pickle", "joblib.load",
}
"""Calls that can run code from the data they read (``torch.load`` is checked separately)."""

ALLOWED = {
    # Tune's own error.pkl in the trial folder Tune itself wrote (the pickled exception of a failed
    # trial, read to put its text in the tables): not a file a user hands to raykd.
    ("results/callback.py", "cloudpickle.load"),
}


def _calls(path: Path) -> list[tuple[str, ast.Call]]:
    """(dotted name, node) of every call in ``path``, names resolved through its imports
    (``from ray import cloudpickle`` -> ``cloudpickle``; ``from pickle import loads`` -> ``pickle.loads``)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    aliases: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                aliases[alias.asname or alias.name] = alias.name
        elif isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                # a module imported from a package keeps its own name; a function gets module.function
                is_module = alias.name in {"pickle", "cloudpickle", "yaml", "marshal", "dill", "shelve", "joblib"}
                aliases[alias.asname or alias.name] = alias.name if is_module else f"{node.module}.{alias.name}"
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        parts, func = [], node.func
        while isinstance(func, ast.Attribute):
            parts.append(func.attr)
            func = func.value
        if isinstance(func, ast.Name):
            parts.append(aliases.get(func.id, func.id))
            found.append((".".join(reversed(parts)), node))
    return found


def _weights_only(call: ast.Call) -> bool:
    return any(kw.arg == "weights_only" and isinstance(kw.value, ast.Constant) and kw.value.value is True
               for kw in call.keywords)


def test_no_unsafe_loader_reads_user_files():
    offenders = []
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 40
    for path in files:
        rel = path.relative_to(PACKAGE).as_posix()
        for name, call in _calls(path):
            where = f"raykd/{rel}:{call.lineno}: {name}"
            if name in UNSAFE and (rel, name) not in ALLOWED:
                offenders.append(where)
            elif name == "torch.load" and not _weights_only(call):
                offenders.append(f"{where} without weights_only=True")
            elif name.endswith("numpy.load") or name == "np.load":
                if any(kw.arg == "allow_pickle" for kw in call.keywords):
                    offenders.append(f"{where} with allow_pickle")
    assert not offenders, "unsafe deserialisation:\n" + "\n".join(offenders)


def test_the_allowlist_is_still_needed():
    """An allowlisted call that went away leaves a stale exception behind: remove it."""
    for rel, name in ALLOWED:
        assert any(n == name for n, _ in _calls(PACKAGE / rel)), f"{rel}: no {name} any more"


@pytest.mark.parametrize(("source", "found"), [
    ("import pickle\npickle.loads(b'')\n", "pickle.loads"),
    ("from pickle import load as l\nl(open('f', 'rb'))\n", "pickle.load"),
    ("from ray import cloudpickle\ncloudpickle.load(f)\n", "cloudpickle.load"),
    ("import yaml\nyaml.load(text, Loader=yaml.Loader)\n", "yaml.load"),
    ("import yaml\nyaml.unsafe_load(text)\n", "yaml.unsafe_load"),
    ("import torch\ntorch.load(p,\n  map_location='cpu')\n", "torch.load"),
    ("import torch\ntorch.load(p, weights_only=False)\n", "torch.load"),
])
def test_the_scan_sees_unsafe_calls(tmp_path, source, found):
    path = tmp_path / "m.py"
    path.write_text(source)
    calls = [(name, call) for name, call in _calls(path) if name == found]
    assert calls and (found != "torch.load" or not _weights_only(calls[0][1]))
